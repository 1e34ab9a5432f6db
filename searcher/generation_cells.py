"""The cells a new generation's rows carry: fitted afresh, carried from the last build (graphs
by cell keep theirs for good), or written while a bulk load's rows arrived.

Graphs by cell (searcher.cell_graphs) need every row's cell before they are built. Written
after the load, by an UPDATE of every row, that took 86 s of a 1M-row build on this machine,
and the dead versions it left doubled the table that each of the 80 graphs' builds reads
(bench/RESULTS.md, stop 47). But how many graphs depends on how many rows there will be, which
only the writer knows: an Upsert stream that says so (UpsertRequest.expected_item_count) into an
empty collection large enough for graphs by cell has its cells fitted once LOAD_FIT_ROWS rows
are in, and every later message is written with its rows' cells (Loader._cells, as for the
fresh rows of an indexed collection). So is each of its named vectors' tables, with cells of
its own, fitted at the same point on its own vectors.

The build at the stream's end keeps those cells only if they suit the rows it finds: about the
graph count it would choose for them, and no graph far above the mean (a stream sorted by
category, fitted on its first categories, piles its later rows into the few cells nearest
them). Then it gives cells only to the rows written before the fit. Otherwise it fits afresh
and writes every row's cell, as without a hint.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import replace
from typing import Any

from imgsearch.errors import Unavailable
from searcher import cell_graphs
from searcher.catalogue import Catalogue, Collection
from searcher.cells import SAMPLE_ROWS, CellStore
from searcher.locks import advisory_lock
from searcher.pool import ConnectionPool

logger = logging.getLogger(__name__)

# Rows a load writes before its cells are fitted on a sample of them (SAMPLE_ROWS, drawn from
# twice as many, so that the first messages do not make the whole sample).
LOAD_FIT_ROWS = 2 * SAMPLE_ROWS
# The build keeps a load's cells when the graph count it would choose for the rows it finds is
# within this factor of theirs (a graph of 8-19k rows instead of 12.5k)...
MOST_COUNT_RATIO = 1.5
# ... and no graph holds more than this many times the mean: fitted on the whole table, the
# largest of 80 graphs at 1M held 27k rows, 2.2 times the mean (bench/RESULTS.md).
MOST_UNEVEN = 3.0


class CellWrites(enum.Enum):
    """Which rows a build gives their cells before it builds its first graphs by cell."""

    NONE = "none"  # no graphs by cell, or graphs kept: every row has its cell
    ALL = "all"  # cells fitted afresh
    MISSING = "missing"  # a bulk load's cells kept: the rows it wrote before they were fitted


# A collection's layout without graphs by cell.
ONE_GRAPH: dict[str, Any] = {"graph_cells": 0, "graph_probes": 0, "fine_cells": 0}


class GenerationCells:
    """Chooses and writes the cells of each build's generation, and fits a bulk load's."""

    def __init__(
        self, pool: ConnectionPool, catalogue: Catalogue, cells: CellStore, graph_cells_from: int
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.cells = cells
        self.graph_cells_from = graph_cells_from

    def wanted(self, expected_items: int) -> bool:
        """Whether a bulk load into an empty collection that says it writes `expected_items`
        has its cells written as it goes."""
        return bool(self.graph_cells_from) and expected_items >= max(
            self.graph_cells_from, LOAD_FIT_ROWS
        )

    def fit_during_load(self, collection: Collection, expected_items: int) -> Collection:
        """Fit the graphs' cells of a collection being bulk loaded on a sample of its rows so
        far, for `expected_items` rows, and record them as the cells of the segment the load
        writes: its next messages carry their rows' cells. The collection as recorded
        (unchanged when it was indexed meanwhile, or already has cells)."""
        graphs = cell_graphs.graph_count(expected_items)
        with self.pool.connection(bulk=True) as conn:
            # Under the builds' lock, each step committed before it is let go: another stream
            # fitting at once, or a build choosing the cells, sees these (and keeps them). While
            # a build holds it, the stream goes on without cells (its own build writes them).
            conn.autocommit = True
            try:
                with (
                    conn.cursor() as cur,
                    advisory_lock(cur, "build", collection.name, wait=False) as locked,
                ):
                    current, has_index = self.catalogue.get(collection.name, fresh=True)
                    if not locked or has_index or current.cells_segment:
                        return current
                    segment = current.growing_segment
                    fitted = self.cells.fit_for(
                        cur, current, segment, count=graphs, rows=expected_items
                    )
                    if fitted is None:
                        return current
                    self.catalogue.record(cur, current.name, cells_segment=segment)
            finally:
                conn.autocommit = False
        logger.info(
            "%s: bulk load of ~%d items: rows written with their cells among %d graphs by cell "
            "from now on",
            *(current.described, expected_items, graphs),
        )
        return self.catalogue.get(collection.name, fresh=True)[0]

    def _kept(self, cur: Any, current: Collection, segment: int, rows: int) -> Collection | None:
        """At the first build of `current`, holding `rows` rows: `current` with the cells its
        bulk load wrote, carried forward to `segment` (the one writers fill next) with the
        layout of graphs by cell; None when it has no such cells or they do not suit its rows
        (the build then fits afresh)."""
        if not current.cells_segment or current.cells_segment != segment - 1:
            return None
        cells = self.cells.of(current)
        if cells is None or cells.fine is None:  # not fitted for graphs by cell
            return None
        fitted = len(cells.centroids)
        graphs = cell_graphs.graph_count(rows) if rows >= self.graph_cells_from else 0
        if not graphs or not 1 / MOST_COUNT_RATIO <= fitted / graphs <= MOST_COUNT_RATIO:
            logger.info(
                "%s: the %d cells its load wrote do not suit its %d rows (%d graphs): fitted "
                "afresh",
                *(current.described, fitted, rows, graphs),
            )
            return None
        layout = replace(
            current, graph_cells=fitted, fine_cells=cells.fine_per_cell, index_segment=segment - 1
        )
        largest, with_cells = cell_graphs.largest_cell(cur, layout)
        if largest > MOST_UNEVEN * with_cells / fitted:
            logger.warning(
                "%s: the cells its load wrote are uneven (a graph of %d rows, %.1f times the "
                "mean; a load sorted by category?): fitted afresh on all its rows",
                *(current.described, largest, largest * fitted / with_cells),
            )
            return None
        walks = self.cells.walks(cur, current, cells, seed=segment)
        if not self.cells.carry_forward(cur, current, segment):
            return None
        logger.info(
            "%s: keeps the %d cells its load wrote (largest graph %d rows; %d walked)",
            *(current.described, fitted, largest, walks),
        )
        return replace(
            current,
            cells_segment=segment,
            graph_cells=fitted,
            graph_probes=walks,
            fine_cells=cells.fine_per_cell,
        )

    def choose(
        self, cur: Any, current: Collection, segment: int, rows: int, *, first_graph: bool
    ) -> tuple[Collection, CellWrites]:
        """`current` with the cells of the rows written from `segment` on, and which of its
        rows the build gives their cells before it builds the graphs. Graphs by cell keep
        theirs; a collection's first graph (after a bulk load, or when it has none) takes
        graphs by cell when it is large enough: its load's cells if they suit it, else fitted
        afresh; any other gets cells fitted afresh for its fresh rows (or none)."""
        if current.graph_cells and not first_graph:
            if self.cells.carry_forward(cur, current, segment):
                return replace(current, cells_segment=segment), CellWrites.NONE
            logger.warning("%s: its cells are gone: its index is built as one graph", current.name)
            current = replace(current, **ONE_GRAPH)
        graphs = 0
        if first_graph and self.graph_cells_from and rows >= self.graph_cells_from:
            kept = self._kept(cur, current, segment, rows)
            if kept is not None:
                return kept, CellWrites.MISSING
            graphs = cell_graphs.graph_count(rows)
        fitted = self.cells.fit_for(cur, current, segment, count=graphs)
        if fitted is None:
            return replace(current, cells_segment=0, **ONE_GRAPH), CellWrites.NONE
        cells, walks = fitted
        layout: dict[str, Any] = dict(
            graph_cells=graphs, graph_probes=walks, fine_cells=cells.fine_per_cell
        )
        chosen = replace(current, cells_segment=segment, **(layout if graphs else ONE_GRAPH))
        return chosen, CellWrites.ALL if graphs else CellWrites.NONE

    def write(self, cur: Any, target: Collection, writes: CellWrites) -> None:
        """Before a collection's first graphs by cell: every row its new generation will hold
        gets its cell (or those `writes` says; no graph exists to take each changed row in), and
        the rows written without one get their partial index."""
        if writes is CellWrites.NONE:
            return
        missing_only = writes is CellWrites.MISSING
        cells = self.cells.of(target)
        if cells is None:
            raise Unavailable(f"the cells of {target.name!r} were not stored")
        started = time.monotonic()
        rows = cell_graphs.assign_cells(
            cur, target, cells, target.index_segment, missing_only=missing_only
        )
        cell_graphs.create_orphan_index(cur, target)
        logger.info(
            "%s: %d rows%s given their cells among %d in %.1f s",
            *(target.name, rows, " written before its load's fit" if missing_only else ""),
            *(target.graph_cells, time.monotonic() - started),
        )
