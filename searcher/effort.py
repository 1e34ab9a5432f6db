"""Calibrating a collection's search effort on held-out queries: the cheapest effort on its
kind's ladder (ef_search, and candidates for BINARY) whose recall@10 meets the target with few
queries lost; for graphs by cell, also how many of its nearest cells' graphs a search walks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from searcher.catalogue import Collection
from searcher.cells import MIN_WALKS
from searcher.kinds import EFFORT_LADDER, spec
from searcher.recall import RecallSample, Search, sample_recall

logger = logging.getLogger(__name__)

# Per-query recall below which a sampled search counts as lost, and the share of the sample
# that may be lost at the effort chosen (see calibrate).
LOST_QUERY_RECALL = 0.5
LOST_QUERIES_ALLOWED = 0.01
# Most graphs by cell a search walks, where the sample does not say which graphs hold its
# neighbours: each one walked costs a whole search of a graph.
MAX_GRAPH_WALKS = 4
# An effort this high (four times pgvector's default ef_search) says more of the graph than of
# the data: 100k clustered rows as one graph, m=16, met recall@10 0.99 at ef_search 160-800
# (Search p50 2.5-5.5 ms; at 200, 4.1 where its repairs took 3.1-3.4), their repairs at m=24
# at 40-80 (2.2-3.0 ms; bench/RESULTS.md, stops 40, 41 and 45). Below it, two builds of the
# same rows could land a whole graph apart: one kept at 200, the other repaired to 40.
COSTLY_EF_SEARCH = 160

Searcher = Callable[[Collection], Search]


@dataclass(frozen=True)
class Calibration:
    collection: Collection  # with the chosen ef_search and candidates (and graph walks)
    recall: float  # at the chosen effort
    met: bool  # whether the chosen effort meets the target (else it is the most thorough)
    at_default: float  # at the kind's default effort

    @property
    def at_most(self) -> bool:
        """Whether the chosen effort is the ladder's most thorough (met there, if at all, with
        nothing to spare)."""
        return at_most_effort(self.collection)

    @property
    def costly(self) -> bool:
        """Whether its graph is walked at a costly effort (BINARY walks as many candidates as
        its codes need re-ranked: a larger graph would not make them fewer)."""
        walks_candidates = spec(self.collection.kind).ef_search_is_candidates
        return not walks_candidates and self.collection.ef_search >= COSTLY_EF_SEARCH


def at_most_effort(collection: Collection) -> bool:
    """Whether the collection searches at its ladder's most thorough effort."""
    return collection.ef_search >= EFFORT_LADDER[-1]


def at_cheapest_effort(collection: Collection) -> Collection:
    """The collection searching at its kind's ladder's cheapest effort."""
    ef_search, candidates = spec(collection.kind).effort_ladder(collection.candidates)[0]
    return replace(collection, ef_search=ef_search, candidates=candidates)


def calibrate(
    collection: Collection,
    sample: RecallSample,
    searcher_for: Searcher,
    *,
    target: float,
    default_ef_search: int,
    below: int | None = None,
    cheapest: tuple[float, bool] | None = None,
) -> Calibration:
    """The cheapest effort on the kind's ladder (its steps below ef_search `below`, if given)
    whose recall meets the target, else the most thorough; and the recall at the kind's default
    effort (or the most thorough, if that is lower).

    Recall grows with the effort, so the ladder is searched from its cheap end: the cheapest
    step, then the default, then the most thorough, bisecting between the last that missed and
    the first that met. Each measurement costs what its effort costs, and a collection that
    meets the target cheaply (graphs by cell at a million rows: at the cheapest step) is then
    never searched at the most thorough. `cheapest`: (recall, met) at the ladder's cheapest
    step, where the sample was searched there already."""
    kind = spec(collection.kind)
    ladder = kind.effort_ladder(collection.candidates)
    if below is not None:
        ladder = [effort for effort in ladder if effort[0] < below] or ladder[:1]
    default_step = ladder_step(ladder, kind.default_effort(default_ef_search))
    highest = len(ladder) - 1
    measured: dict[int, tuple[float, bool]] = {} if cheapest is None else {0: cheapest}

    def measure(step: int) -> tuple[float, bool]:
        """(recall, whether it meets the target) at ladder[step]."""
        if step not in measured:
            ef_search, candidates = ladder[step]
            recalls = sample.recalls(
                searcher_for(replace(collection, ef_search=ef_search, candidates=candidates))
            )
            recall, lost = sample_recall(recalls), lost_share(recalls)
            logger.debug(
                "%s: ef_search %d, candidates %d: recall@10 %.4f, %.1f%% lost",
                *(collection.name, ef_search, candidates, recall, 100 * lost),
            )
            measured[step] = recall, meets_target(recalls, target)
        return measured[step]

    chosen = cheapest_meeting(lambda step: measure(step)[1], default_step, highest)
    ef_search, candidates = ladder[chosen]
    # Met below the default: the default, searching harder, does at least as well.
    at_default = measured.get(default_step, measure(chosen))[0]
    return Calibration(
        replace(collection, ef_search=ef_search, candidates=candidates),
        *measure(chosen),
        at_default=at_default,
    )


