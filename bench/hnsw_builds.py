"""HNSW build quality: recall@10 over repeated index builds of the same data, per m:ef_construction.

    python bench/hnsw_builds.py [--rows 20000] [--builds 10] [--configs 16:128 16:200]

An HNSW build is not deterministic (random levels, parallel workers insert in another order), so
one build says little: on clustered data a build can leave a region of the graph that searches
do not reach, and then recall stops rising with ef_search. This loads the same clustered 1000-d
vectors (the recall test's data: `clustered_vectors(20_000, seed=4)`, queries seed 5) into a new
collection `--builds` times per configuration (m:ef_construction), through the searcher's own
VectorStore on a fresh embedded PostgreSQL, and records the build time and recall@10 at several
ef_search for each build.
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

from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.pool import ConnectionPool  # noqa: E402
from searcher.store import IndexKind, Item, VectorStore  # noqa: E402
from tests.searcher_helpers import clustered_vectors, exact_neighbours  # noqa: E402

TOP_K = 10
EF_SEARCHES = (100, 200, 400)


def one_build(
    store: VectorStore, name: str, data: np.ndarray, m: int, ef_construction: int
) -> tuple[float, float]:
    """(seconds to load, seconds to build the index) for a new collection holding `data`."""
    store.create_collection(
        name, data.shape[1], kind=IndexKind.VECTOR, m=m, ef_construction=ef_construction
    )
    started = time.perf_counter()
    session = store.begin_upsert(name)
    for start in range(0, len(data), 1000):
        session.write(
            [Item(id=i, vector=data[i]) for i in range(start, min(start + 1000, len(data)))]
        )
    loaded = time.perf_counter()
    session.close()  # the deferred HNSW build
    return loaded - started, time.perf_counter() - loaded


def recall(
    store: VectorStore, name: str, queries: np.ndarray, truth: list[set[int]], ef: int
) -> float:
    found = [{h.id for h in store.search(name, q, TOP_K, ef_search=ef).hits} for q in queries]
    return float(np.mean([len(f & t) / TOP_K for f, t in zip(found, truth, strict=True)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--builds", type=int, default=10)
    parser.add_argument(
        "--configs", nargs="+", default=["16:128", "16:200"], help="m:ef_construction, ..."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hnsw_builds.json")
    args = parser.parse_args()

    data = clustered_vectors(args.rows, seed=4)
    queries = clustered_vectors(args.queries, seed=5)
    truth = [set(exact_neighbours(data, q, TOP_K).tolist()) for q in queries]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch, EmbeddedPostgres(scratch) as pg:
        pool = ConnectionPool(pg.dsn, max_size=4)
        store = VectorStore(pool)
        store.open()
        # Alternate the settings build by build so that a slow spell of the machine does not
        # land on one of them only.
        for build in range(args.builds):
            for config in args.configs:
                m, efc = (int(part) for part in config.split(":"))
                name = f"b{build}_m{m}_efc{efc}"
                load_s, build_s = one_build(store, name, data, m, efc)
                row = {"load_s": load_s, "build_s": build_s}
                row |= {
                    f"recall_ef{ef}": recall(store, name, queries, truth, ef) for ef in EF_SEARCHES
                }
                results.setdefault(f"m={m} ef_construction={efc}", []).append(row)
                store.drop_collection(name)
                shown = " ".join(f"ef{ef} {row[f'recall_ef{ef}']:.3f}" for ef in EF_SEARCHES)
                print(
                    f"build {build} m {m} ef_construction {efc}: index {build_s:.1f} s, {shown}",
                    flush=True,
                )
        pool.close()

    summary = {}
    print(f"\n{args.builds} builds each; recall@{TOP_K} min / mean, index build time mean")
    for config, rows in results.items():
        entry = {"build_s_mean": float(np.mean([r["build_s"] for r in rows]))}
        for ef in EF_SEARCHES:
            values = [r[f"recall_ef{ef}"] for r in rows]
            entry[f"recall_ef{ef}_min"] = float(np.min(values))
            entry[f"recall_ef{ef}_mean"] = float(np.mean(values))
        summary[config] = entry
        shown = "  ".join(
            f"ef{ef} {entry[f'recall_ef{ef}_min']:.3f} / {entry[f'recall_ef{ef}_mean']:.3f}"
            for ef in EF_SEARCHES
        )
        print(f"{config}: {shown}  build {entry['build_s_mean']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": args.rows,
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
