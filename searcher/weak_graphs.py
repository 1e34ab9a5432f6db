"""Which of a collection's graphs by cell lose the neighbours a poor build misses: a repair
rebuilds those alone.

Graphs by cell are built apart, and one can come out poor while the rest are fine. At 1M rows
as 80 graphs one build in ten met the target at no effort (recall@10 0.989 at ef_search 1000
walking 2 graphs, 0.9894 walking 3: lost inside the graphs walked, not between them), and its
repair rebuilt all 80, CONCURRENTLY one after another: about 20 minutes (bench/RESULTS.md,
stop 47), where one graph takes ~10 s. The held-out sample knows the graph of each of its
true neighbours: a neighbour that a search walking its graph did not find is that graph's loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from searcher.catalogue import Collection
from searcher.recall import RecallSample, Search, sample_recall

logger = logging.getLogger(__name__)

# More of the graphs than this share losing what the target needs: the build as a whole is
# poor, and is rebuilt whole (with m raised for every graph, and every later build).
MOST_WEAK_SHARE = 0.5


@dataclass(frozen=True)
class GraphLosses:
    """One pass of a sample's searches over graphs by cell: each query's recall@10, and how
    many true neighbours each graph held that a search walking it did not find."""

    recalls: np.ndarray
    missed: np.ndarray


def graph_losses(
    collection: Collection, sample: RecallSample, search: Search
) -> GraphLosses | None:
    """The sample searched once by `search` (which walks the collection's graph_probes nearest
    graphs); None where the collection has no graphs by cell or the sample does not know its
    neighbours' graphs."""
    if not collection.graph_cells or sample.neighbour_graphs is None:
        return None
    walks, graphs = collection.graph_probes, collection.graph_cells
    return GraphLosses(*sample.losses_by_graph(search, walks, graphs))


def weak_graphs(
    collection: Collection, sample: RecallSample, search: Search, *, aim: float
) -> list[int] | None:
    """The fewest graphs of `collection` whose losses under `search` (which walks the
    collection's graph_probes nearest graphs), were they found, would bring the sample's
    recall to `aim`, those that lose most first; None when no few graphs do (the loss lies
    between graphs, or in most of them) or the sample does not know its neighbours' graphs."""
    losses = graph_losses(collection, sample, search)
    return None if losses is None else losing_graphs(collection, sample, losses, aim=aim)


def losing_graphs(
    collection: Collection, sample: RecallSample, losses: GraphLosses, *, aim: float
) -> list[int] | None:
    """weak_graphs, of a pass already made."""
    assert sample.neighbour_graphs is not None
    recall, missed = sample_recall(losses.recalls), losses.missed
    counted = int((sample.neighbour_graphs >= 0).sum())
    wanted = (aim - recall) * counted
    order = np.argsort(-missed, kind="stable")
    chosen: list[int] = []
    regained = 0
    for graph in order:
        if regained >= wanted or not missed[graph]:
            break
        chosen.append(int(graph))
        regained += int(missed[graph])
    few = bool(chosen) and regained >= wanted
    few = few and len(chosen) <= max(1, MOST_WEAK_SHARE * collection.graph_cells)
    logger.info(
        "%s: recall@10 %.4f on %d walks at ef_search %d; %d of the sample's %d true neighbours "
        "lost in the graphs walked, most in graphs %s (%s)",
        *(collection.name, recall, collection.graph_probes, collection.ef_search),
        *(int(missed.sum()), counted),
        ", ".join(f"{g}: {missed[g]}" for g in order[:5]),
        f"rebuilding {len(chosen)}" if few else "not a few",
    )
    return sorted(chosen) if few else None
