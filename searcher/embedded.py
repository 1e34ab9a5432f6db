"""An embedded PostgreSQL + pgvector server (the `pgserver` package) in a data directory."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """Where the searcher keeps its embedded database unless told otherwise."""
    import platformdirs

    return Path(platformdirs.user_data_dir("imgsearch")) / "pgdata"


class EmbeddedPostgres:
    """Starts, or attaches to, the PostgreSQL server of one data directory.

    Several processes may use the same directory at once: the first starts the server, later ones
    attach to it, and the last one to stop shuts it down. Data persists across restarts. The
    server listens on a Unix socket only, so it never conflicts with another server's port.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None

    @property
    def dsn(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        uri: str = self._server.get_uri()
        return uri

    def start(self) -> str:
        """Start (or attach to) the server, ensure pgvector is installed; return its DSN."""
        with warnings.catch_warnings():
            # pgserver keeps its cross-process lock file under the user's runtime directory; with
            # no XDG_RUNTIME_DIR (containers, CI) platformdirs warns and falls back to /tmp, which
            # works just as well.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import pgserver
            from pgserver.postgres_server import PostgresServer

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.data_dir, PostgresServer._lock)
        server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        # pgserver counts users within one process through its context manager, and across
        # processes through its list of pids: enter it so that stop() only detaches this user.
        self._server = server.__enter__()
        logger.info("embedded PostgreSQL ready in %s", self.data_dir)
        self._ensure_pgvector()
        return self.dsn

    def stop(self) -> None:
        """Detach; the server stops when no other process is using it."""
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None
            logger.info("embedded PostgreSQL in %s released", self.data_dir)

    def _ensure_pgvector(self) -> None:
        import psycopg2

        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.close()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _forget_dead_handles(data_dir: Path, lock: Any) -> None:
    """Drop processes that died without detaching from pgserver's list of users of this server.

    pgserver stops the server when the last listed process detaches; a process killed with
    SIGKILL never detaches, and the server would then never stop.
    """
    from pgserver.utils import DiskList

    handles = DiskList(data_dir / ".handle_pids.json")
    with lock:
        listed = handles.get()
        alive = [pid for pid in listed if psutil.pid_exists(pid)]
        if len(alive) != len(listed):
            handles.put(alive)
