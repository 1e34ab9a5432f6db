"""Whether a collection and an embedder fit: vectors of the same model and lengths, for the
collection's own vector and each named one; and the duplicate distance of the head a vector
comes from."""

from __future__ import annotations

from imgsearch.errors import FailedPrecondition, InvalidArgument
from imgsearch.records import CollectionInfo, ModelInfo

# The named vector of copy detection, when a collection has one: what duplicates compare.
COPY_VECTOR = "gem"


def check_fit(collection: CollectionInfo, info: ModelInfo, *, force: bool) -> None:
    """FailedPrecondition unless the embedder makes every vector the collection stores: of the
    same length, and (unless `force`) of the model that filled it."""
    if collection.dim != info.dim:
        raise FailedPrecondition(
            f"collection {collection.name!r} holds {collection.dim}-d vectors; the embedder "
            f"({info.model}, head {info.head}) makes {info.dim}-d ones"
        )
    fingerprint = collection.model_fingerprint
    if fingerprint and fingerprint != info.fingerprint and not force:
        raise FailedPrecondition(
            f"collection {collection.name!r} was filled by model {fingerprint}; the embedder "
            f"serves {info.fingerprint} ({info.model}, {info.weights}). Vectors of "
            "different models cannot be compared; use another collection, or --force"
        )
    for vector in collection.vectors:
        head = info.head_named(vector.name)
        if head is None or head.dim != vector.dim:
            raise FailedPrecondition(
                f"collection {collection.name!r} stores a {vector.dim}-d vector {vector.name!r} "
                "with each item; the embedder serves "
                f"{', '.join(f'{h.name} ({h.dim}-d)' for h in info.heads)}: start it with that "
                f"head too (--head {info.head},{vector.name})"
            )
        if vector.model_fingerprint not in ("", head.fingerprint) and not force:
            raise FailedPrecondition(
                f"collection {collection.name!r}'s vector {vector.name!r} was made by model "
                f"{vector.model_fingerprint}; the embedder's head {head.name} is "
                f"{head.fingerprint}: use another collection, or --force"
            )


def check_vector_name(collection: CollectionInfo, vector: str) -> None:
    """InvalidArgument unless `vector` is "" (the collection's own) or one of its named ones:
    said before any image is embedded for it."""
    if vector and collection.vector_named(vector) is None:
        has = ", ".join(v.name for v in collection.vectors) or "none"
        raise InvalidArgument(
            f"collection {collection.name!r} has no vector named {vector!r}; its named vectors: "
            f"{has} (leave the name empty for its own vector)"
        )


def copy_vector(collection: CollectionInfo) -> str:
    """The vector to find duplicates by: the named one of copy detection when the collection
    has it, else its own ("")."""
    return COPY_VECTOR if collection.vector_named(COPY_VECTOR) else ""


def duplicate_distance(collection: CollectionInfo, info: ModelInfo, vector: str) -> float:
    """The embedder's measured duplicate distance for the head that makes the collection's
    `vector` ("": its own, the embedder's first head), under that vector's metric."""
    named = collection.vector_named(vector) if vector else None
    metric = named.metric if named else collection.metric
    head = info.head_named(vector) if vector else (info.heads[0] if info.heads else None)
    if head is None:
        raise InvalidArgument(
            f"the embedder serves no head {vector!r} to suggest a duplicate distance for; "
            "give --max-distance"
        )
    suggestion = {"l2": head.duplicate_distance, "cosine": head.duplicate_cosine_distance}.get(
        metric, 0.0
    )
    if suggestion <= 0:
        raise InvalidArgument(
            "the embedder suggests no duplicate distance for this collection's metric "
            f"({metric}); give --max-distance"
        )
    return float(suggestion)
