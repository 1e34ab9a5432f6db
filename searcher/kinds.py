"""The index kinds: what each one indexes, how a query reaches it, and what it needs.

- VECTOR: HNSW over the stored float32 vectors; the index returns exact distances.
- HALFVEC: HNSW over a half-precision copy (half the size); its candidates are re-ranked by the
  exact distance on the stored vectors.
- BINARY: HNSW over bit codes (Hamming distance), the smallest and cheapest to search and to
  insert into; its candidates are re-ranked exactly. Each dimension gives three bits: is the
  value above its mean minus one standard deviation, above its mean, above its mean plus one?
  CNN features are non-negative, so the sign bits pgvector's binary_quantize gives of the raw
  vector carry almost nothing; of the centred vector they carry the most, and the two extra
  thresholds make Hamming distance follow L2 distance far better (bench/RESULTS.md, index kinds).

Every kind serves queries through `candidate_order`: ORDER BY that expression walks its index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from psycopg2 import sql

from imgsearch.errors import FailedPrecondition, InvalidArgument
from searcher.catalogue import Collection, IndexKind, Metric
from searcher.pgvector_io import vector_literal
from searcher.schema import DATA_SCHEMA

QUERY = sql.Placeholder("query")  # the query vector's literal, bound by the caller
# Thresholds per dimension for BINARY codes, in standard deviations from the mean.
BINARY_THRESHOLDS = (-1.0, 0.0, 1.0)
# The ef_search values a collection's search effort is calibrated over, after each build: steps
# of at most 1.3x, so that two builds whose samples land one step apart search alike (with
# steps of 2x, 200 and 400 were both chosen for builds of the same 100k rows).
EFFORT_LADDER = (40, 50, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)


@dataclass(frozen=True)
class KindSpec:
    kind: IndexKind
    pgvector_since: tuple[int, int, int]
    # pgvector's limit on indexed dimensions for this kind.
    max_indexed_dim: int
    # Candidates re-ranked exactly per query when nobody asks for a number; 0: no re-ranking.
    default_candidates: int
    # Metrics it cannot serve, and why.
    refused_metrics: tuple[tuple[Metric, str], ...] = ()
    # Whether a search walks as many graph candidates as it re-ranks: Hamming distance between
    # codes ranks too coarsely for a short list of its best to hold the true neighbours.
    ef_search_is_candidates: bool = False

    @property
    def reranks(self) -> bool:
        return self.default_candidates > 0

    def default_effort(self, default_ef_search: int) -> tuple[int, int]:
        """(ef_search, candidates) before a collection's effort is calibrated."""
        if self.ef_search_is_candidates:
            return self.default_candidates, self.default_candidates
        return default_ef_search, self.default_candidates

    def effort_ladder(self, candidates: int) -> list[tuple[int, int]]:
        """(ef_search, candidates) settings from the cheapest to the most thorough."""
        if self.ef_search_is_candidates:
            return [(ef, ef) for ef in EFFORT_LADDER]
        return [(ef, candidates or self.default_candidates) for ef in EFFORT_LADDER]

    def value_bytes(self, dim: int) -> int:
        """What one indexed value takes in memory (a varlena: header, then the data)."""
        if self.kind is IndexKind.VECTOR:
            return 8 + 4 * dim
        if self.kind is IndexKind.HALFVEC:
            return 8 + 2 * dim
        return 8 + -(-dim * len(BINARY_THRESHOLDS) // 8)

    def graph_bytes(self, rows: int, dim: int, m: int) -> int:
        """pgvector's in-memory graph of `rows` elements while it builds (hnswbuild.c): each
        element's struct (~128 bytes), its value, its level-0 neighbours (2m candidates of 16
        bytes) and its upper levels' (m each, on about 1/(m-1) of the elements), plus a tenth
        for allocation headers."""
        upper = (8 + 16 * m) / max(m - 1, 1)
        element = 128 + 16 + self.value_bytes(dim) + (8 + 16 * 2 * m) + upper
        return int(rows * element * 1.1)

    @property
    def needs_quantizer(self) -> bool:
        return self.kind is IndexKind.BINARY

    def check(self, metric: Metric, pgvector_version: tuple[int, ...]) -> None:
        """Refuse a collection this kind cannot serve, saying why."""
        for refused, reason in self.refused_metrics:
            if metric is refused:
                raise InvalidArgument(
                    f"index kind {self.kind.name} cannot serve metric {metric.name}: {reason}"
                )
        if pgvector_version and pgvector_version < self.pgvector_since:
            need = ".".join(map(str, self.pgvector_since))
            have = ".".join(map(str, pgvector_version))
            raise FailedPrecondition(
                f"index kind {self.kind.name} needs pgvector {need} or newer; this database "
                f"has pgvector {have}. Use kind VECTOR here, or upgrade the extension "
                "(ALTER EXTENSION vector UPDATE after installing a newer pgvector)"
            )

    def indexed_expression(self, collection: Collection, generation: int) -> sql.Composable:
        """What the HNSW index of this generation is built over."""
        if self.kind is IndexKind.VECTOR:
            return sql.SQL("embedding")
        if self.kind is IndexKind.HALFVEC:
            return sql.SQL("(embedding::halfvec({}))").format(sql.Literal(collection.dim))
        return sql.SQL("({}(embedding)::bit({}))").format(
            sql.Identifier(DATA_SCHEMA, collection.quantizer_name(generation)),
            sql.Literal(collection.dim * len(BINARY_THRESHOLDS)),
        )

    def opclass(self, metric: Metric) -> str:
        if self.kind is IndexKind.BINARY:
            return "bit_hamming_ops"
        suffix = {"l2": "l2_ops", "cosine": "cosine_ops", "inner_product": "ip_ops"}[metric.value]
        return f"{self.kind.value}_{suffix}"

    def create_index(
        self,
        collection: Collection,
        generation: int,
        *,
        concurrently: bool,
        cell: int | None = None,
    ) -> sql.Composable:
        """CREATE INDEX of this generation, over the rows up to the collection's index_segment
        (fresh rows stay off the graph), or over those of them in one cell (graphs by cell).
        Never IF NOT EXISTS: an index of that name can only be what a crashed build left
        (invalid, or never recorded), and it would be taken for the new one; the builder drops
        such a leftover first."""
        return sql.SQL(
            "CREATE INDEX {} {} ON {} USING hnsw ({} {}) WITH (m = {}, ef_construction = {}) "
            "WHERE {}"
        ).format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""),
            sql.Identifier(collection.index_name(generation, cell)),
            collection.table,
            self.indexed_expression(collection, generation),
            sql.SQL(self.opclass(collection.metric)),
            sql.Literal(collection.m),
            sql.Literal(collection.ef_construction),
            collection.in_graph(cell),
        )

    def candidate_order(
        self, collection: Collection, query: sql.Composable = QUERY
    ) -> sql.Composable:
        """ORDER BY this to walk the index. `query` is the query vector: by default %(query)s,
        bound to its literal; a join passes another row's `embedding` column."""
        if self.kind is IndexKind.VECTOR:
            return sql.SQL("embedding {} {}::vector").format(
                sql.SQL(collection.metric.operator), query
            )
        if self.kind is IndexKind.HALFVEC:
            half = sql.SQL("halfvec({})").format(sql.Literal(collection.dim))
            return sql.SQL("embedding::{} {} {}::{}").format(
                half, sql.SQL(collection.metric.operator), query, half
            )
        quantize = sql.Identifier(DATA_SCHEMA, collection.quantizer_name())
        return sql.SQL("{}(embedding)::bit({}) <~> {}({}::vector)").format(
            quantize, sql.Literal(collection.dim * len(BINARY_THRESHOLDS)), quantize, query
        )

    def quantizer_input(self, metric: Metric) -> str:
        """The expression the quantizer is fitted on and applied to: cosine neighbours are L2
        neighbours of the normalised vectors."""
        return "l2_normalize(embedding)" if metric is Metric.COSINE else "embedding"


