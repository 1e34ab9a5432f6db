"""Index upkeep off the request path: after every build, the index's recall is measured, a
poor build repaired, and the collection's search effort calibrated; a BINARY index whose
collection outgrew its quantizer is rebuilt.

After each build of a collection's index:
1. draw held-out queries and their exact neighbours (searcher.recall): the rows the build kept
   out of its graph (fresh rows, folded in once the check is done), or for a collection too
   small to spare them, stored vectors moved by half the distance to their nearest neighbour;
2. calibrate: find on the kind's effort ladder (ef_search, and candidates for BINARY; steps
   of at most 1.3x) the cheapest setting whose recall@10 meets the target (default 0.99) with
   at most 1 sampled query in 100 lost (finding under half of its neighbours), searching the
   ladder from its cheap end (searcher.effort), else the most thorough;
3. if the recall at the default effort is below the floor (default 0.95), or no effort but the
   most thorough reaches the target, the build itself is poor: rebuild once, CONCURRENTLY,
   with larger m and ef_construction (at least the defaults, twice the ef_construction), and
   calibrate again; but not when the collection grew into a new build after a repaired graph
   had been poor already (its vectors suit no graph: m would only climb). A graph of the
   default m that meets the target only at a costly effort (effort.COSTLY_EF_SEARCH) is rebuilt
   so too. Graphs by cell whose loss lies in a few of their graphs have those rebuilt alone,
   in place, and the whole index only if that did not meet the target (searcher.repairs).
Each step is logged, and the outcome recorded in the catalogue (GetCollection, GetStats): the
effort in force, its measured recall, and a note of what was done. Steps 1 and 2 run again
once rows added since the last check reach RECHECK_SHARE of its rows, measured on a random
share of them that the folds kept out of the graph (see fold); a graph the folds left short of
the target below the most effort is built again at the same m, then checked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime

from psycopg2 import sql

from imgsearch.errors import ImageSearchError
from searcher.catalogue import Catalogue, Collection, IndexKind
from searcher.effort import (
    Calibration,
    Searcher,
    at_cheapest_effort,
    at_most_effort,
    calibrate_effort,
)
from searcher.folding import FoldPace
from searcher.indexes import IndexBuilder
from searcher.pool import ConnectionPool
from searcher.recall import (
    HELD_OUT_OF_FOLDS,
    HELD_OUT_ROWS,
    RecallSample,
    draw_sample,
    kept_buckets,
)
from searcher.repairs import DEFAULT_M, Repairs

logger = logging.getLogger(__name__)

# How long stop() waits for the upkeep's task in progress before cancelling its statement.
STOP_PATIENCE_S = 2.0

# Fresh rows are taken in by a build rather than folded once they are this share of the
# indexed rows (and at least REBUILD_MIN_ROWS): per row, a build costs a quarter of a fold.
REBUILD_SHARE = 0.25
REBUILD_MIN_ROWS = 1000
# Once rows added to a graph since its last check (folded, or kept out of the folds for this
# check) reach this share of the rows it was built with, the index is measured and its effort
# calibrated again: after 10k rows folded into 100k, recall at the same effort was 0.005-0.010
# below before in 3 of 7 runs (bench/additions.py).
RECHECK_SHARE = 0.05
# How the note of a collection's index says what the calibration chose, and that no effort met
# the target.
CALIBRATED = "search effort calibrated"
NOT_REACHED = "not reached at the most effort"
# A recheck's note while the build it asked for waits; then the build's.
REBUILDING = "the folds left the graph short of the target below the most effort: building again"
REBUILT = "built again: the folds had left the graph short of the target below the most effort"
# A BINARY index is rebuilt (its quantizer fitted anew) once its collection holds this many
# times the rows the quantizer was fitted on: the codes of a collection that started small
# may not fit what it became. Doubling bounds the rebuilds' total cost by twice the last one.
REQUANTIZE_GROWTH = 2.0


class IndexMaintenance:
    def __init__(
        self,
        pool: ConnectionPool,
        catalogue: Catalogue,
        builder: IndexBuilder,
        searcher_for: Searcher,
        *,
        recall_floor: float,
        recall_target: float,
        recall_sample: int,
        default_ef_search: int,
        fold_share: float = 0.1,
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.builder = builder
        self.searcher_for = searcher_for
        self.recall_floor = recall_floor
        self.recall_target = max(recall_target, recall_floor)
        self.recall_sample = recall_sample
        self.default_ef_search = default_ef_search
        self._stopping = threading.Event()
        self.pace = FoldPace(builder, fold_share, self._stopping)
        self.repairs = Repairs(
            builder,
            searcher_for,
            calibrate=self._calibrate,
            draw=lambda rebuilt: self._draw(rebuilt, HELD_OUT_ROWS),
            recall_floor=recall_floor,
            recall_target=self.recall_target,
        )
        self._tasks: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._thread: threading.Thread | None = None
        # Rows this searcher inserted per collection since its last build: the table's row
        # estimate (pg_class.reltuples) lags until the next ANALYZE.
        self._inserted: dict[str, int] = {}
        # Rows folded into each collection's graph since its last check (see RECHECK_SHARE).
        self._folded: dict[str, int] = {}
        # Collections whose next fold takes every fresh row in, those kept for a check too.
        self._fold_all: set[str] = set()

    # -- scheduling ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="index-maintenance", daemon=True)
        self._thread.start()

    def stop(self, patience_s: float = STOP_PATIENCE_S) -> None:
        """Stop after the task in progress (a fold stops between two batches); one still
        running after `patience_s` has its statement cancelled. A check measures again at the
        next start, and a build cut short leaves an invalid index that the next start drops
        (IndexBuilder), so nothing is lost; but a 20-minute build must not hold a SIGTERM past
        the service's grace period."""
        if self._thread is not None:
            self._stopping.set()
            self._tasks.put(None)
            self._thread.join(patience_s)
            while self._thread.is_alive():
                ident = self._thread.ident
                if ident is not None and self.pool.cancel_statements_of(ident):
                    logger.info("index upkeep stopping: its statement in progress is cancelled")
                self._thread.join(1.0)
            self._thread = None
            self._stopping.clear()

    def schedule_left_undone(self) -> None:
        """At start, what an earlier searcher left undone (it stopped first, or skipped its
        queue on stop): measure every index that was built but never measured (or comes from
        before recall was measured), and refit every BINARY quantizer its collection outgrew."""
        for collection in self.catalogue.list():
            if collection.recall is None:
                self.schedule("check", collection.name)
            elif collection.kind is IndexKind.BINARY and collection.quantizer_rows:
                # The estimate after_load uses forgets the rows added before this start: the
                # task counts them.
                self.schedule("requantize", collection.name)

    def after_build(self, collection: Collection) -> None:
        with self._lock:
            self._inserted.pop(collection.name, None)
        self.schedule("check", collection.name)

    def after_load(self, collection: Collection, inserted: int) -> None:
        """After an Upsert stream into an indexed collection: refit a BINARY quantizer that
        the collection has outgrown."""
        with self._lock:
            self._inserted[collection.name] = self._inserted.get(collection.name, 0) + inserted
        if collection.kind is IndexKind.BINARY and collection.quantizer_rows:
            rows = self._estimated_rows(collection)
            if rows >= REQUANTIZE_GROWTH * collection.quantizer_rows:
                self.schedule("requantize", collection.name)

    def schedule(self, task: str, name: str) -> None:
        with self._lock:
            if (task, name) in self._pending:
                return
            self._pending.add((task, name))
        self._tasks.put((task, name))

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no task is queued or running (tests and benchmarks)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def _run(self) -> None:
        skipped = 0
        while (task := self._tasks.get()) is not None:
            with self._lock:
                self._pending.discard(task)
                if self._stopping.is_set():
                    # Stopping: what is queued waits for the next start, which finds it again
                    # (unmeasured indexes, fresh rows, builds a crash left) without holding a
                    # SIGTERM while every collection is checked and folded in turn.
                    skipped += 1
                    continue
                self._busy = True
            try:
                kind, name = task
                if kind == "check":
                    self.check(name)
                elif kind == "recheck":
                    self.check(name, repair=False, held_out=HELD_OUT_OF_FOLDS)
                elif kind == "build":
                    self.rebuild(name)
                elif kind == "fold":
                    self.fold(name)
                else:
                    self.requantize(name)
            except ImageSearchError as exc:
                logger.warning("index upkeep of %s (%s) did not run: %s", task[1], task[0], exc)
            except Exception:
                logger.exception("index upkeep of %s (%s) failed", task[1], task[0])
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
        if skipped:
            logger.info(
                "index upkeep stopped with %d queued tasks left for the next start", skipped
            )

    # -- the work -----------------------------------------------------------------------------

    def check(self, name: str, *, repair: bool = True, held_out: str = HELD_OUT_ROWS) -> None:
        """Measure the current index, calibrate the search effort, repair a poor build (only
        after a build: a re-check after folds recalibrates, lest a collection whose vectors no
        graph serves well be rebuilt, with ever larger m, each time it grows by a little).
        `held_out`: what the fresh rows it measures on are, as its note says it."""
        collection, has_index = self.catalogue.get(name, fresh=True)
        if not has_index:
            return
        with self._lock:
            self._folded.pop(name, None)
        try:
            sample = self._draw(collection, held_out)
            if sample is not None:
                self._measure(collection, sample, repair=repair)
        finally:
            # The rows held out for it (by its build, or by the folds) were waiting for it.
            self.fold_all(name)

    def fold_all(self, name: str) -> None:
        """Fold every fresh row of the collection, those kept out of folds too: after its
        check, and at start (what this searcher counted toward a recheck is gone)."""
        with self._lock:
            self._fold_all.add(name)
        self.schedule("fold", name)

    def _draw(self, collection: Collection, fresh_source: str) -> RecallSample | None:
        if not self.recall_sample:
            return None  # measuring is turned off: the collection searches at the defaults
        # Queries moved from stored rows are placed by the distance to each one's nearest other
        # row, of which only the scale matters: searched for at the cheapest effort (at the
        # default, these 2,000 searches were 13 s of a 38 s check at 200k rows, RESULTS.md).
        cheapest = at_cheapest_effort(collection)
        return draw_sample(
            self.pool,
            collection,
            self.recall_sample,
            self.searcher_for(cheapest),
            fresh_source=fresh_source,
            graph_cells=self.builder.cells.graphs_of(collection),
        )

    def _measure(self, collection: Collection, sample: RecallSample, *, repair: bool) -> None:
        started = time.monotonic()
        # What the build and the start-up found stays; the calibration is said anew.
        notes = [
            part
            for part in collection.index_note.split("; ")
            if part and not part.startswith(CALIBRATED) and part != REBUILDING
        ]
        # After a build, a few poor graphs by cell are rebuilt before the calibration climbs.
        first = self.repairs.first_look(collection, sample, notes) if repair else None
        calibrated = self._calibrate(
            first.collection if first else collection,
            sample,
            cheapest=first.cheapest if first else None,
        )
        logger.info(
            "%s: search effort calibrated on %d queries in %.1f s",
            *(collection.name, len(sample), time.monotonic() - started),
        )
        # A build is repaired when it is poor at the default effort, or when no effort reaches
        # the target: 1-2% of held-out queries stuck in another part of the graph whatever the
        # ef_search (1 build in 3 of the same 100k clustered rows, m=16; bench/calibration.py).
        # So is one that meets it only at the most effort (at 100k rows as 8 graphs one build
        # met 0.99 at ef_search 1000, others of the same rows at 40-50; RESULTS.md, stop 39);
        # and a first graph walked at a costly effort: one build in the background, then
        # cheaper searches for as long as the collection lives.
        poor = self.repairs.poor(calibrated)
        looked = bool(first and first.repaired)  # its few graphs rebuilt: not again at the same m
        if repair and self.repairs.wanted(collection, calibrated):
            calibrated, sample = self.repairs.repair(
                collection, calibrated, sample, notes, few=not looked
            )
        elif repair and not looked and self.repairs.dearer(calibrated):
            calibrated, sample = self.repairs.repair(
                collection, calibrated, sample, notes, whole=False
            )
        # Folds insert rows one by one; a recheck that finds the graph short of the target below
        # the most effort has it built again from its rows, at the same m (at 200k rows a
        # recheck set ef_search 1000 and searches ran 3.3x slower until the next build; stop
        # 38). The check after that build repairs it if it must.
        rebuild = not repair and poor and not _hopeless(collection)
        if rebuild:
            notes.append(REBUILDING)
        chosen = calibrated.collection
        effort = f"ef_search {chosen.ef_search}" + (
            f", candidates {chosen.candidates}" if chosen.candidates else ""
        )
        if chosen.graph_cells:
            effort += f", {chosen.graph_probes} of {chosen.graph_cells} graphs by cell walked"
        short = "" if calibrated.met else f", {NOT_REACHED}"
        notes.append(
            f"{CALIBRATED}: {effort} for recall@10 {calibrated.recall:.3f} on "
            f"{sample.described} (target {self.recall_target:g}{short})"
        )
        self._record(chosen, calibrated.recall, sample, "; ".join(notes))
        if rebuild:
            logger.warning("%s: %s", collection.name, REBUILDING)
            self.rebuild(collection.name)

    def rebuild(self, name: str) -> None:
        """Build the collection's index again (its recorded one was lost, covers every row as
        indexes did before fresh rows, or a recheck found it short below the most effort), then
        check it."""
        collection, _ = self.catalogue.get(name, fresh=True)
        note = collection.index_note.replace(REBUILDING, REBUILT)
        built = self.builder.build(collection, concurrently=True, note=note)
        self.check(built.name)

    def fold(self, name: str) -> None:
        """Move the collection's fresh rows under its index, a batch at a time: while writes
        go on, at most `fold_share` of one core (the writes come first); once they stop, at
        full speed. When the fresh rows are many next to the indexed ones, a build takes them
        in instead: building costs ~0.9 ms of core time a row, inserting ~4 ms (100k rows,
        bench/RESULTS.md).

        A collection that keeps rows out of its graph for its checks (recall.kept_buckets) has
        a random share of the rows added since its last check left fresh, for the recheck that
        the folds schedule once RECHECK_SHARE of its rows were added; the check folds them."""
        with self._lock:
            if ("check", name) in self._pending:
                return  # its build's held-out rows wait for it; it folds them when done
            everything = name in self._fold_all
            self._fold_all.discard(name)
        collection, has_index = self.catalogue.get(name, fresh=True)
        if not has_index:
            return  # the build that makes its index takes the fresh rows in
        fresh = self.builder.fresh_rows(collection)
        if fresh >= max(REBUILD_MIN_ROWS, REBUILD_SHARE * collection.built_rows):
            note = f"{fresh} fresh rows taken in by a build (cheaper than folding them)"
            logger.info("%s: %s", name, note)
            built = self.builder.build(collection, concurrently=True, note=note)
            self.check(built.name, repair=not _hopeless(collection))
            return
        recheck_rows = RECHECK_SHARE * collection.built_rows
        kept = (
            0
            if everything
            else kept_buckets(collection.built_rows, int(recheck_rows), self.recall_sample)
        )
        folded = self.pace.fold(collection, kept)
        with self._lock:
            since_check = self._folded[name] = self._folded.get(name, 0) + folded
        kept_rows = self.builder.fresh_rows(collection) if kept else 0
        # Folds end when they have caught up: while an ingest outpaces them (a tenth of a
        # core), not before it stops, so checks do not take its cores.
        if (folded or kept_rows) and since_check + kept_rows >= recheck_rows:
            self.schedule("recheck", name)

    def writing(self, name: str) -> None:
        """A write into the collection just went in: folds slow down while writes go on."""
        self.pace.writing(name)

    def written(self, name: str) -> None:
        """Writes into the collection ended (an Upsert stream closed): fresh rows to fold."""
        self.writing(name)
        self.schedule("fold", name)

    def requantize(self, name: str) -> None:
        collection, has_index = self.catalogue.get(name, fresh=True)
        if not has_index or not collection.quantizer_rows:
            return
        rows = self._counted_rows(collection)
        if rows < REQUANTIZE_GROWTH * collection.quantizer_rows:
            return
        note = f"quantizer refitted on {rows} rows (it was fitted on {collection.quantizer_rows})"
        built = self.builder.build(collection, concurrently=True, note=note)
        self.check(built.name)

    def _calibrate(
        self,
        collection: Collection,
        sample: RecallSample,
        *,
        cheapest: tuple[float, bool] | None = None,
    ) -> Calibration:
        return calibrate_effort(
            collection,
            sample,
            self.searcher_for,
            target=self.recall_target,
            default_ef_search=self.default_ef_search,
            cheapest=cheapest,
        )

    def _record(
        self, collection: Collection, recall: float, sample: RecallSample, note: str
    ) -> None:
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            self.catalogue.record(
                cur,
                collection.name,
                recall=recall,
                recall_sample=len(sample),
                recall_measured_at=datetime.now(UTC),
                search_ef=collection.ef_search,
                search_candidates=collection.candidates,
                graph_probes=collection.graph_probes,
                index_note=note,
            )
        logger.info(
            "recall@10 of %s: %.3f on %s (%s index, generation %d, ef_search %d, candidates %d)",
            *(collection.name, recall, sample.described, collection.kind.name),
            *(collection.generation, collection.ef_search, collection.candidates),
        )

    def _counted_rows(self, collection: Collection) -> int:
        """Rows in the collection, counted: a scan, off the request path (at a million rows it
        may take longer than a request may), and only where a build may follow."""
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = 0")
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
            rows: int = cur.fetchone()[0]
        return rows

    def _estimated_rows(self, collection: Collection) -> int:
        """Rows in the collection, without counting them (a count of millions of rows after
        every Upsert stream would cost more than the stream)."""
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                (collection.qualified_table,),
            )
            row = cur.fetchone()
        with self._lock:
            inserted = self._inserted.get(collection.name, 0)
        return max(int(row[0]) if row else 0, collection.built_rows + inserted)


def _hopeless(collection: Collection) -> bool:
    """A graph already repaired (m raised) that still missed the target, or met it only at the
    most effort: it is not built or repaired again each time its collection grows (m would
    double each time up to MAX_M, for vectors no graph serves well). Its builds are calibrated;
    repairs stay for graphs that were good before."""
    poor = NOT_REACHED in collection.index_note or at_most_effort(collection)
    return poor and collection.m > DEFAULT_M
