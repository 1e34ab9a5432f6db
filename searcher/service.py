"""SearcherService: translates imgsearch.v1 messages to and from searcher.store calls."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from imgsearch import defaults, vectors
from imgsearch._status import map_errors, map_stream_errors, status_of
from imgsearch.errors import (
    DeadlineExceeded,
    DetailedError,
    ImageSearchError,
    InvalidArgument,
    ResourceExhausted,
)
from imgsearch.records import DuplicateGroup
from imgsearch.v1 import searcher_pb2 as pb
from imgsearch.v1 import searcher_pb2_grpc
from searcher.metrics import SearcherMetrics
from searcher.store import (
    Collection,
    DistanceRange,
    Filter,
    IndexKind,
    Item,
    Metric,
    VectorSpec,
    VectorStore,
)

METRIC_TO_PROTO = {
    Metric.L2: pb.METRIC_L2,
    Metric.COSINE: pb.METRIC_COSINE,
    Metric.INNER_PRODUCT: pb.METRIC_INNER_PRODUCT,
}
METRIC_FROM_PROTO = {value: key for key, value in METRIC_TO_PROTO.items()}
KIND_TO_PROTO = {
    IndexKind.VECTOR: pb.INDEX_KIND_VECTOR,
    IndexKind.HALFVEC: pb.INDEX_KIND_HALFVEC,
    IndexKind.BINARY: pb.INDEX_KIND_BINARY,
}
KIND_FROM_PROTO = {value: key for key, value in KIND_TO_PROTO.items()}


MAX_BATCH_SEARCHES = 1000
# A batch's searches run this many at a time: each is one database query, mostly waiting on
# PostgreSQL's cores, and the rest of the pool stays free for other callers.
BATCH_WORKERS = min(4, os.cpu_count() or 1)

# The methods that change data: a read-only token may call every other one.
WRITE_METHODS = frozenset(
    f"/imgsearch.v1.SearcherService/{name}"
    for name in ("CreateCollection", "DropCollection", "Upsert", "Delete")
)


class SearcherServicer(searcher_pb2_grpc.SearcherServiceServicer):
    """imgsearch.v1.SearcherService over a VectorStore: messages in, store calls, messages out;
    every error becomes its status through imgsearch._status."""

    def __init__(self, store: VectorStore, metrics: SearcherMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics

    @map_errors
    def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CreateCollectionResponse:
        own = vector_spec_from_proto(request)
        collection = self.store.create_collection(
            request.name,
            own.dim,
            own.metric,
            kind=own.kind,
            m=own.m,
            ef_construction=own.ef_construction,
            model_fingerprint=own.model_fingerprint,
            vectors=[vector_spec_from_proto(vector) for vector in request.vectors],
        )
        return pb.CreateCollectionResponse(collection=self._collection_to_proto(collection))

    @map_errors
    def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.ServicerContext
    ) -> pb.GetCollectionResponse:
        collection = self.store.get_collection(request.name)
        return pb.GetCollectionResponse(collection=self._collection_to_proto(collection))

    @map_errors
    def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> pb.ListCollectionsResponse:
        collections = self.store.list_collections()
        return pb.ListCollectionsResponse(
            collections=[self._collection_to_proto(c) for c in collections]
        )

    def _collection_to_proto(self, collection: Collection) -> pb.Collection:
        named = self.store.named_vectors(collection.name)
        rebuilt = self.store.rebuilt_graphs([collection, *named])
        return collection_to_proto(collection, named, rebuilt)

    @map_errors
    def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.ServicerContext
    ) -> pb.DropCollectionResponse:
        self.store.drop_collection(request.name)
        return pb.DropCollectionResponse()

    @map_errors
    def Upsert(
        self, request_iterator: Iterator[pb.UpsertRequest], context: grpc.ServicerContext
    ) -> pb.UpsertResponse:
        session = None
        number = 1  # of the message being read or written: reading one can fail too
        try:
            for message in request_iterator:
                name = message.collection or defaults.COLLECTION
                if session is None:
                    session = self.store.begin_upsert(
                        name, expected_items=message.expected_item_count
                    )
                elif name != session.collection.name:
                    raise InvalidArgument(
                        f"every message of one Upsert stream must name the same collection: "
                        f"message 1 named {session.collection.name!r}, message {number} {name!r}"
                    )
                counts = session.write([item_from_proto(item) for item in message.items])
                if self.metrics is not None:
                    self.metrics.rows_written.labels("inserted").inc(counts.inserted)
                    self.metrics.rows_written.labels("updated").inc(counts.updated)
                number += 1
        except ImageSearchError as exc:
            done = session.counts if session else None
            committed = session.messages if session else 0
            summary = pb.UpsertResponse(
                inserted_count=done.inserted if done else 0,
                updated_count=done.updated if done else 0,
                message_count=committed,
            )
            error = type(exc)(
                f"Upsert message {number} rejected, nothing of it written: {exc}. "
                f"Messages before it stay committed: {committed} messages, "
                f"{summary.inserted_count} items inserted, {summary.updated_count} updated."
            )
            raise DetailedError(error, summary) from exc
        finally:
            if session is not None:
                session.close()
        if session is None:
            return pb.UpsertResponse()
        return pb.UpsertResponse(
            inserted_count=session.counts.inserted,
            updated_count=session.counts.updated,
            message_count=session.messages,
        )

    @map_errors
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return self._search(request)

    @map_errors
    def SearchBatch(
        self, request: pb.SearchBatchRequest, context: grpc.ServicerContext
    ) -> pb.SearchBatchResponse:
        if len(request.searches) > MAX_BATCH_SEARCHES:
            raise ResourceExhausted(
                f"{len(request.searches)} searches in one batch; the limit is "
                f"{MAX_BATCH_SEARCHES}: split it"
            )

        def one(search: pb.SearchRequest) -> pb.SearchBatchResult:
            if not context.is_active():  # the caller gave up or its deadline passed
                return pb.SearchBatchResult(error=status_of(DeadlineExceeded("not searched")))
            try:
                return pb.SearchBatchResult(response=self._search(search))
            except Exception as exc:
                return pb.SearchBatchResult(error=status_of(exc))

        with ThreadPoolExecutor(BATCH_WORKERS, thread_name_prefix="search-batch") as workers:
            return pb.SearchBatchResponse(results=list(workers.map(one, request.searches)))

    def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgument("set the query: either vector or id")
        query: np.ndarray | int = (
            vectors.from_proto(request.vector) if kind == "vector" else int(request.id)
        )
        started = time.perf_counter()
        result = self.store.search(
            request.collection,
            query,
            request.top_k,
            filter=filter_from_proto(request.filter),
            ef_search=request.params.ef_search,
            candidates=request.params.candidates,
            exact=request.params.exact,
            distances=DistanceRange(request.min_distance, request.max_distance),
            vector=request.vector_name,
        )
        if self.metrics is not None:
            self.metrics.query_seconds.observe(time.perf_counter() - started)
        return pb.SearchResponse(
            hits=[
                pb.Hit(
                    id=hit.id,
                    label=hit.label,
                    uri=hit.uri,
                    attributes=hit.attributes,
                    distance=hit.distance,
                )
                for hit in result.hits
            ],
            exact=result.exact,
        )

    @map_errors
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        items, missing = self.store.get(
            request.collection, list(request.ids), include_vectors=request.include_vectors
        )
        return pb.GetResponse(
            items=[item_to_proto(item, request.include_vectors) for item in items],
            missing_ids=missing,
        )

    @map_errors
    def ListItems(
        self, request: pb.ListItemsRequest, context: grpc.ServicerContext
    ) -> pb.ListItemsResponse:
        page_size = request.page_size or 100
        after_id: int | None = None
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument("page_token is not one this server issued; start without it")
            after_id = int(request.page_token)
        items = self.store.list_items(
            request.collection,
            after_id=after_id,
            limit=page_size,
            include_vectors=request.include_vectors,
        )
        return pb.ListItemsResponse(
            items=[item_to_proto(item, request.include_vectors) for item in items],
            next_page_token=str(items[-1].id) if len(items) == page_size else "",
        )

    @map_errors
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        deleted = self.store.delete(
            request.collection, ids=list(request.ids), filter=filter_from_proto(request.filter)
        )
        return pb.DeleteResponse(deleted_count=deleted)

    @map_errors
    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        stats = self.store.stats(request.collection, request.vector_name)
        return pb.GetStatsResponse(
            row_count=stats.row_count,
            index_present=stats.index_present,
            index_params=index_params_to_proto(stats.collection),
            table_bytes=stats.table_bytes,
            index_bytes=stats.index_bytes,
            pgvector_version=stats.pgvector_version,
            postgres_version=stats.postgres_version,
            index=index_state_to_proto(stats.collection, stats.rebuilt_graphs),
            live_recall=stats.live_recall,
            settings=stats.settings,
            fresh_rows=stats.fresh_rows,
            fresh_cells=stats.fresh_cells,
            fresh_cells_searched=stats.fresh_cells_searched,
        )

    @map_stream_errors
    def FindDuplicates(
        self, request: pb.FindDuplicatesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FindDuplicatesResponse]:
        events = self.store.find_duplicates(
            request.collection,
            request.max_distance,
            filter=filter_from_proto(request.filter),
            limit=request.limit,
            exact=request.exact,
            cancelled=lambda: not context.is_active(),
            vector=request.vector_name,
        )
        for event in events:
            if isinstance(event, DuplicateGroup):
                yield pb.FindDuplicatesResponse(
                    group=pb.DuplicateGroup(
                        members=[
                            pb.DuplicateMember(
                                id=m.id, label=m.label, uri=m.uri, distance=m.distance
                            )
                            for m in event.members
                        ]
                    )
                )
            else:
                yield pb.FindDuplicatesResponse(
                    progress=pb.DuplicatesProgress(
                        scanned_items=event.scanned, total_items=event.total
                    )
                )


def collection_to_proto(
    collection: Collection,
    named: Sequence[Collection] = (),
    rebuilt: Mapping[str, Sequence[tuple[int, int, int]]] | None = None,
) -> pb.Collection:
    """A collection and its named vectors; `rebuilt`: by table name, the graphs a repair
    rebuilt with other parameters (cell_graphs.rebuilt_graphs)."""
    rebuilt = rebuilt or {}
    return pb.Collection(
        name=collection.name,
        dim=collection.dim,
        metric=METRIC_TO_PROTO[collection.metric],
        index_params=index_params_to_proto(collection),
        model_fingerprint=collection.model_fingerprint,
        create_time=_timestamp(collection.created_at),
        index=index_state_to_proto(collection, rebuilt.get(collection.name, ())),
        vectors=[
            pb.NamedVector(
                name=table.vector_name,
                dim=table.dim,
                metric=METRIC_TO_PROTO[table.metric],
                index_params=index_params_to_proto(table),
                model_fingerprint=table.model_fingerprint,
                index=index_state_to_proto(table, rebuilt.get(table.name, ())),
            )
            for table in named
        ],
    )


def vector_spec_from_proto(vector: pb.NamedVector | pb.CreateCollectionRequest) -> VectorSpec:
    """A collection's own vector (from its CreateCollectionRequest, unnamed) or a named one."""
    if vector.metric == pb.METRIC_UNSPECIFIED:
        metric = Metric.L2
    elif vector.metric in METRIC_FROM_PROTO:
        metric = METRIC_FROM_PROTO[vector.metric]
    else:
        raise InvalidArgument(f"unknown metric {vector.metric}")
    kind_value = vector.index_params.kind
    if kind_value != pb.INDEX_KIND_UNSPECIFIED and kind_value not in KIND_FROM_PROTO:
        raise InvalidArgument(f"unknown index kind {kind_value}")
    return VectorSpec(
        name=vector.name if isinstance(vector, pb.NamedVector) else "",
        dim=vector.dim,
        metric=metric,
        kind=KIND_FROM_PROTO.get(kind_value),
        m=vector.index_params.m,
        ef_construction=vector.index_params.ef_construction,
        model_fingerprint=vector.model_fingerprint,
    )