# Default candidates from bench/index_kinds.py on 100k SqueezeNet vectors and 100k clustered
# ones (bench/RESULTS.md): HALFVEC distances are so close to exact that 40 candidates hold the
# true top 10 (recall 1.000); BINARY codes needed 200 for 0.91 and 400 for 0.97 on SqueezeNet
# output.
KINDS = {
    IndexKind.VECTOR: KindSpec(IndexKind.VECTOR, (0, 5, 0), 2000, default_candidates=0),
    IndexKind.HALFVEC: KindSpec(IndexKind.HALFVEC, (0, 7, 0), 4000, default_candidates=40),
    IndexKind.BINARY: KindSpec(
        IndexKind.BINARY,
        (0, 7, 0),
        16000,
        default_candidates=200,
        ef_search_is_candidates=True,
        refused_metrics=(
            (
                Metric.INNER_PRODUCT,
                "inner product ranks by length as well as direction, and Hamming distance "
                "between bit codes cannot follow it; use HALFVEC or VECTOR",
            ),
        ),
    ),
}


def spec(kind: IndexKind) -> KindSpec:
    return KINDS[kind]


def create_quantizer(
    collection: Collection, generation: int, centre: np.ndarray, spread: np.ndarray
) -> sql.Composable:
    """The SQL function that turns a vector into its BINARY code (dim × 3 bits). IMMUTABLE, so
    an index can be built on it; PostgreSQL inlines it both in the index definition and in
    queries, which is how a query's ORDER BY finds the index."""
    normalised = "l2_normalize(v)" if collection.metric is Metric.COSINE else "v"
    parts = [
        sql.SQL("binary_quantize({} - {}::vector)").format(
            sql.SQL(normalised), sql.Literal(vector_literal(centre + k * spread))
        )
        for k in BINARY_THRESHOLDS
    ]
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}(v vector) RETURNS bit "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {}"
    ).format(
        sql.Identifier(DATA_SCHEMA, collection.quantizer_name(generation)),
        sql.SQL(" || ").join(parts),
    )
