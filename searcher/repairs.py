"""Repairing a poor build: its index built once more with larger m and ef_construction, and
calibrated again (searcher.maintenance decides when, after each build's check).

Graphs by cell are built apart, and one can come out poor among good ones: where the held-out
sample places the loss in a few of them (searcher.weak_graphs), those are rebuilt alone, in
place, and calibrated on the same sample; the whole index is rebuilt, as a new generation
calibrated on a sample of its own, where no few graphs hold the loss, for one graph, or if
rebuilding the few did not reach the target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from searcher.catalogue import Collection
from searcher.effort import (
    Calibration,
    Searcher,
    at_cheapest_effort,
    meets_target,
    starting_walks,
)
from searcher.indexes import IndexBuilder
from searcher.recall import RecallSample, sample_recall
from searcher.weak_graphs import graph_losses, losing_graphs, weak_graphs

logger = logging.getLogger(__name__)

DEFAULT_M = 16
# pgvector's default of 64 left recall@10 near 0.94 on clustered 1000-d data whatever the
# ef_search (parts of the graph unreachable). 128 usually reached 0.99+, but 1 build in 12 stayed
# at 0.969 at any ef_search; 200 gave 0.999 in all 22, for ~55% more build time
# (bench/hnsw_builds.py, bench/RESULTS.md).
DEFAULT_EF_CONSTRUCTION = 200

# A repair doubles m. At 1.5x (m=24), 15 repairs of the same 100k clustered rows calibrated
# anywhere from ef_search 40 to 100, as the graphs came out; at m=32 three of three met the
# target at 40 (Search p50 within 1.01x; the rebuild ~1.3x longer: bench/RESULTS.md, stop 47).
REPAIR_M_GROWTH = 2
MAX_M = 100
MAX_EF_CONSTRUCTION = 1000


@dataclass(frozen=True)
class FirstLook:
    """What Repairs.first_look left: the collection (its poor graphs rebuilt, if `repaired`),
    and (recall, met) at the ladder's cheapest step where that still holds (None: measure)."""

    collection: Collection
    cheapest: tuple[float, bool] | None = None
    repaired: bool = False