def index_params_to_proto(collection: Collection) -> pb.IndexParams:
    return pb.IndexParams(
        m=collection.m,
        ef_construction=collection.ef_construction,
        kind=KIND_TO_PROTO[collection.kind],
    )


def index_state_to_proto(
    collection: Collection, rebuilt: Sequence[tuple[int, int, int]] = ()
) -> pb.IndexState:
    return pb.IndexState(
        generation=collection.generation,
        built_rows=collection.built_rows,
        build_time=_timestamp(collection.built_at),
        build_seconds=collection.build_seconds,
        recall=collection.recall,
        recall_sample=collection.recall_sample,
        recall_time=_timestamp(collection.recall_measured_at),
        ef_search=collection.ef_search,
        candidates=collection.candidates,
        quantizer_rows=collection.quantizer_rows,
        note=collection.index_note,
        graphs=collection.graph_cells or 1,
        graphs_walked=collection.graph_probes or 1,
        rebuilt_graphs=[
            pb.RebuiltGraphs(graphs=graphs, m=m, ef_construction=ef_construction)
            for graphs, m, ef_construction in rebuilt
        ],
    )


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def item_to_proto(item: Item, include_vector: bool) -> pb.Item:
    return pb.Item(
        id=item.id,
        label=item.label,
        uri=item.uri,
        attributes=item.attributes,
        vector=vectors.to_proto(item.vector) if include_vector else None,
        vectors={name: vectors.to_proto(v) for name, v in item.vectors.items()},
    )


def item_from_proto(item: pb.Item) -> Item:
    return Item(
        id=item.id,
        vector=vectors.from_proto(item.vector),
        label=item.label,
        uri=item.uri,
        attributes=dict(item.attributes),
        vectors={name: vectors.from_proto(v) for name, v in item.vectors.items()},
    )


def filter_from_proto(filter: pb.Filter) -> Filter:
    return Filter(labels=tuple(filter.labels), attributes=tuple(sorted(filter.attributes.items())))
