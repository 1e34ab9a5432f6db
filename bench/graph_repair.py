"""A poor graph among graphs by cell: its repair alone against the repair of the whole index.

    python bench/graph_repair.py [--rows 200000] [--graphs 0] [--repairs graphs,after,whole]

Loads `--rows` clustered 1000-d rows (bench/datasets.py) into a HALFVEC collection per repair
through the searcher's own VectorStore on a fresh embedded PostgreSQL, each built as graphs by
cell after its bulk load as the searcher builds them. Before each build's check runs, the graphs
`--graphs` are built again poor (m=4, ef_construction=8), as some of a build's graphs may come
out (at 1M rows, one build in ten met the target at no effort: bench/RESULTS.md, stop 47).
Then the check runs as the searcher runs it, on the rows the build held out:
- "graphs": as the searcher does now: the sample searched once at the cheapest effort, and
  the graphs that lost its neighbours there rebuilt alone (searcher.weak_graphs) before the
  calibration climbs (Repairs.first_look, stop 50);
- "after": that first look turned off (searcher.repairs.losing_graphs answering None), as the
  searcher did in stop 48: the calibration climbs the ladder, then the graphs are placed and
  rebuilt alone;
- "whole": both turned off (searcher.repairs.weak_graphs answering None too), the repair the
  searcher made before stop 48: the whole index again, a new generation with m doubled.
Prints and writes (--out) for each: the check's seconds from its start to the upkeep idle (the
draw, calibration, repair and calibration again), the repair's own seconds, the recall and
effort the upkeep recorded, and its note.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from searcher import repairs as repairing  # noqa: E402
from searcher.cell_graphs import DEFAULT_FROM_ROWS  # noqa: E402
from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.pool import ConnectionPool  # noqa: E402
from searcher.schema import DATA_SCHEMA  # noqa: E402
from searcher.settings import StoreSettings  # noqa: E402
from searcher.store import IndexKind, Item, VectorStore  # noqa: E402

UPKEEP_S = 3600  # a deadline, not an expected duration


class Repairs(logging.Handler):
    """The searcher's log lines that time a repair."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--graphs",
        default="0",
        help="the graphs made poor, by cell (at 1M rows one of 80 left the target met at "
        "ef_search 64: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--repairs",
        default="graphs,after,whole",
        help="which repairs to run, each on a collection of its own (at 1M rows, one: two "
        "tables of 8 GB)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/graph-repair.json")
    args = parser.parse_args()
    if not set(args.repairs.split(",")) <= {"graphs", "after", "whole"}:
        parser.error("--repairs takes graphs, after and whole, or some of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    repairs = Repairs()
    logging.getLogger("searcher").addHandler(repairs)
    data, _ = datasets.clustered(args.rows, 10)
    poor = [int(graph) for graph in args.graphs.split(",")]
    results: dict[str, Any] = {"rows": args.rows, "poor_graphs": poor}
    with tempfile.TemporaryDirectory(prefix="graph-repair-") as scratch:
        with EmbeddedPostgres(scratch) as pg:
            pool = ConnectionPool(pg.dsn, max_size=6)
            settings = StoreSettings(
                shadow_share=0, graph_cells_from=min(args.rows, DEFAULT_FROM_ROWS)
            )
            store = VectorStore(pool, settings)
            store.open()
            weak, losing = repairing.weak_graphs, repairing.losing_graphs
            for name in args.repairs.split(","):
                repairing.losing_graphs = losing if name == "graphs" else _none  # type: ignore[assignment]
                repairing.weak_graphs = _none if name == "whole" else weak  # type: ignore[assignment]
                repairs.lines.clear()
                results[name] = one_repair(pg.dsn, store, name, data, poor, repairs)
                print(json.dumps({name: results[name]}, indent=1), flush=True)
            store.close()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


def _none(*_: object, **__: object) -> None:
    return None


def one_repair(
    dsn: str, store: VectorStore, name: str, data: np.ndarray, poor: list[int], repairs: Repairs
) -> dict[str, Any]:
    store.create_collection(name, data.shape[1], kind=IndexKind.HALFVEC)
    started = time.perf_counter()
    session = store.begin_upsert(name)
    for first in range(0, len(data), 1000):
        stop = min(first + 1000, len(data))
        session.write([Item(id=i, vector=data[i]) for i in range(first, stop)])
    loaded = time.perf_counter()
    # The build's check waits, queued, while one of its graphs is made poor.
    store.maintenance.stop()
    session.close()
    built = time.perf_counter()
    collection, _ = store.catalogue.get(name, fresh=True)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for graph in poor:
            cur.execute(
                sql.SQL(
                    "ALTER INDEX {0} SET (m = 4, ef_construction = 8); REINDEX INDEX {0}"
                ).format(sql.Identifier(DATA_SCHEMA, collection.index_name(cell=graph)))
            )
    conn.close()
    checking = time.perf_counter()
    store.maintenance.start()
    if not store.maintenance.wait_idle(UPKEEP_S):
        raise SystemExit("the upkeep did not finish")
    checked = time.perf_counter()
    after, _ = store.catalogue.get(name, fresh=True)
    return {
        "load_s": round(loaded - started, 1),
        "build_s": round(built - loaded, 1),
        "graphs": collection.graph_cells,
        "check_s": round(checked - checking, 1),
        "repair_s": _repair_seconds(
            repairs.lines, after.build_seconds if after.generation > collection.generation else None
        ),
        # Each calibration's seconds (the first includes the first look and its repair).
        "calibrations_s": [
            float(found.group(1))
            for line in repairs.lines
            if (found := re.search(r"search effort calibrated on \d+ queries in ([\d.]+) s", line))
        ],
        "generation": [collection.generation, after.generation],
        "recall": after.recall,
        "ef_search": after.ef_search,
        "graphs_walked": after.graph_probes,
        "m": after.m,
        "note": after.index_note,
    }


def _repair_seconds(lines: list[str], build_seconds: float | None) -> float | None:
    """The repair's own seconds: that of its graphs alone, as logged, else the new
    generation's build (None: there was none, no repair)."""
    for line in lines:
        found = re.match(r"rebuilt \d+ of the \d+ graphs by cell .* in ([\d.]+) s", line)
        if found:
            return float(found.group(1))
    return None if build_seconds is None else round(build_seconds, 1)


if __name__ == "__main__":
    sys.exit(main())
