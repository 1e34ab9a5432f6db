"""A blocking pool of psycopg2 connections, and the one place database errors are translated."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from pgvector.psycopg2 import register_vector

from imgsearch.errors import DeadlineExceeded, PermissionDenied, Unavailable

logger = logging.getLogger(__name__)


# Connections kept for searches and other short requests: bulk work (writes, index builds and
# folds, duplicate scans, recall samples) may hold all the others, never these.
RESERVED_FOR_REQUESTS = 2
# Connections one piece of bulk work (a fold, a duplicate scan) uses at once: each keeps one
# backend busy, so more than the cores only queue; and no more than 4, leaving the rest of the
# pool to other bulk work.
BULK_WORKERS = min(os.cpu_count() or 1, 4)
# The nice value of the embedded server's backends doing bulk work (nice(1)'s default).
BULK_NICE = 10


class ConnectionPool:
    """Up to `max_size` connections; callers wait (up to `wait_s`) when all are in use, and bulk
    work waits once it holds all but RESERVED_FOR_REQUESTS of them, so a search always finds a
    connection that an import or an index build cannot take.

    psycopg2's own pools raise instead of waiting, and keep connections that the server has
    closed; this one waits, and discards any connection that failed at the connection level.
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 8,
        wait_s: float = 30.0,
        connect_timeout_s: int = 5,
        statement_timeout_ms: int = 30_000,
        bulk_nice: int = 0,
    ) -> None:
        self.dsn = dsn
        # PostgreSQL has no priorities, but its backends are processes: where the server runs
        # on this machine (the embedded one), the backends of bulk connections run at this
        # nice value, so that searches' backends win the cores while an import, a fold or a
        # duplicate scan runs. Those connections are kept apart, never lent to a search.
        self.bulk_nice = bulk_nice
        self._idle_bulk: list[Any] = []
        self._wait_s = wait_s
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "options": f"-c statement_timeout={int(statement_timeout_ms)}",
            "application_name": "imgsearch-searcher",
        }
        self.max_size = max_size
        self.in_use = 0  # connections lent out now (for metrics)
        self._slots = threading.BoundedSemaphore(max_size)
        self.max_bulk = max(1, max_size - RESERVED_FOR_REQUESTS)
        self._bulk_slots = threading.BoundedSemaphore(self.max_bulk)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._unregistered: set[int] = set()  # ids of connections without the vector types
        # Connections lent out, by the thread holding them: what cancel_statements_of reaches.
        self._lent: dict[int, list[Any]] = {}

    def _connect(self, *, niced: bool = False) -> Any:
        conn = psycopg2.connect(self.dsn, **self._connect_kwargs)
        if niced:
            self._renice_backend(conn)
        try:
            register_vector(conn)
        except psycopg2.ProgrammingError:
            # A database without pgvector yet: the first searcher's migrations create the
            # extension on this connection, which is then closed, not kept.
            self._unregistered.add(id(conn))
        # Looking up the vector types opened a transaction: end it, so that every connection
        # is lent out idle (a search switches it to autocommit, which needs that).
        conn.rollback()
        return conn

    def _renice_backend(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid: int = cur.fetchone()[0]
        try:
            os.setpriority(os.PRIO_PROCESS, pid, self.bulk_nice)
        except OSError as exc:  # not ours to renice (another user's server, another machine)
            logger.warning(
                "cannot lower the priority of the database's bulk backends (%s): bulk work "
                "competes with searches at equal priority",
                exc,
            )
            self.bulk_nice = 0

    @contextlib.contextmanager
    def connection(self, *, bulk: bool = False) -> Iterator[Any]:
        """A connection for one unit of work; database failures leave as imgsearch errors.
        `bulk`: work nobody waits on at once (see the class)."""
        if bulk:
            if not self._bulk_slots.acquire(timeout=self._wait_s):
                raise Unavailable(
                    f"no database connection free for bulk work after {self._wait_s:.0f} s"
                ) from None
            try:
                with self._lend(niced=self.bulk_nice > 0) as conn:
                    yield conn
            finally:
                self._bulk_slots.release()
            return
        with self._lend(niced=False) as conn:
            yield conn

    @contextlib.contextmanager
    def _lend(self, *, niced: bool) -> Iterator[Any]:
        """A connection from the niced (bulk) or the plain idle list, or a new one."""
        idle = self._idle_bulk if niced else self._idle
        if not self._slots.acquire(timeout=self._wait_s):
            raise Unavailable(f"no database connection free after {self._wait_s:.0f} s") from None
        with self._lock:
            self.in_use += 1
        conn = None
        try:
            with translate_database_errors():
                with self._lock:
                    conn = idle.pop() if idle else None
                if conn is None:
                    conn = self._connect(niced=niced)
                with self._lent_to_this_thread(conn):
                    yield conn
                if conn.status != psycopg2.extensions.STATUS_READY:
                    conn.rollback()
        except BaseException as exc:
            if conn is not None:
                _discard_or_rollback(conn)
                if conn.closed:
                    conn = None
            if isinstance(exc, Unavailable):
                # The server went away: every idle connection to it is dead too.
                self._drop_idle()
            raise
        finally:
            if conn is not None:
                with self._lock:
                    if self._closed or id(conn) in self._unregistered:
                        self._unregistered.discard(id(conn))
                        conn.close()
                    else:
                        idle.append(conn)
            with self._lock:
                self.in_use -= 1
            self._slots.release()

    @contextlib.contextmanager
    def _lent_to_this_thread(self, conn: Any) -> Iterator[None]:
        thread = threading.get_ident()
        with self._lock:
            self._lent.setdefault(thread, []).append(conn)
        try:
            yield
        finally:
            with self._lock:
                held = self._lent.get(thread, [])
                if conn in held:
                    held.remove(conn)
                if not held:
                    self._lent.pop(thread, None)

    def cancel_statements_of(self, thread: int) -> int:
        """Ask the server to cancel the statement each connection that `thread` holds is
        running (libpq's cancel request, safe from another thread); the holder sees
        QueryCanceled. The number of connections asked."""
        with self._lock:
            held = list(self._lent.get(thread, []))
        for conn in held:
            try:
                conn.cancel()
            except psycopg2.Error as exc:  # already closed, or the server is gone
                logger.debug("cancel request not sent: %s", exc)
        return len(held)

    def check(self) -> None:
        """Raise Unavailable unless the database answers a trivial query."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            conn.rollback()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle, self._idle_bulk = self._idle + self._idle_bulk, [], []
        for conn in idle:
            conn.close()


def _discard_or_rollback(conn: Any) -> None:
    """After a failure: keep the connection if it still works, else close it."""
    try:
        if not conn.closed:
            conn.rollback()
    except psycopg2.Error:
        conn.close()


@contextlib.contextmanager
def translate_database_errors() -> Iterator[None]:
    try:
        yield
    except psycopg2.errors.QueryCanceled:
        raise DeadlineExceeded("the database query took longer than its time limit") from None
    except psycopg2.errors.InsufficientPrivilege as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise PermissionDenied(
            f"the searcher's database role may not do this ({first_line})"
        ) from None
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"database unavailable: {first_line}") from None
