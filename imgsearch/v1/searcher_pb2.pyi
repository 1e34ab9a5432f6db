import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from imgsearch.v1 import vector_pb2 as _vector_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_INNER_PRODUCT: _ClassVar[Metric]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    INDEX_KIND_VECTOR: _ClassVar[IndexKind]
    INDEX_KIND_HALFVEC: _ClassVar[IndexKind]
    INDEX_KIND_BINARY: _ClassVar[IndexKind]
METRIC_UNSPECIFIED: Metric
METRIC_L2: Metric
METRIC_COSINE: Metric
METRIC_INNER_PRODUCT: Metric
INDEX_KIND_UNSPECIFIED: IndexKind
INDEX_KIND_VECTOR: IndexKind
INDEX_KIND_HALFVEC: IndexKind
INDEX_KIND_BINARY: IndexKind

class IndexParams(_message.Message):
    __slots__ = ("m", "ef_construction", "kind")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    kind: IndexKind
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., kind: _Optional[_Union[IndexKind, str]] = ...) -> None: ...

class IndexState(_message.Message):
    __slots__ = ("generation", "built_rows", "build_time", "build_seconds", "recall", "recall_sample", "recall_time", "ef_search", "candidates", "quantizer_rows", "note", "graphs", "graphs_walked", "rebuilt_graphs")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BUILT_ROWS_FIELD_NUMBER: _ClassVar[int]
    BUILD_TIME_FIELD_NUMBER: _ClassVar[int]
    BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    RECALL_TIME_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZER_ROWS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    GRAPHS_WALKED_FIELD_NUMBER: _ClassVar[int]
    REBUILT_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    built_rows: int
    build_time: _timestamp_pb2.Timestamp
    build_seconds: float
    recall: float
    recall_sample: int
    recall_time: _timestamp_pb2.Timestamp
    ef_search: int
    candidates: int
    quantizer_rows: int
    note: str
    graphs: int
    graphs_walked: int
    rebuilt_graphs: _containers.RepeatedCompositeFieldContainer[RebuiltGraphs]
    def __init__(self, generation: _Optional[int] = ..., built_rows: _Optional[int] = ..., build_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., build_seconds: _Optional[float] = ..., recall: _Optional[float] = ..., recall_sample: _Optional[int] = ..., recall_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ef_search: _Optional[int] = ..., candidates: _Optional[int] = ..., quantizer_rows: _Optional[int] = ..., note: _Optional[str] = ..., graphs: _Optional[int] = ..., graphs_walked: _Optional[int] = ..., rebuilt_graphs: _Optional[_Iterable[_Union[RebuiltGraphs, _Mapping]]] = ...) -> None: ...

class RebuiltGraphs(_message.Message):
    __slots__ = ("graphs", "m", "ef_construction")
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    graphs: int
    m: int
    ef_construction: int
    def __init__(self, graphs: _Optional[int] = ..., m: _Optional[int] = ..., ef_construction: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "dim", "metric", "index_params", "model_fingerprint", "create_time", "index", "vectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    index_params: IndexParams
    model_fingerprint: str
    create_time: _timestamp_pb2.Timestamp
    index: IndexState
    vectors: _containers.RepeatedCompositeFieldContainer[NamedVector]
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., index_params: _Optional[_Union[IndexParams, _Mapping]] = ..., model_fingerprint: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index: _Optional[_Union[IndexState, _Mapping]] = ..., vectors: _Optional[_Iterable[_Union[NamedVector, _Mapping]]] = ...) -> None: ...

