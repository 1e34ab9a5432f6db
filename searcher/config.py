"""The searcher's configuration: CLI flags, then IMGSEARCH_SEARCHER_* variables (and
IMGSEARCH_DSN), then defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving import config as serving_config
from serving.config import SERVING_HELP, ServingConfig, parse_dataclass_config


@dataclass(frozen=True)
class SearcherConfig(ServingConfig):
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
    default_index_kind: str = "halfvec"
    default_ef_search: int = 400
    exact_filter_rows: int = 20_000
    maintenance_work_mem: str = ""
    recall_floor: float = 0.95
    recall_target: float = 0.99
    recall_sample: int = 200
    shadow_share: float = 0.01
    shadow_budget: float = 0.05
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
    "default_index_kind": "index kind of new collections: vector, halfvec or binary",
    "default_ef_search": "HNSW ef_search of VECTOR and HALFVEC indexes when neither the request "
    "nor the collection's calibration gives one (BINARY walks as many as it re-ranks)",
    "exact_filter_rows": "filters matching at most this many rows are searched exactly",
    "maintenance_work_mem": "PostgreSQL maintenance_work_mem for index builds "
    "(empty: the database's setting; the embedded one sizes it from the machine's memory)",
    "recall_floor": "an index build whose measured recall@10 at the default search effort is "
    "below this is rebuilt once with larger m and ef_construction",
    "recall_target": "after each build, a collection searches with the least effort (ef_search, "
    "candidates) whose recall@10, measured on its own vectors, meets this",
    "recall_sample": "stored vectors used as queries to measure an index build's recall",
    "shadow_share": "share of searches re-run exactly in the background to measure live recall "
    "(0 turns it off)",
    "shadow_budget": "most of one core's time those exact re-runs may take",
    "grace_s": "seconds in-flight RPCs get to finish on shutdown",
    **SERVING_HELP,
}


ENV_PREFIX = "IMGSEARCH_SEARCHER_"
# The DSN keeps the short name every deployment guide uses.
SHARED_ENV = {"dsn": "IMGSEARCH_DSN"}


def env_name(field_name: str) -> str:
    return serving_config.env_name(ENV_PREFIX, field_name, SHARED_ENV)


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SearcherConfig:
    return parse_dataclass_config(
        SearcherConfig,
        prog="imgsearch-searcher",
        description="Serve imgsearch.v1.SearcherService over PostgreSQL + pgvector. "
        "--upgrade-data-dir first upgrades an embedded data directory made by the old engine "
        "(PostgreSQL 16 + pgvector 0.6) in place, with pg_upgrade.",
        help=HELP,
        prefix=ENV_PREFIX,
        shared_env=SHARED_ENV,
        secrets=frozenset({"dsn"}),
        argv=argv,
        environ=environ,
    )
