"""The client's one translation between wire messages and the public records: responses into
imgsearch.records, search options into request fields. Enums become the lower-case words the
rest of imgsearch uses ("l2", "halfvec", "gem", "random")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from imgsearch import records, vectors
from imgsearch._status import error_from_status
from imgsearch.errors import ImageSearchError
from imgsearch.features import FeatureRow
from imgsearch.v1 import embedder_pb2, searcher_pb2


def _word(enum: Any, value: int, prefix: str) -> str:
    """ "METRIC_COSINE" → "cosine"; a value this client does not know keeps its number."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _moment(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    moment: datetime = getattr(message, name).ToDatetime()
    return moment


def model_info(response: embedder_pb2.GetModelInfoResponse) -> records.ModelInfo:
    return records.ModelInfo(
        model=response.model,
        weights_source=_word(
            embedder_pb2.WeightsSource, response.weights_source, "WEIGHTS_SOURCE_"
        ),
        weights=response.weights,
        head=_word(embedder_pb2.Head, response.head, "HEAD_"),
        dim=response.dim,
        preprocessing=response.preprocessing,
        device=response.device,
        runtime=response.runtime,
        fingerprint=response.fingerprint,
        max_batch_size=response.max_batch_size,
        max_images_per_request=response.max_images_per_request,
        max_image_bytes=response.max_image_bytes,
        max_image_pixels=response.max_image_pixels,
        duplicate_distance=response.duplicate_distance,
        duplicate_cosine_distance=response.duplicate_cosine_distance,
        duplicate_calibration=response.duplicate_calibration,
        heads=tuple(_head(head, head.name) for head in response.heads)
        # An embedder from before heads were listed serves one, described by the fields above.
        or (_head(response, _word(embedder_pb2.Head, response.head, "HEAD_")),),
    )


def _head(
    source: embedder_pb2.HeadInfo | embedder_pb2.GetModelInfoResponse, name: str
) -> records.HeadInfo:
    """A head from a HeadInfo, or from the first head's fields of GetModelInfoResponse (the
    same names)."""
    return records.HeadInfo(
        name=name,
        head=_word(embedder_pb2.Head, source.head, "HEAD_"),
        dim=source.dim,
        fingerprint=source.fingerprint,
        duplicate_distance=source.duplicate_distance,
        duplicate_cosine_distance=source.duplicate_cosine_distance,
    )


def index_info(state: searcher_pb2.IndexState) -> records.IndexInfo:
    return records.IndexInfo(
        generation=state.generation,
        built_rows=state.built_rows,
        built_at=_moment(state, "build_time"),
        build_seconds=state.build_seconds,
        recall=state.recall if state.HasField("recall") else None,
        recall_sample=state.recall_sample,
        recall_measured_at=_moment(state, "recall_time"),
        ef_search=state.ef_search,
        candidates=state.candidates,
        quantizer_rows=state.quantizer_rows,
        note=state.note,
        graphs=max(1, state.graphs),
        graphs_walked=max(1, state.graphs_walked),
        rebuilt_graphs=tuple(
            records.RebuiltGraphs(graphs=g.graphs, m=g.m, ef_construction=g.ef_construction)
            for g in state.rebuilt_graphs
        ),
    )


def index_kind(params: searcher_pb2.IndexParams) -> str:
    return _word(searcher_pb2.IndexKind, params.kind, "INDEX_KIND_")


def metric(value: int) -> str:
    return _word(searcher_pb2.Metric, value, "METRIC_")


def collection_info(collection: searcher_pb2.Collection) -> records.CollectionInfo:
    return records.CollectionInfo(
        name=collection.name,
        dim=collection.dim,
        metric=metric(collection.metric),
        index_kind=index_kind(collection.index_params),
        m=collection.index_params.m,
        ef_construction=collection.index_params.ef_construction,
        model_fingerprint=collection.model_fingerprint,
        created_at=_moment(collection, "create_time"),
        index=index_info(collection.index),
        vectors=tuple(
            records.NamedVectorInfo(
                name=vector.name,
                dim=vector.dim,
                metric=metric(vector.metric),
                index_kind=index_kind(vector.index_params),
                model_fingerprint=vector.model_fingerprint,
                index=index_info(vector.index),
            )
            for vector in collection.vectors
        ),
    )