class NamedVector(_message.Message):
    __slots__ = ("name", "dim", "metric", "index_params", "model_fingerprint", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    index_params: IndexParams
    model_fingerprint: str
    index: IndexState
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., index_params: _Optional[_Union[IndexParams, _Mapping]] = ..., model_fingerprint: _Optional[str] = ..., index: _Optional[_Union[IndexState, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "dim", "metric", "index_params", "model_fingerprint", "vectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    index_params: IndexParams
    model_fingerprint: str
    vectors: _containers.RepeatedCompositeFieldContainer[NamedVector]
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., index_params: _Optional[_Union[IndexParams, _Mapping]] = ..., model_fingerprint: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[NamedVector, _Mapping]]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "label", "uri", "attributes", "vector", "vectors")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class VectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _vector_pb2.Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_vector_pb2.Vector, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    id: int
    label: str
    uri: str
    attributes: _containers.ScalarMap[str, str]
    vector: _vector_pb2.Vector
    vectors: _containers.MessageMap[str, _vector_pb2.Vector]
    def __init__(self, id: _Optional[int] = ..., label: _Optional[str] = ..., uri: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., vector: _Optional[_Union[_vector_pb2.Vector, _Mapping]] = ..., vectors: _Optional[_Mapping[str, _vector_pb2.Vector]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items", "expected_item_count")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    expected_item_count: int
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., expected_item_count: _Optional[int] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("inserted_count", "updated_count", "message_count")
    INSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    inserted_count: int
    updated_count: int
    message_count: int
    def __init__(self, inserted_count: _Optional[int] = ..., updated_count: _Optional[int] = ..., message_count: _Optional[int] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("labels", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchParams(_message.Message):
    __slots__ = ("ef_search", "exact", "candidates")
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ef_search: int
    exact: bool
    candidates: int
    def __init__(self, ef_search: _Optional[int] = ..., exact: _Optional[bool] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "vector", "id", "top_k", "filter", "params", "min_distance", "max_distance", "vector_name")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MIN_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vector: _vector_pb2.Vector
    id: int
    top_k: int
    filter: Filter
    params: SearchParams
    min_distance: float
    max_distance: float
    vector_name: str
    def __init__(self, collection: _Optional[str] = ..., vector: _Optional[_Union[_vector_pb2.Vector, _Mapping]] = ..., id: _Optional[int] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., min_distance: _Optional[float] = ..., max_distance: _Optional[float] = ..., vector_name: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "label", "uri", "attributes", "distance")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    label: str
    uri: str
    attributes: _containers.ScalarMap[str, str]
    distance: float
    def __init__(self, id: _Optional[int] = ..., label: _Optional[str] = ..., uri: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., distance: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "exact")
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    exact: bool
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., exact: _Optional[bool] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("searches",)
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, searches: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: SearchResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[SearchResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchBatchResult, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items", "missing_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("collection", "vector_name")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vector_name: str
    def __init__(self, collection: _Optional[str] = ..., vector_name: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("row_count", "index_present", "index_params", "table_bytes", "index_bytes", "pgvector_version", "postgres_version", "index", "live_recall", "settings", "fresh_rows", "fresh_cells", "fresh_cells_searched")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRESENT_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    PGVECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    POSTGRES_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LIVE_RECALL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FRESH_ROWS_FIELD_NUMBER: _ClassVar[int]
    FRESH_CELLS_FIELD_NUMBER: _ClassVar[int]
    FRESH_CELLS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    index_present: bool
    index_params: IndexParams
    table_bytes: int
    index_bytes: int
    pgvector_version: str
    postgres_version: str
    index: IndexState
    live_recall: float
    settings: _containers.ScalarMap[str, str]
    fresh_rows: int
    fresh_cells: int
    fresh_cells_searched: int
    def __init__(self, row_count: _Optional[int] = ..., index_present: _Optional[bool] = ..., index_params: _Optional[_Union[IndexParams, _Mapping]] = ..., table_bytes: _Optional[int] = ..., index_bytes: _Optional[int] = ..., pgvector_version: _Optional[str] = ..., postgres_version: _Optional[str] = ..., index: _Optional[_Union[IndexState, _Mapping]] = ..., live_recall: _Optional[float] = ..., settings: _Optional[_Mapping[str, str]] = ..., fresh_rows: _Optional[int] = ..., fresh_cells: _Optional[int] = ..., fresh_cells_searched: _Optional[int] = ...) -> None: ...

class FindDuplicatesRequest(_message.Message):
    __slots__ = ("collection", "max_distance", "filter", "limit", "exact", "vector_name")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    collection: str
    max_distance: float
    filter: Filter
    limit: int
    exact: bool
    vector_name: str
    def __init__(self, collection: _Optional[str] = ..., max_distance: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., exact: _Optional[bool] = ..., vector_name: _Optional[str] = ...) -> None: ...

class DuplicatesProgress(_message.Message):
    __slots__ = ("scanned_items", "total_items")
    SCANNED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    scanned_items: int
    total_items: int
    def __init__(self, scanned_items: _Optional[int] = ..., total_items: _Optional[int] = ...) -> None: ...

class DuplicateMember(_message.Message):
    __slots__ = ("id", "label", "uri", "distance")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    label: str
    uri: str
    distance: float
    def __init__(self, id: _Optional[int] = ..., label: _Optional[str] = ..., uri: _Optional[str] = ..., distance: _Optional[float] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[DuplicateMember]
    def __init__(self, members: _Optional[_Iterable[_Union[DuplicateMember, _Mapping]]] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("progress", "group")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    progress: DuplicatesProgress
    group: DuplicateGroup
    def __init__(self, progress: _Optional[_Union[DuplicatesProgress, _Mapping]] = ..., group: _Optional[_Union[DuplicateGroup, _Mapping]] = ...) -> None: ...
