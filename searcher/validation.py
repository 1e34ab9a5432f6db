"""Every rule a request to the searcher must meet, in one place: the limits (`Limits`), and one
check per thing a request carries (collection settings, items and their vectors and texts,
filters, id lists, top_k, search effort). Each failure names the value, the rule and the limit's
setting; nothing here touches the database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.errors import InvalidArgument, ResourceExhausted
from imgsearch.names import check_collection_name

if TYPE_CHECKING:
    from searcher.catalogue import Collection
    from searcher.pgvector_io import Item

MAX_ID = 2**63 - 1
HALF_MAX = 65504.0  # the largest finite half-precision value
MAX_DIM = 16000  # pgvector's limit for a stored vector
MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search
MAX_CANDIDATES = MAX_EF_SEARCH  # one index scan returns at most ef_search rows
M_RANGE = (2, 100)  # pgvector's limits for an HNSW index's m
MAX_EF_CONSTRUCTION = 1000  # and for its ef_construction (at least 2 * m)
MAX_FINGERPRINT_BYTES = 256


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for or carry."""

    max_top_k: int = 1000
    max_items_per_message: int = 1000
    max_ids_per_request: int = 1000
    max_text_bytes: int = 1024  # label, uri, attribute value
    max_attribute_key_bytes: int = 128
    max_attributes: int = 64
    max_filter_labels: int = 1000


# -- collections ------------------------------------------------------------------------------


def check_new_collection(
    name: str, dim: int, m: int, ef_construction: int, fingerprint: str
) -> None:
    """The settings of a collection about to be created."""
    check_collection_name(name)
    if not 1 <= dim <= MAX_DIM:
        raise InvalidArgument(f"dim must be between 1 and {MAX_DIM}, got {dim}")
    low, high = M_RANGE
    if not low <= m <= high:
        raise InvalidArgument(f"index m must be between {low} and {high}, got {m}")
    if not 2 * m <= ef_construction <= MAX_EF_CONSTRUCTION:
        raise InvalidArgument(
            f"index ef_construction must be between 2*m ({2 * m}) and {MAX_EF_CONSTRUCTION}, "
            f"got {ef_construction}"
        )
    if len(fingerprint.encode()) > MAX_FINGERPRINT_BYTES or "\x00" in fingerprint:
        raise InvalidArgument(
            f"model_fingerprint must be at most {MAX_FINGERPRINT_BYTES} bytes of text"
        )


# -- items --------------------------------------------------------------------------------------


def check_items(collection: Collection, items: Sequence[Item], limits: Limits) -> None:
    """One Upsert message's items: their count, ids, vectors, texts and attributes."""
    if len(items) > limits.max_items_per_message:
        raise ResourceExhausted(
            f"{len(items)} items in one message; the limit is {limits.max_items_per_message} "
            "(max_items_per_message)"
        )
    seen: set[int] = set()
    for index, item in enumerate(items):
        where = f"item {index} (id {item.id})"
        if not 0 <= item.id <= MAX_ID:
            raise InvalidArgument(f"{where}: id must be between 0 and 2^63-1")
        if item.id in seen:
            raise InvalidArgument(f"{where}: id appears twice in one message")
        seen.add(item.id)
        check_vector(item.vector, collection, where)
        check_text(item.label, "label", limits.max_text_bytes, where)
        check_text(item.uri, "uri", limits.max_text_bytes, where)
        check_attributes(item.attributes, limits, where)


def check_vector(vector: np.ndarray, collection: Collection, where: str) -> None:
    """A vector to store or to search with: the collection's length, finite, and (for a
    HALFVEC index) within half precision."""
    if vector.ndim != 1 or vector.shape[0] != collection.dim:
        raise InvalidArgument(
            f"{where}: vector has {vector.size} values; {collection.described} has "
            f"dim {collection.dim}"
        )
    if not np.isfinite(vector).all():
        raise InvalidArgument(f"{where}: vector contains NaN or infinity")
    if collection.half_precision_index and np.abs(vector).max(initial=0.0) > HALF_MAX:
        raise InvalidArgument(
            f"{where}: vector has a value beyond ±{HALF_MAX:g}, which half precision cannot "
            f"hold; {collection.described} has a HALFVEC index (use VECTOR or BINARY "
            "for such vectors)"
        )


def check_text(
    value: str, what: str, max_bytes: int, where: str, limit_name: str = "max_text_bytes"
) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{where}: {what} is {size} bytes; the limit is {max_bytes} ({limit_name})"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{where}: {what} contains a NUL character")


def check_attributes(attributes: Mapping[str, str], limits: Limits, where: str) -> None:
    if len(attributes) > limits.max_attributes:
        raise InvalidArgument(
            f"{where}: {len(attributes)} attributes; the limit is {limits.max_attributes} "
            "(max_attributes)"
        )
    for key, value in attributes.items():
        check_text(
            key, "attribute key", limits.max_attribute_key_bytes, where, "max_attribute_key_bytes"
        )
        check_text(value, f"attribute {key[:40]!r}", limits.max_text_bytes, where)


# -- reading ------------------------------------------------------------------------------------


def check_filter(labels: Sequence[str], attributes: Mapping[str, str], limits: Limits) -> None:
    """A filter's labels (any of them) and attributes (all of them)."""
    if len(labels) > limits.max_filter_labels:
        raise ResourceExhausted(
            f"{len(labels)} labels in a filter; the limit is {limits.max_filter_labels} "
            "(max_filter_labels)"
        )
    for label in labels:
        check_text(label, "filter label", limits.max_text_bytes, "filter")
    check_attributes(attributes, limits, "filter")


def check_id_count(ids: Sequence[int], limits: Limits) -> None:
    if len(ids) > limits.max_ids_per_request:
        raise ResourceExhausted(
            f"{len(ids)} ids in one request; the limit is {limits.max_ids_per_request} "
            "(max_ids_per_request)"
        )


def check_page_size(page_size: int, limits: Limits) -> None:
    if not 1 <= page_size <= limits.max_ids_per_request:
        raise InvalidArgument(
            f"page_size must be between 1 and {limits.max_ids_per_request}, got {page_size}"
        )


def check_top_k(top_k: int, limits: Limits) -> None:
    if not 1 <= top_k <= limits.max_top_k:
        raise InvalidArgument(
            f"top_k must be between 1 and {limits.max_top_k} (max_top_k), got {top_k}"
        )


def check_effort(ef_search: int, candidates: int) -> None:
    if not 0 <= ef_search <= MAX_EF_SEARCH:
        raise InvalidArgument(f"ef_search must be between 0 and {MAX_EF_SEARCH}, got {ef_search}")
    if not 0 <= candidates <= MAX_CANDIDATES:
        raise InvalidArgument(
            f"candidates must be between 0 and {MAX_CANDIDATES}, got {candidates}"
        )
