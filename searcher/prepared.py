"""Server-side prepared statements for the search's hot path.

An unfiltered search's SQL names its query vector three times (the index walk, the exact
re-rank and the fresh rows), each a 12 KB literal of 1000 floats that PostgreSQL parses again
on every call. Prepared once per connection, the search sends its vector once, as a parameter,
and PostgreSQL parses nothing (bench/RESULTS.md, "Searches as prepared statements").

Planning still cost a tenth of a search (bench/RESULTS.md, "Plans made once"), so a statement
runs on PostgreSQL's generic plan, made once, where that plan walks the same vector indexes as
a plan made with the first run's values; otherwise each run is planned with its values, as the
literal query would be. Both are checked with EXPLAIN when the statement is prepared. A generic
plan cannot prove a partial index's predicate from a parameter, so searches over graphs by
cell (whose cells are parameters) are planned each run; and for a VECTOR index of 3000 rows
PostgreSQL's generic plan has sorted the whole table where the literal query walks the index:
exact answers, ten times slower, and nothing to say so. The check keeps those on plans made
per run. It is made once: PostgreSQL makes a generic plan again after ANALYZE or DDL on the
table without a new check, but a statement's text changes with each index generation and cell
fit, and a table that shrinks far enough to sort instead still answers exactly.

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
# Run before each statement: planned with its values, or by the generic plan (see above).
PLANNED_PER_RUN = sql.SQL("SET LOCAL plan_cache_mode = force_custom_plan")
PLANNED_ONCE = sql.SQL("SET LOCAL plan_cache_mode = force_generic_plan")


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
        # Per connection, by statement text: its name there, and whether it runs generic.
        self._by_connection: WeakKeyDictionary[Any, OrderedDict[str, tuple[str, bool]]] = (
            WeakKeyDictionary()
        )
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
        arguments = {p: params[p] for p in types}
        try:
            name, generic = self._prepared(cur, text, types, before, arguments)
            run = execute_prepared(name, types)
            statements = [*before, PLANNED_ONCE if generic else PLANNED_PER_RUN, run]
            cur.execute(sql.SQL("; ").join(statements), arguments)
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

    def _prepared(
        self,
        cur: Any,
        text: str,
        types: Mapping[str, str],
        before: list[sql.Composable],
        arguments: Mapping[str, Any],
    ) -> tuple[str, bool]:
        """The name `text` is prepared under on the cursor's connection, and whether it runs on
        its generic plan; prepared and its plans compared first, with `arguments`."""
        conn = cur.connection
        with self._lock:
            known = self._by_connection.setdefault(conn, OrderedDict())
            kept = known.get(text)
            if kept is not None:
                known.move_to_end(text)
                return kept
            name = f"imgsearch_search_{next(self._names)}"
        declared = sql.SQL(", ").join(sql.SQL(kind) for kind in types.values())
        # A statement is session state, not transactional: a rollback leaves it prepared.
        cur.execute(
            sql.SQL("PREPARE {} ({}) AS ").format(sql.Identifier(name), declared)
            + sql.SQL(text)  # run without arguments: no % is special
        )
        explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + execute_prepared(name, types)
        walks = []
        for planned in (PLANNED_PER_RUN, PLANNED_ONCE):
            cur.execute(sql.SQL("; ").join([*before, planned, explain]), arguments)
            walks.append(vector_index_walks(cur.fetchone()[0][0]["Plan"]))
        generic = bool(walks[0]) and walks[0] == walks[1]
        logger.debug("%s runs on %s", name, "its generic plan" if generic else "plans per run")
        with self._lock:
            known[text] = (name, generic)
            evicted = known.popitem(last=False)[1] if len(known) > self.per_connection else None
        if evicted is not None:
            cur.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(evicted[0])))
        return name, generic

    def count(self, conn: Any) -> int:
        """How many statements are prepared on `conn` (for tests and metrics)."""
        with self._lock:
            return len(self._by_connection.get(conn, ()))


def execute_prepared(name: str, types: Mapping[str, str]) -> sql.Composed:
    """EXECUTE of the statement `name` with the parameters named in `types`."""
    return sql.SQL("EXECUTE {}({})").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Placeholder(p) for p in types)
    )


def vector_index_walks(plan: Mapping[str, Any]) -> list[str]:
    """The indexes a plan (EXPLAIN's JSON) walks in distance order, the vector indexes' kind of
    scan, sorted: what an approximate search's answer depends on."""
    own = [plan["Index Name"]] if "Order By" in plan and "Index Name" in plan else []
    return sorted(
        own + [name for child in plan.get("Plans", ()) for name in vector_index_walks(child)]
    )
