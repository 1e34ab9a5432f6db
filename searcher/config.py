"""The searcher's configuration: CLI flags, then IMGSEARCH_SEARCHER_* variables (and
IMGSEARCH_DSN), then defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgsearch import defaults
from imgsearch.errors import ConfigError
from searcher.catalogue import IndexKind
from searcher.pool import RESERVED_FOR_REQUESTS
from searcher.recall import SMALLEST_SAMPLE
from searcher.settings import StoreSettings
from searcher.validation import MAX_EF_SEARCH, Limits
from serving import config as serving_config
from serving.config import (
    SERVING_HELP,
    Range,
    ServingConfig,
    check_ranges,
    parse_dataclass_config,
)

_STORE = StoreSettings()  # the defaults of the store's settings, offered below as flags


@dataclass(frozen=True)
class SearcherConfig(ServingConfig):
    """Every setting of the searcher; `--help` lists each with its variable and default."""

    address: str = defaults.SEARCHER_BIND
    # Secret-bearing; read from flag or environment, never logged.
    dsn: str = ""
    data_dir: str = ""
    pool_size: int = 8
    statement_timeout_ms: int = 30_000
    max_top_k: int = _STORE.limits.max_top_k
    max_items_per_message: int = _STORE.limits.max_items_per_message
    default_index_kind: str = _STORE.default_kind.value
    default_ef_search: int = _STORE.default_ef_search
    exact_filter_rows: int = _STORE.exact_filter_rows
    maintenance_work_mem: str = _STORE.maintenance_work_mem
    recall_floor: float = _STORE.recall_floor
    recall_target: float = _STORE.recall_target
    recall_sample: int = _STORE.recall_sample
    shadow_share: float = _STORE.shadow_share
    shadow_budget: float = _STORE.shadow_budget
    fold_share: float = _STORE.fold_share
    graph_cells_from: int = _STORE.graph_cells_from

    def __post_init__(self) -> None:
        # Out of these, a searcher would start and then fail every request (no connection
        # for it), or calibrate every collection to the most effort (a target above 1).
        check_ranges(self, _RANGES, env_name)

    def resolved_data_dir(self) -> Path:
        """The embedded database's data directory (defaults.data_dir()/pgdata when unset)."""
        return Path(self.data_dir) if self.data_dir else defaults.data_dir() / "pgdata"

    def store_settings(self) -> StoreSettings:
        """The store's settings as configured; ConfigError for an unknown index kind."""
        return StoreSettings(
            limits=Limits(
                max_top_k=self.max_top_k, max_items_per_message=self.max_items_per_message
            ),
            default_kind=index_kind(self.default_index_kind),
            default_ef_search=self.default_ef_search,
            exact_filter_rows=self.exact_filter_rows,
            maintenance_work_mem=self.maintenance_work_mem,
            recall_floor=self.recall_floor,
            recall_target=self.recall_target,
            recall_sample=self.recall_sample,
            shadow_share=self.shadow_share,
            shadow_budget=self.shadow_budget,
            fold_share=self.fold_share,
            graph_cells_from=self.graph_cells_from,
        )


def index_kind(text: str) -> IndexKind:
    try:
        return IndexKind(text.lower())
    except ValueError:
        choices = ", ".join(kind.value for kind in IndexKind)
        raise ConfigError(f"unknown index kind {text!r}; use one of {choices}") from None


HELP = {
    "dsn": "PostgreSQL DSN (with pgvector); standard PG* variables also work; "
    "unset: an embedded PostgreSQL in --data-dir",
    "data_dir": "embedded PostgreSQL data directory (default: ~/.local/share/imgsearch/pgdata)",
    "pool_size": "database connections (2 of them kept for searches and other requests: "
    "writes, index builds and folds, duplicate scans and recall samples share the rest)",
    "statement_timeout_ms": "per-statement time limit in the database",
    "max_top_k": "largest top_k accepted",
    "max_items_per_message": "most items per Upsert message",
    "default_index_kind": "index kind of new collections: vector, halfvec or binary",
    "default_ef_search": "HNSW ef_search of VECTOR and HALFVEC indexes when neither the request "
    "nor the collection's calibration gives one (BINARY walks as many as it re-ranks)",
    "exact_filter_rows": "filters matching at most this many rows are searched exactly",
    "maintenance_work_mem": "PostgreSQL maintenance_work_mem for index builds (empty: what "
    "each build's graph needs, at most the database's own setting, which the embedded server "
    "sizes from the machine's memory)",
    "recall_floor": "an index build whose measured recall@10 at the default search effort is "
    "below this is rebuilt once with larger m and ef_construction",
    "recall_target": "after each build, a collection searches with the least effort (ef_search, "
    "candidates) whose recall@10, measured on its own vectors, meets this",
    "recall_sample": "most held-out queries used to measure an index build's recall (rows the "
    "build keeps out of its graph until measured; under 10000 rows, stored vectors moved "
    "halfway to their nearest neighbour): one per 50 rows, at least 200; 0: no recall check "
    "(no calibration or repair: searches at the default effort)",
    "shadow_share": "share of searches re-run exactly in the background to measure live recall "
    "(0 turns it off)",
    "shadow_budget": "most of one core's time those exact re-runs may take",
    "fold_share": "most of one core's time that folding rows added to an indexed collection "
    "into its graph may take while writes go on (after them: all it needs)",
    "graph_cells_from": "a collection of at least this many rows, when its index is first "
    "built after a bulk load, gets one small graph per coarse cell instead of one graph over "
    "all its rows (faster to build; a search walks its query's nearest cells' graphs); 0: never",
    **SERVING_HELP,
}


_RANGES = {
    "pool_size": Range(RESERVED_FOR_REQUESTS + 1),
    "statement_timeout_ms": Range(1, zero="no limit"),
    "max_top_k": Range(1),
    "max_items_per_message": Range(1),
    "default_ef_search": Range(1, MAX_EF_SEARCH),
    "exact_filter_rows": Range(0),
    "recall_floor": Range(0, 1),
    "recall_target": Range(0, 1),
    "recall_sample": Range(SMALLEST_SAMPLE, zero="no recall check"),
    "shadow_share": Range(0, 1),
    "shadow_budget": Range(0, 1),
    "fold_share": Range(0, 1),
    "graph_cells_from": Range(0),
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
