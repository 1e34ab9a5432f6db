"""The searcher core's settings, one object with every default written once: the request limits,
the index kind of new collections, how searches and builds are tuned, and how recall is
measured. The service's configuration (searcher.config) offers each as a flag and variable."""

from __future__ import annotations

from dataclasses import dataclass

from searcher.catalogue import IndexKind
from searcher.cell_graphs import DEFAULT_FROM_ROWS
from searcher.validation import Limits


@dataclass(frozen=True)
class StoreSettings:
    """What VectorStore is tuned with; see searcher.config's HELP for each in words."""

    limits: Limits = Limits()
    default_kind: IndexKind = IndexKind.HALFVEC
    default_ef_search: int = 400
    exact_filter_rows: int = 20_000
    maintenance_work_mem: str = ""  # empty: the database's own setting
    recall_floor: float = 0.95
    recall_target: float = 0.99
    recall_sample: int = 2000
    shadow_share: float = 0.01
    shadow_budget: float = 0.05
    fold_share: float = 0.1
    graph_cells_from: int = DEFAULT_FROM_ROWS