def collection_stats(response: searcher_pb2.GetStatsResponse) -> records.CollectionStats:
    return records.CollectionStats(
        row_count=response.row_count,
        index_present=response.index_present,
        index_kind=index_kind(response.index_params),
        m=response.index_params.m,
        ef_construction=response.index_params.ef_construction,
        index=index_info(response.index),
        table_bytes=response.table_bytes,
        index_bytes=response.index_bytes,
        postgres_version=response.postgres_version,
        pgvector_version=response.pgvector_version,
        settings=dict(response.settings),
        live_recall=response.live_recall if response.HasField("live_recall") else None,
        fresh_rows=response.fresh_rows,
        fresh_cells=response.fresh_cells,
        fresh_cells_searched=response.fresh_cells_searched,
    )


def hits(response: searcher_pb2.SearchResponse) -> list[records.Hit]:
    return [
        records.Hit(h.id, h.label, h.uri, h.distance, dict(h.attributes)) for h in response.hits
    ]


PRIORITY_TO_PROTO = {
    "interactive": embedder_pb2.PRIORITY_INTERACTIVE,
    "bulk": embedder_pb2.PRIORITY_BULK,
}


def batch_outcome(
    result: searcher_pb2.SearchBatchResult,
) -> list[records.Hit] | ImageSearchError:
    """One search of a SearchBatch: its hits, or the error the searcher gave it."""
    if result.WhichOneof("outcome") == "response":
        return hits(result.response)
    return error_from_status(result.error.code, result.error.message)


def stored_item(item: searcher_pb2.Item) -> records.StoredItem:
    vector = vectors.from_proto(item.vector) if item.HasField("vector") else None
    return records.StoredItem(item.id, item.label, item.uri, dict(item.attributes), vector)


def duplicate_group(group: searcher_pb2.DuplicateGroup) -> records.DuplicateGroup:
    return records.DuplicateGroup(
        [records.DuplicateMember(m.id, m.label, m.uri, m.distance) for m in group.members]
    )


def embed_outcome(
    result: embedder_pb2.EmbedResult, head: str = ""
) -> np.ndarray | ImageSearchError:
    """An image's vector (of the named `head`, which the request asked for; "": the first),
    or the error the embedder gave it."""
    if result.WhichOneof("outcome") == "vector":
        return vectors.from_proto(result.vectors[head] if head else result.vector)
    return error_from_status(result.error.code, result.error.message)


def search_request(
    collection: str, top_k: int, options: records.SearchOptions, **query: Any
) -> searcher_pb2.SearchRequest:
    """A Search request for `query` (vector=... or id=...) answered as `options` say."""
    return searcher_pb2.SearchRequest(
        collection=collection,
        top_k=top_k,
        filter=search_filter(options),
        params=searcher_pb2.SearchParams(
            ef_search=options.ef_search, candidates=options.candidates, exact=options.exact
        ),
        min_distance=options.min_distance,
        max_distance=options.max_distance,
        vector_name=options.vector,
        **query,
    )


def search_filter(options: records.SearchOptions) -> searcher_pb2.Filter:
    return searcher_pb2.Filter(labels=list(options.labels), attributes=dict(options.attributes))


def feature_message(name: str, rows: list[FeatureRow]) -> searcher_pb2.UpsertRequest:
    """One Upsert message of feature-file rows."""
    return searcher_pb2.UpsertRequest(
        collection=name,
        items=[
            searcher_pb2.Item(id=r.id, label=r.label, vector=vectors.to_proto(r.vector))
            for r in rows
        ],
    )