class Repairs:
    def __init__(
        self,
        builder: IndexBuilder,
        searcher_for: Searcher,
        *,
        calibrate: Callable[[Collection, RecallSample], Calibration],
        draw: Callable[[Collection], RecallSample | None],
        recall_floor: float,
        recall_target: float,
    ) -> None:
        self.builder = builder
        self.searcher_for = searcher_for
        # The upkeep's calibration, and its draw of a new build's held-out sample.
        self.calibrate = calibrate
        self.draw = draw
        self.recall_floor = recall_floor
        self.recall_target = recall_target

    def wanted(self, collection: Collection, calibrated: Calibration) -> bool:
        """Whether the build `calibrated` measured is repaired: poor, or a first graph (of the
        default m) walked at a costly effort."""
        costly = calibrated.costly and collection.m <= DEFAULT_M
        return self.poor(calibrated) or costly

    def dearer(self, calibrated: Calibration) -> bool:
        """Whether graphs by cell met the target only above the ladder's cheapest effort: a few
        poor graphs among good ones can cost every search that (at 1M rows one graph of 80
        built poor raised it from ef_search 40 to 64, bench/RESULTS.md, stop 48). Those graphs,
        if a few hold the loss at the cheapest effort, are rebuilt (repair, whole=False)."""
        chosen = calibrated.collection
        above_cheapest = chosen.ef_search > at_cheapest_effort(chosen).ef_search
        return bool(chosen.graph_cells) and calibrated.met and above_cheapest

    def first_look(
        self, collection: Collection, sample: RecallSample, notes: list[str]
    ) -> FirstLook:
        """Graphs by cell just built: the sample searched once at the ladder's cheapest effort,
        on the walks the calibration starts from. Where that misses the target and a few graphs
        hold the loss, those graphs are rebuilt (noted in `notes`) before the calibration
        climbs the ladder: at 1M rows, with one poor graph of 80, it climbed for 100 s before
        the same graph was found at the cheapest step and rebuilt (bench/RESULTS.md, stop 50).
        Otherwise that one search is the calibration's first step."""
        walked = starting_walks(collection, sample, self.recall_target, quiet=True)
        searched = at_cheapest_effort(walked)
        losses = graph_losses(searched, sample, self.searcher_for(searched))
        if losses is None:
            return FirstLook(collection)
        recall = sample_recall(losses.recalls)
        met = meets_target(losses.recalls, self.recall_target)
        graphs = None if met else losing_graphs(searched, sample, losses, aim=self.recall_target)
        if not graphs:
            return FirstLook(collection, cheapest=(recall, met))
        m, ef_construction = _repair_parameters(collection)
        was = (
            f"recall@10 was {recall:.3f} at the cheapest effort (ef_search {searched.ef_search}, "
            f"{searched.graph_probes} graphs walked) at m={collection.m}, ef_construction="
            f"{collection.ef_construction} (target {self.recall_target:g})"
        )
        rebuilt = self._rebuild_graphs(collection, graphs, notes, m, ef_construction, was)
        return FirstLook(rebuilt or collection, repaired=rebuilt is not None)

    def repair(
        self,
        collection: Collection,
        calibrated: Calibration,
        sample: RecallSample,
        notes: list[str],
        *,
        whole: bool = True,
        few: bool = True,
    ) -> tuple[Calibration, RecallSample]:
        """Build the index of `collection` once more with larger m and ef_construction (noted in
        `notes`), as `calibrated` found it poor, and calibrate it again: graphs by cell whose
        loss lies in a few of their graphs, those graphs alone, in place, on the same sample;
        else (or if that did not meet the target) the whole index as a new generation,
        calibrated on a sample of its own (its graph holds the rows the first build held
        out). With `whole` False, only the few graphs, if any; with `few` False (the first
        look rebuilt its few already, and the build is still poor), only the whole index."""
        m, ef_construction = _repair_parameters(collection)
        was = self._was(collection, calibrated)
        graphs = self._weak_graphs(calibrated, sample) if few else None
        if graphs:
            repaired = self._repair_graphs(
                calibrated.collection, graphs, sample, notes, m, ef_construction, was
            )
            if repaired is not None and (not self.poor(repaired) or not whole):
                return repaired, sample
            if repaired is not None:
                was = f"recall@10 was {repaired.recall:.3f} after that"
        if not whole:
            return calibrated, sample
        repair = f"rebuilt with m={m}, ef_construction={ef_construction}: {was}"
        logger.warning("%s: %s", collection.name, repair)
        notes.append(repair)
        rebuilt = self.builder.build(
            collection,
            concurrently=True,
            m=m,
            ef_construction=ef_construction,
            note="; ".join(notes),
        )
        sample = self.draw(rebuilt) or sample
        calibrated = self.calibrate(rebuilt, sample)
        if calibrated.recall < self.recall_floor:
            logger.warning(
                "recall@10 of %s stays at %.3f at the most search effort: its vectors may "
                "suit another index kind",
                *(collection.name, calibrated.recall),
            )
        return calibrated, sample

    def _was(self, collection: Collection, calibrated: Calibration) -> str:
        """What a repair's note says of the build it repairs."""
        if calibrated.at_default < self.recall_floor:
            was = f"recall@10 was {calibrated.at_default:.3f}"
        elif calibrated.at_most:
            was = f"recall@10 was {calibrated.recall:.3f} at the most search effort"
        else:
            ef_search = calibrated.collection.ef_search
            was = f"recall@10 {calibrated.recall:.3f} took ef_search {ef_search}"
        return (
            f"{was} at m={collection.m}, ef_construction={collection.ef_construction} (floor "
            f"{self.recall_floor:g}, target {self.recall_target:g})"
        )

    def poor(self, calibrated: Calibration) -> bool:
        """Whether a calibration asks for a repair: poor at the default effort, or the target
        met only at the most effort or not at all."""
        at_most = calibrated.at_most or not calibrated.met
        return calibrated.at_default < self.recall_floor or at_most

    def _weak_graphs(self, calibrated: Calibration, sample: RecallSample) -> list[int] | None:
        """The graphs by cell that hold the calibrated collection's loss, where a few do
        (searcher.weak_graphs): where no effort met the target, at the effort chosen, enough
        to bring the sample halfway from the target to all; else at the ladder's cheapest
        effort (where the chosen one was poor, costly, or dearer), enough to meet the target
        there."""
        searched = calibrated.collection
        if not searched.graph_cells:
            return None
        aim = self.recall_target + (1 - self.recall_target) / 2
        if calibrated.met:
            searched = at_cheapest_effort(searched)
            aim = self.recall_target
        return weak_graphs(searched, sample, self.searcher_for(searched), aim=aim)

    def _repair_graphs(
        self,
        collection: Collection,
        graphs: list[int],
        sample: RecallSample,
        notes: list[str],
        m: int,
        ef_construction: int,
        was: str,
    ) -> Calibration | None:
        """Rebuild the graphs `graphs` of the collection's graphs by cell with `m` and
        `ef_construction` (noted in `notes`), and calibrate the collection again on `sample`:
        none of its queries is in those graphs, and its neighbours stay where they were. None
        when a build replaced the graphs meanwhile."""
        repaired = self._rebuild_graphs(collection, graphs, notes, m, ef_construction, was)
        return None if repaired is None else self.calibrate(repaired, sample)

    def _rebuild_graphs(
        self,
        collection: Collection,
        graphs: list[int],
        notes: list[str],
        m: int,
        ef_construction: int,
        was: str,
    ) -> Collection | None:
        """_repair_graphs, less the calibration: the collection as recorded after it."""
        repair = (
            f"{len(graphs)} of {collection.graph_cells} graphs by cell ("
            f"{', '.join(map(str, graphs))}), where the held-out queries lost their neighbours, "
            f"rebuilt with m={m}, ef_construction={ef_construction}: {was}"
        )
        logger.warning("%s: %s", collection.name, repair)
        repaired = self.builder.rebuild_graphs(
            collection,
            graphs,
            m=m,
            ef_construction=ef_construction,
            note="; ".join([*notes, repair]),
        )
        if repaired is not None:
            notes.append(repair)
        return repaired


def _repair_parameters(collection: Collection) -> tuple[int, int]:
    """The m and ef_construction a repair of the collection's index builds with."""
    m = min(MAX_M, max(DEFAULT_M, REPAIR_M_GROWTH * collection.m))
    ef_construction = min(
        MAX_EF_CONSTRUCTION,
        max(DEFAULT_EF_CONSTRUCTION, 2 * collection.ef_construction, 2 * m),
    )
    return m, ef_construction