def ladder_step(ladder: list[tuple[int, int]], effort: tuple[int, int]) -> int:
    """The first step of `ladder` at least `effort`, else its most thorough."""
    return next((step for step, at in enumerate(ladder) if at >= effort), len(ladder) - 1)


def lost_share(recalls: np.ndarray) -> float:
    """The share of a sample's queries lost: stuck in another part of the graph, they found
    under half of their neighbours."""
    return float(np.mean(recalls < LOST_QUERY_RECALL))


def meets_target(recalls: np.ndarray, target: float) -> bool:
    """Whether an effort whose queries got `recalls` meets the target: the sample's recall at
    least the target, and at most 1 query in 100 lost, however good the mean."""
    return sample_recall(recalls) >= target and lost_share(recalls) <= LOST_QUERIES_ALLOWED


def calibrate_effort(
    collection: Collection,
    sample: RecallSample,
    searcher_for: Searcher,
    *,
    target: float,
    default_ef_search: int,
    cheapest: tuple[float, bool] | None = None,
) -> Calibration:
    """The collection's effort (calibrate); for graphs by cell, calibrated first at the walks
    its sample's neighbours ask for (starting_walks), then at more or fewer walks where those
    cost less (calibrate_walks): neighbours in graphs the walks miss are found by no higher
    effort, only by more walks, and fewer walks may meet the target too. `cheapest`: (recall,
    met) at the ladder's cheapest step on those first walks, where already measured."""
    if not collection.graph_cells:
        return calibrate(
            collection, sample, searcher_for, target=target, default_ef_search=default_ef_search
        )
    collection = starting_walks(collection, sample, target)
    calibrated = calibrate(
        collection,
        sample,
        searcher_for,
        target=target,
        default_ef_search=default_ef_search,
        cheapest=cheapest,
    )
    return calibrate_walks(
        collection, calibrated, sample, searcher_for,
        target=target, default_ef_search=default_ef_search,
    )  # fmt: skip


def cheapest_meeting(meets: Callable[[int], bool], default_step: int, highest: int) -> int:
    """The cheapest step of 0..highest that meets (meeting grows with the step), else
    highest: 0, the default and highest tried in turn, then bisection between the last
    that missed and the first that met."""
    missed = -1  # the most thorough step known to miss
    chosen = highest  # the cheapest step known to meet, else the most thorough
    for probe in sorted({0, default_step, highest}):
        if meets(probe):
            chosen = probe
            break
        missed = probe
    while chosen - missed > 1:
        middle = (missed + chosen) // 2
        if meets(middle):
            chosen = middle
        else:
            missed = middle
    return chosen


def starting_walks(
    collection: Collection, sample: RecallSample, target: float, *, quiet: bool = False
) -> Collection:
    """Graphs by cell: `collection` walking, for its calibration, as many graphs as hold its
    sample's true neighbours halfway from the target to all of them (a graph search finds most
    of what its graphs hold, not all), where the sample knows; else the walks it has.

    The cells' fit estimates walks on its own sample of rows, whose neighbours lie farther
    apart than a collection's: at 1M SqueezeNet logits it asked for 26-34 of 80 graphs, where
    the held-out queries' neighbours were 99.5% in their nearest 6 and 5 met the target. The
    calibration at 29 walks and the bisection down to 5 took 150 s (bench/RESULTS.md)."""
    held = sample.walks_holding(target + (1 - target) / 2)
    if not collection.graph_cells or held is None:
        return collection
    walks = min(collection.graph_cells, max(MIN_WALKS, held))
    if quiet:
        return replace(collection, graph_probes=walks)
    logger.info(
        "%s: calibrating from %d of %d graphs by cell walked, which hold %.4f of the held-out "
        "queries' true neighbours (the cells' fit asked for %d)",
        *(collection.name, walks, collection.graph_cells, sample.share_in_walks(walks)),
        collection.graph_probes,
    )
    return replace(collection, graph_probes=walks)


