"""Server-side prepared statements for the search's hot path.

An unfiltered search's SQL names its query vector three times (the index walk, the exact
re-rank and the fresh rows), each a 12 KB literal of 1000 floats that PostgreSQL parses again
on every call. Prepared once per connection, the search sends its vector once, as a parameter,
and PostgreSQL parses nothing (bench/RESULTS.md, "Searches as prepared statements").

Each run is still planned with its values, as the literal query would be (plan_cache_mode
force_custom_plan). A generic plan would also save the planning, but for a VECTOR index of
3000 rows PostgreSQL's generic plan sorted the whole table where the literal query walks the
index: exact answers, ten times slower, and nothing to say so.

The statements live in the database session, so they are kept per connection: a new
connection starts with none, and each keeps its most recently used few (a collection's text
changes whenever its index or cells change). Behind a pooler that hands each transaction
another session (PgBouncer in transaction mode) a statement vanishes: the searcher then says
so once and runs its searches unprepared.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

import psycopg2.errors
from psycopg2 import sql

logger = logging.getLogger(__name__)

# Statements kept per connection; the oldest is deallocated past it.
STATEMENTS_PER_CONNECTION = 32
# Statement texts kept by key, for every connection.
TEXTS_KEPT = 256
# Run before each statement: planned with its values, never by a generic plan (see above).
PLANNED_PER_RUN = sql.SQL("SET LOCAL plan_cache_mode = force_custom_plan")


class PreparedStatements:
    """Prepares queries on the connection of the cursor that runs them, once each."""

    def __init__(
        self,
        per_connection: int = STATEMENTS_PER_CONNECTION,
        texts_kept: int = TEXTS_KEPT,
    ) -> None:
        self.per_connection = per_connection
        self.texts_kept = texts_kept
        self._lock = threading.Lock()
        self._by_connection: WeakKeyDictionary[Any, OrderedDict[str, str]] = WeakKeyDictionary()
        self._texts: OrderedDict[Hashable, str] = OrderedDict()
        self._names = itertools.count(1)
        self.enabled = True

    def execute(
        self,
        cur: Any,
        before: list[sql.Composable],
        key: Hashable,
        compose: Callable[[], sql.Composable],
        params: Mapping[str, Any],
        types: Mapping[str, str],
        literals: Mapping[str, int],
    ) -> None:
        """Run the query `compose` makes as a prepared statement, after the statements `before`
        (SET LOCAL) and in the same implicit transaction. `key` stands for the query's text
        (composing it costs more than the rest of a search's Python): the same key, the same
        text. `types` names the parameters passed at each call, with their SQL types;
        `literals` the integer parameters written into the statement (a LIMIT, so that the
        statement's text is the query's own)."""
        key = (key, tuple(types), tuple(literals.items()))
        with self._lock:
            text = self._texts.get(key)
            if text is not None:
                self._texts.move_to_end(key)
        if text is None:
            # psycopg2's placeholders are Python's %(name)s: the statement's are $1, $2, ...
            text = compose().as_string(cur) % {
                **{name: f"${i}" for i, name in enumerate(types, 1)},
                **{name: str(int(value)) for name, value in literals.items()},
            }
            with self._lock:
                self._texts[key] = text
                if len(self._texts) > self.texts_kept:
                    self._texts.popitem(last=False)
        if not self.enabled:
            cur.execute(sql.SQL("; ").join([*before, compose()]), {**params, **literals})
            return
        name = self._prepared(cur, text, types)
        run = sql.SQL("EXECUTE {}({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Placeholder(p) for p in types)
        )
        statements = [*before, PLANNED_PER_RUN, run]
        try:
            cur.execute(sql.SQL("; ").join(statements), {p: params[p] for p in types})
        except psycopg2.errors.InvalidSqlStatementName:
            if not cur.connection.autocommit:
                raise  # the transaction is lost with it: the caller's to handle
            # The session lost the statement: a pooler in transaction mode (PgBouncer) hands
            # each transaction another server session. Prepared statements cannot work there.
            logger.warning(
                "a prepared search statement vanished from its database session (is a "
                "connection pooler in transaction mode between the searcher and PostgreSQL?): "
                "searches run unprepared from now on"
            )
            with self._lock:
                self.enabled = False
                self._by_connection.clear()
            cur.execute(sql.SQL("; ").join([*before, compose()]), {**params, **literals})

    def _prepared(self, cur: Any, text: str, types: Mapping[str, str]) -> str:
        """The name `text` is prepared under on the cursor's connection, preparing it first."""
        conn = cur.connection
        with self._lock:
            known = self._by_connection.setdefault(conn, OrderedDict())
            name = known.get(text)
            if name is not None:
                known.move_to_end(text)
                return name
            name = f"imgsearch_search_{next(self._names)}"
        declared = sql.SQL(", ").join(sql.SQL(kind) for kind in types.values())
        # A statement is session state, not transactional: a rollback leaves it prepared.
        cur.execute(
            sql.SQL("PREPARE {} ({}) AS ").format(sql.Identifier(name), declared)
            + sql.SQL(text)  # run without arguments: no % is special
        )
        with self._lock:
            known[text] = name
            evicted = known.popitem(last=False)[1] if len(known) > self.per_connection else None
        if evicted is not None:
            cur.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(evicted)))
        return name

    def count(self, conn: Any) -> int:
        """How many statements are prepared on `conn` (for tests and metrics)."""
        with self._lock:
            return len(self._by_connection.get(conn, ()))
