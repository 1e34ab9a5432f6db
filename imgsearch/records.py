"""The plain records of imgsearch's public API: what a call takes (IngestItem, SearchOptions) and
what it gives back (Hit, StoredItem, DuplicateGroup, ModelInfo, CollectionInfo, CollectionStats,
IngestReport). No protobuf and no gRPC here: the searcher builds its hits from the same Hit, and
the client converts the wire messages into these in one place (imgsearch._convert)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class IngestItem:
    """One image to embed and store: its id (same id again = update), the encoded image, and
    what is stored beside its vector."""

    id: int
    image: bytes
    label: str = ""
    uri: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchOptions:
    """How a search is answered. Which items may be hits: only these `labels` (any of them) and
    `attributes` (all of them); only those at least `min_distance` away (0: no bound; leaves out
    the query's near-duplicates) and at most `max_distance` away (0: no bound; keeps only them).
    How hard the index is walked: `ef_search` and, for quantized index kinds, `candidates`
    re-ranked exactly (0: the collection's calibrated effort); `exact` scans every row."""

    labels: Sequence[str] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    min_distance: float = 0.0
    max_distance: float = 0.0
    ef_search: int = 0
    candidates: int = 0
    exact: bool = False
    # Which of the collection's vectors to search: one of its named vectors (for example "gem",
    # copy detection), or "" for its own.
    vector: str = ""


@dataclass(frozen=True)
class Hit:
    """A stored item found by a search, with its exact distance to the query (smaller is
    nearer, under the collection's metric)."""

    id: int
    label: str
    uri: str
    distance: float
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredItem:
    """An item as stored; `vector` only when it was asked for."""

    id: int
    label: str
    uri: str
    attributes: dict[str, str] = field(default_factory=dict)
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class DuplicateMember:
    """One item of a group of near-duplicates, with its distance to the group's first member."""

    id: int
    label: str
    uri: str
    distance: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Items each within the duplicate distance of every other; the first member (the smallest
    id) first, at distance 0, then the others by distance to it."""

    members: list[DuplicateMember]


@dataclass
class IngestReport:
    """What an ingest did: rows inserted and updated, and each image that failed with why."""

    inserted: int = 0
    updated: int = 0
    failed: list[tuple[IngestItem, str]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Rows written, new or updated."""
        return self.inserted + self.updated


@dataclass(frozen=True)
class HeadInfo:
    """One of the vectors an embedder computes for each image (several come from one pass):
    its name ("logits", "gem"), what computes it, its length, fingerprint and duplicate
    distances."""

    name: str
    head: str  # logits | gem | gem_shared_pass
    dim: int
    fingerprint: str
    duplicate_distance: float
    duplicate_cosine_distance: float


@dataclass(frozen=True)
class ModelInfo:
    """What the embedder serves: its model, weights and head, the vectors' length and the
    fingerprint collections record, its limits, and the duplicate distances it measured at
    start-up (0 when not measured)."""

    model: str
    weights_source: str  # imagenet | checkpoint | random
    weights: str  # the torchvision enum member, the checkpoint path, or the random seed
    head: str  # logits | gem
    dim: int
    preprocessing: str
    device: str
    runtime: str
    fingerprint: str
    max_batch_size: int
    max_images_per_request: int
    max_image_bytes: int
    max_image_pixels: int
    duplicate_distance: float
    duplicate_cosine_distance: float
    duplicate_calibration: str
    # Every vector the embedder computes per image, the first being the one described above.
    heads: tuple[HeadInfo, ...] = ()

    def head_named(self, name: str) -> HeadInfo | None:
        """The head of that name, if the embedder serves it."""
        return next((head for head in self.heads if head.name == name), None)

    @property
    def random_weights(self) -> bool:
        """True when the vectors say nothing about image content (weights=random)."""
        return self.weights_source == "random"


@dataclass(frozen=True)
class IndexInfo:
    """What a collection's last index build left: its generation, size and time, the recall it
    measured, and the search effort calibrated from it (0: the server's default)."""

    generation: int
    built_rows: int
    built_at: datetime | None
    build_seconds: float
    recall: float | None
    recall_sample: int
    recall_measured_at: datetime | None
    ef_search: int
    candidates: int
    quantizer_rows: int
    note: str
    graphs: int = 1  # one graph over every indexed row, or one per coarse cell
    graphs_walked: int = 1  # how many of them (nearest to its query) a search walks
    # Graphs by cell the upkeep's repair rebuilt with other HNSW parameters than the collection's
    rebuilt_graphs: tuple[RebuiltGraphs, ...] = ()


@dataclass(frozen=True)
class RebuiltGraphs:
    """Some of a collection's graphs by cell, rebuilt alone with these HNSW parameters."""

    graphs: int
    m: int
    ef_construction: int


@dataclass(frozen=True)
class CollectionInfo:
    """A collection: its vectors' length and metric (l2, cosine, inner_product), its index kind
    (vector, halfvec, binary) and HNSW parameters, the model that filled it, and its index."""

    name: str
    dim: int
    metric: str
    index_kind: str
    m: int
    ef_construction: int
    model_fingerprint: str
    created_at: datetime | None
    index: IndexInfo
    # The named vectors each item carries beside its own (for example "gem").
    vectors: tuple[NamedVectorInfo, ...] = ()

    def vector_named(self, name: str) -> NamedVectorInfo | None:
        """The named vector of that name, if the collection has it."""
        return next((vector for vector in self.vectors if vector.name == name), None)


@dataclass(frozen=True)
class NamedVectorInfo:
    """A vector every item of a collection carries under a name, with its own index."""

    name: str
    dim: int
    metric: str
    index_kind: str
    model_fingerprint: str
    index: IndexInfo


@dataclass(frozen=True)
class CollectionStats:
    """A collection's size on disk, its index and its measured recall, the database's versions
    and the settings that shape its speed."""

    row_count: int
    index_present: bool
    index_kind: str
    m: int
    ef_construction: int
    index: IndexInfo
    table_bytes: int
    index_bytes: int
    postgres_version: str
    pgvector_version: str
    settings: dict[str, str]
    live_recall: float | None  # over the last shadow queries of the searcher that answered
    fresh_rows: int = 0  # not in the index yet (added since its build): searched exactly
    fresh_cells: int = 0  # the cells they are sorted into; 0: none, every one is scanned
    fresh_cells_searched: int = 0  # how many of its query's nearest cells a search scans
