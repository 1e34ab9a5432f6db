"""Named vectors: further vectors every item of a collection carries beside its own, for example
the GeM vector of copy detection beside the tutorial's logits, both from one embedder pass.

Each named vector lives in a table of its own that the catalogue records as a collection tied
to its parent (`parent`, `vector_name`; searcher.catalogue.named_vector_table names it): the same
columns (id, label, uri, attributes, embedding, segment, cell), its own index kind, build
generations, fresh rows and folds, recall upkeep and calibrated effort, all unchanged. So a
search of the named vector is a search of that table, filters included, and what the upkeep
does for a collection it does for each vector. What ties them: an Upsert message writes the
item's row into every table in one transaction, a delete removes it from every table in one,
and dropping the collection drops them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from imgsearch.errors import InvalidArgument
from searcher.catalogue import Collection, IndexKind, Metric, check_vector_name
from searcher.pgvector_io import Item

# Named vectors a collection may declare: each costs a table, an index and its upkeep.
MAX_NAMED_VECTORS = 4


@dataclass(frozen=True)
class VectorSpec:
    """A named vector a collection is created with (zero values: the server's defaults)."""

    name: str
    dim: int
    metric: Metric = Metric.L2
    kind: IndexKind | None = None
    m: int = 0
    ef_construction: int = 0
    model_fingerprint: str = ""


def check_specs(specs: Sequence[VectorSpec]) -> None:
    """The named vectors of a collection about to be created: names valid and distinct."""
    if len(specs) > MAX_NAMED_VECTORS:
        raise InvalidArgument(
            f"{len(specs)} named vectors; a collection may have at most {MAX_NAMED_VECTORS}"
        )
    seen: set[str] = set()
    for spec in specs:
        check_vector_name(spec.name)
        if spec.name in seen:
            raise InvalidArgument(f"vector name {spec.name!r} appears twice")
        seen.add(spec.name)


def split_items(
    collection: Collection, tables: Sequence[Collection], items: Sequence[Item]
) -> list[tuple[Collection, list[Item]]]:
    """Each named vector's table with its rows of `items` (the item with that vector in place
    of its own); every item must carry every named vector of the collection, and no other."""
    names = {table.vector_name for table in tables}
    for index, item in enumerate(items):
        given = set(item.vectors)
        if given != names:
            where = f"item {index} (id {item.id})"
            missing, unknown = sorted(names - given), sorted(given - names)
            has = ", ".join(sorted(names)) or "none"
            problem = f"has no vector {missing[0]!r}" if missing else f"has vector {unknown[0]!r}"
            raise InvalidArgument(
                f"{where} {problem}: collection {collection.name!r} has the named vectors "
                f"{has}, and each item must carry every one of them"
            )
    return [
        (
            table,
            [replace(item, vector=item.vectors[table.vector_name], vectors={}) for item in items],
        )
        for table in tables
    ]
