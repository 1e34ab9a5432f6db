"""The searcher's configuration: CLI flags, then IMGSEARCH_* variables, then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class SearcherConfig:
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
    default_ef_search: int = 200
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
}


def env_name(field_name: str) -> str:
    return "IMGSEARCH_" + field_name.upper()


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SearcherConfig:
    environ = os.environ if environ is None else environ
    defaults = SearcherConfig()
    parser = argparse.ArgumentParser(
        prog="imgsearch-searcher",
        description="Serve imgsearch.v1.SearcherService over PostgreSQL + pgvector.",
    )
    for f in fields(SearcherConfig):
        default = getattr(defaults, f.name)
        env = env_name(f.name)
        value = type(default)(environ[env]) if env in environ else default
        shown = "(hidden)" if f.name == "dsn" and value else value
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=value,
            help=f"{HELP[f.name]} [env {env}; default: {shown!s}]",
        )
    args = parser.parse_args(argv)
    return SearcherConfig(**{f.name: getattr(args, f.name) for f in fields(SearcherConfig)})
