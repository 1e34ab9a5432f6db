from google.rpc import status_pb2 as _status_pb2
from imgsearch.v1 import vector_pb2 as _vector_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]

class WeightsSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_SOURCE_UNSPECIFIED: _ClassVar[WeightsSource]
    WEIGHTS_SOURCE_IMAGENET: _ClassVar[WeightsSource]
    WEIGHTS_SOURCE_CHECKPOINT: _ClassVar[WeightsSource]
    WEIGHTS_SOURCE_RANDOM: _ClassVar[WeightsSource]

class Head(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_UNSPECIFIED: _ClassVar[Head]
    HEAD_LOGITS: _ClassVar[Head]
    HEAD_GEM: _ClassVar[Head]
    HEAD_GEM_SHARED_PASS: _ClassVar[Head]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BULK: Priority
WEIGHTS_SOURCE_UNSPECIFIED: WeightsSource
WEIGHTS_SOURCE_IMAGENET: WeightsSource
WEIGHTS_SOURCE_CHECKPOINT: WeightsSource
WEIGHTS_SOURCE_RANDOM: WeightsSource
HEAD_UNSPECIFIED: Head
HEAD_LOGITS: Head
HEAD_GEM: Head
HEAD_GEM_SHARED_PASS: Head

class Image(_message.Message):
    __slots__ = ("key", "data")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class EmbedResult(_message.Message):
    __slots__ = ("key", "vector", "error", "vectors")
    class VectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _vector_pb2.Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_vector_pb2.Vector, _Mapping]] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    key: str
    vector: _vector_pb2.Vector
    error: _status_pb2.Status
    vectors: _containers.MessageMap[str, _vector_pb2.Vector]
    def __init__(self, key: _Optional[str] = ..., vector: _Optional[_Union[_vector_pb2.Vector, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., vectors: _Optional[_Mapping[str, _vector_pb2.Vector]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("images", "priority", "heads")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    priority: Priority
    heads: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., priority: _Optional[_Union[Priority, str]] = ..., heads: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbedResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EmbedResult, _Mapping]]] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("images", "priority", "heads")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    priority: Priority
    heads: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., priority: _Optional[_Union[Priority, str]] = ..., heads: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbedResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EmbedResult, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("name", "head", "dim", "fingerprint", "preprocessing", "duplicate_distance", "duplicate_cosine_distance", "duplicate_calibration")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COSINE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    head: Head
    dim: int
    fingerprint: str
    preprocessing: str
    duplicate_distance: float
    duplicate_cosine_distance: float
    duplicate_calibration: str
    def __init__(self, name: _Optional[str] = ..., head: _Optional[_Union[Head, str]] = ..., dim: _Optional[int] = ..., fingerprint: _Optional[str] = ..., preprocessing: _Optional[str] = ..., duplicate_distance: _Optional[float] = ..., duplicate_cosine_distance: _Optional[float] = ..., duplicate_calibration: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "weights_source", "weights", "head", "dim", "preprocessing", "device", "runtime", "fingerprint", "max_batch_size", "max_images_per_request", "max_image_bytes", "max_image_pixels", "duplicate_distance", "duplicate_cosine_distance", "duplicate_calibration", "heads")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COSINE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights_source: WeightsSource
    weights: str
    head: Head
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
    heads: _containers.RepeatedCompositeFieldContainer[HeadInfo]
    def __init__(self, model: _Optional[str] = ..., weights_source: _Optional[_Union[WeightsSource, str]] = ..., weights: _Optional[str] = ..., head: _Optional[_Union[Head, str]] = ..., dim: _Optional[int] = ..., preprocessing: _Optional[str] = ..., device: _Optional[str] = ..., runtime: _Optional[str] = ..., fingerprint: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_images_per_request: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., duplicate_distance: _Optional[float] = ..., duplicate_cosine_distance: _Optional[float] = ..., duplicate_calibration: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadInfo, _Mapping]]] = ...) -> None: ...