def walk_more(
    collection: Collection,
    calibrated: Calibration,
    sample: RecallSample,
    searcher_for: Searcher,
    *,
    target: float,
    default_ef_search: int,
) -> Calibration:
    """Graphs by cell: a search walks its nearest cells' graphs, each one a whole graph search
    at the effort, so it costs about walks × ef_search. Where walking one graph more could cost
    less than the effort `calibrated` chose (the target met only high on the ladder: recall
    that grows slowly with the effort is lost in the cells not walked), or where no effort met
    the target, one graph more is tried at a time, up to as many as hold all of the sample's
    true neighbours (at least MAX_GRAPH_WALKS): kept when it meets the target for less, or
    (none meeting it) raises the recall.

    Without this, two builds of the same 100k rows calibrated to ef_search 40 and 640 on two
    walks (bench/RESULTS.md): a sample a little below the target at the cheap end climbed the
    ladder instead of walking a third graph."""
    cheapest = at_cheapest_effort(collection).ef_search
    walks = calibrated.collection.graph_probes
    most = max(MAX_GRAPH_WALKS, sample.walks_holding(1.0) or 0)
    while walks < min(collection.graph_cells, most):
        if calibrated.met and search_cost(calibrated) <= (walks + 1) * cheapest:
            break  # no effort on more walks costs less
        walks += 1
        tried = _walking(
            walks, collection, calibrated, sample, searcher_for, target, default_ef_search
        )
        if calibrated.met:
            better = tried.met and search_cost(tried) < search_cost(calibrated)
        else:
            better = tried.met or tried.recall > calibrated.recall
        if not better:
            break
        calibrated = tried
    return calibrated


def calibrate_walks(
    collection: Collection,
    calibrated: Calibration,
    sample: RecallSample,
    searcher_for: Searcher,
    *,
    target: float,
    default_ef_search: int,
) -> Calibration:
    """Graphs by cell: the walks the cells' fit asked for, one more where that costs less
    (walk_more), or fewer where fewer still meet the target (walk_fewer)."""
    walked = walk_more(
        collection, calibrated, sample, searcher_for,
        target=target, default_ef_search=default_ef_search,
    )  # fmt: skip
    if walked.collection.graph_probes > calibrated.collection.graph_probes:
        return walked  # the fit's walks cost more than more walks: fewer would cost more still
    return walk_fewer(
        collection, calibrated, sample, searcher_for,
        target=target, default_ef_search=default_ef_search,
    )  # fmt: skip


def walk_fewer(
    collection: Collection,
    calibrated: Calibration,
    sample: RecallSample,
    searcher_for: Searcher,
    *,
    target: float,
    default_ef_search: int,
) -> Calibration:
    """The fewest walks (at least MIN_WALKS) that still meet the target for less than the
    calibrated search costs, bisected: fewer walks find fewer neighbours. Walks whose graphs
    hold less than the target's share of the sample's true neighbours can not meet it: they
    are not tried.

    Where the sample does not know its neighbours' graphs, calibrated's walks are the fit's:
    at 1M SqueezeNet logits it asked for 19-27 of 80 graphs (Search p50 21 ms), where 5 met
    the target (9.1 ms; bench/RESULTS.md, stop 41)."""
    if not calibrated.met:
        return calibrated
    fewest_meeting = calibrated.collection.graph_probes  # fewest walks known to meet cheaper
    # Most walks known to miss (or to cost no less).
    missed = max(MIN_WALKS, sample.walks_holding(target) or 0) - 1
    while fewest_meeting - missed > 1:
        walks = (missed + fewest_meeting) // 2
        tried = _walking(
            walks, collection, calibrated, sample, searcher_for, target, default_ef_search
        )
        if tried.met and search_cost(tried) < search_cost(calibrated):
            calibrated, fewest_meeting = tried, walks
        else:
            missed = walks
    return calibrated


def _walking(
    walks: int,
    collection: Collection,
    calibrated: Calibration,
    sample: RecallSample,
    searcher_for: Searcher,
    target: float,
    default_ef_search: int,
) -> Calibration:
    """`collection` calibrated walking `walks` graphs; where `calibrated` met the target, only
    at the efforts that would cost less than it (the others are not worth measuring)."""
    tried = calibrate(
        replace(collection, graph_probes=walks),
        sample,
        searcher_for,
        target=target,
        default_ef_search=default_ef_search,
        below=-(-search_cost(calibrated) // walks) if calibrated.met else None,
    )
    logger.info(
        "%s: walking %d graphs by cell: recall@10 %.4f at ef_search %d",
        *(collection.name, walks, tried.recall, tried.collection.ef_search),
    )
    return tried


def search_cost(calibrated: Calibration) -> int:
    """What a search at the calibrated effort costs, in graph-search units: walks × ef_search."""
    chosen = calibrated.collection
    return max(chosen.graph_probes, 1) * chosen.ef_search
