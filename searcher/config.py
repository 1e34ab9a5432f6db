"""The searcher's configuration: CLI flags, then IMGSEARCH_SEARCHER_* variables (and
IMGSEARCH_DSN), then defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgsearch import _config, _serving


@dataclass(frozen=True)
class SearcherConfig(_serving.ServingConfig):
    address: str = "[::]:50052"
    # Secret-bearing; read from flag or environment, never logged.
    dsn: str = ""
    data_dir: str = ""
    pool_size: int = 8
    statement_timeout_ms: int = 30_000
    max_top_k: int = 1000
    max_items_per_message: int = 1000
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int = 64
    default_ef_search: int = 400
    exact_filter_rows: int = 20_000
    maintenance_work_mem: str = "1GB"
    grace_s: float = 10.0

    def resolved_data_dir(self) -> Path:
        from searcher.embedded import default_data_dir

        return Path(self.data_dir) if self.data_dir else default_data_dir()


HELP = {
    "address": "host:port to serve on",
    "dsn": "PostgreSQL DSN (with pgvector); standard PG* variables also work; "
    "unset: an embedded PostgreSQL in --data-dir",
    "data_dir": "embedded PostgreSQL data directory (default: ~/.local/share/imgsearch/pgdata)",
    "pool_size": "database connections",
    "statement_timeout_ms": "per-statement time limit in the database",
    "max_top_k": "largest top_k accepted",
    "max_items_per_message": "most items per Upsert message",
    "max_message_bytes": "largest gRPC message accepted",
    "max_concurrent_rpcs": "RPCs served at once; more get RESOURCE_EXHAUSTED",
    "default_ef_search": "HNSW ef_search when a request gives none",
    "exact_filter_rows": "filters matching at most this many rows are searched exactly",
    "maintenance_work_mem": "PostgreSQL maintenance_work_mem for index builds",
    "grace_s": "seconds in-flight RPCs get to finish on shutdown",
    **_serving.SERVING_HELP,
}


ENV_PREFIX = "IMGSEARCH_SEARCHER_"
# The DSN keeps the short name every deployment guide uses.
SHARED_ENV = {"dsn": "IMGSEARCH_DSN"}


def env_name(field_name: str) -> str:
    return _config.env_name(ENV_PREFIX, field_name, SHARED_ENV)


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SearcherConfig:
    return _config.parse_dataclass_config(
        SearcherConfig,
        prog="imgsearch-searcher",
        description="Serve imgsearch.v1.SearcherService over PostgreSQL + pgvector.",
        help=HELP,
        prefix=ENV_PREFIX,
        shared_env=SHARED_ENV,
        secrets=frozenset({"dsn"}),
        argv=argv,
        environ=environ,
    )
