"""HNSW build quality: recall@10 over repeated index builds of the same data, per m:ef_construction.

    python bench/hnsw_builds.py [--rows 20000] [--builds 10] [--configs 16:128 16:200]
                                [--kind vector] [--queries 100] [--ef-searches 100 200 400]
                                [--seeds 4 5]

An HNSW build is not deterministic (random levels, parallel workers insert in another order), so
one build says little: on clustered data a build can leave a region of the graph that searches
do not reach, and then recall stops rising with ef_search. This loads the same clustered 1000-d
vectors (the recall test's data: `clustered_vectors(20_000, seed=4)`, queries seed 5; `--seeds 1
2`: bench/searcher.py's up to 100k rows) into a new
collection `--builds` times per configuration (m:ef_construction), through the searcher's own
VectorStore on a fresh embedded PostgreSQL, and records the build time, recall@10 and the queries
lost (under half of their neighbours found) at several ef_search for each build.
The first configuration given is the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.searcher import exact_truth  # noqa: E402
from searcher.effort import LOST_QUERY_RECALL  # noqa: E402
from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.pool import ConnectionPool  # noqa: E402
from searcher.settings import StoreSettings  # noqa: E402
from searcher.store import IndexKind, Item, VectorStore  # noqa: E402
from tests.searcher_helpers import clustered_vectors  # noqa: E402

TOP_K = 10


def one_build(
    store: VectorStore, name: str, data: np.ndarray, kind: IndexKind, m: int, ef_construction: int
) -> tuple[float, float]:
    """(seconds to load, seconds to build the index) for a new collection holding `data`."""
    store.create_collection(name, data.shape[1], kind=kind, m=m, ef_construction=ef_construction)
    started = time.perf_counter()
    session = store.begin_upsert(name)
    for start in range(0, len(data), 1000):
        session.write(
            [Item(id=i, vector=data[i]) for i in range(start, min(start + 1000, len(data)))]
        )
    loaded = time.perf_counter()
    session.close()  # the deferred HNSW build
    return loaded - started, time.perf_counter() - loaded


def recalls(
    store: VectorStore, name: str, queries: np.ndarray, truth: list[set[int]], ef: int
) -> np.ndarray:
    """Each query's recall@10 at ef_search `ef`."""
    found = [{h.id for h in store.search(name, q, TOP_K, ef_search=ef).hits} for q in queries]
    return np.asarray([len(f & t) / TOP_K for f, t in zip(found, truth, strict=True)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--builds", type=int, default=10)
    parser.add_argument(
        "--configs", nargs="+", default=["16:128", "16:200"], help="m:ef_construction, ..."
    )
    parser.add_argument("--seeds", nargs=2, type=int, default=[4, 5], help="data, queries")
    parser.add_argument("--kind", default="vector", choices=[k.value for k in IndexKind])
    parser.add_argument("--ef-searches", nargs="+", type=int, default=[100, 200, 400])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hnsw_builds.json")
    args = parser.parse_args()
    kind, ef_searches = IndexKind(args.kind), args.ef_searches

    data = clustered_vectors(args.rows, seed=args.seeds[0])
    queries = clustered_vectors(args.queries, seed=args.seeds[1])
    truth = [set(row.tolist()) for row in exact_truth(data, queries, TOP_K)[0]]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch, EmbeddedPostgres(scratch) as pg:
        pool = ConnectionPool(pg.dsn, max_size=4)
        # Each build is measured as built: no rows held out of it, no upkeep check or repair, no
        # shadow searches.
        store = VectorStore(pool, StoreSettings(recall_sample=0, shadow_share=0))
        store.open()
        store.maintenance.stop()
        # Alternate the settings build by build so that a slow spell of the machine does not
        # land on one of them only.
        for build in range(args.builds):
            for config in args.configs:
                m, efc = (int(part) for part in config.split(":"))
                name = f"b{build}_m{m}_efc{efc}"
                load_s, build_s = one_build(store, name, data, kind, m, efc)
                row = {"load_s": load_s, "build_s": build_s}
                for ef in ef_searches:
                    found = recalls(store, name, queries, truth, ef)
                    row[f"recall_ef{ef}"] = float(found.mean())
                    row[f"lost_ef{ef}"] = int((found < LOST_QUERY_RECALL).sum())
                results.setdefault(f"m={m} ef_construction={efc}", []).append(row)
                store.drop_collection(name)
                shown = " ".join(
                    f"ef{ef} {row[f'recall_ef{ef}']:.4f} ({row[f'lost_ef{ef}']} lost)"
                    for ef in ef_searches
                )
                print(
                    f"build {build} m {m} ef_construction {efc}: index {build_s:.1f} s, {shown}",
                    flush=True,
                )
        pool.close()

    summary = {}
    print(f"\n{args.builds} builds each; recall@{TOP_K} min / mean / max, index build time mean")
    for config, rows in results.items():
        entry = {"build_s_mean": float(np.mean([r["build_s"] for r in rows]))}
        for ef in ef_searches:
            values = [r[f"recall_ef{ef}"] for r in rows]
            entry[f"recall_ef{ef}_min"] = float(np.min(values))
            entry[f"recall_ef{ef}_mean"] = float(np.mean(values))
            entry[f"recall_ef{ef}_max"] = float(np.max(values))
        summary[config] = entry
        shown = "  ".join(
            f"ef{ef} {entry[f'recall_ef{ef}_min']:.4f} / {entry[f'recall_ef{ef}_mean']:.4f} / "
            f"{entry[f'recall_ef{ef}_max']:.4f}"
            for ef in ef_searches
        )
        print(f"{config}: {shown}  build {entry['build_s_mean']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "kind": kind.value,
                "seeds": args.seeds,
                "queries": args.queries,
                "builds": args.builds,
                "summary": summary,
                "per_build": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
