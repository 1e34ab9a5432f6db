"""Looking after collections: `imgsearch collections` and `imgsearch stats`."""

from __future__ import annotations

import argparse
from typing import Any

from imgsearch.cli.options import add_command, client_from
from imgsearch.records import CollectionStats


def add_collections_and_stats(commands: Any) -> None:
    add_command(commands, "collections", cmd_collections, "list collections")
    stats = add_command(commands, "stats", cmd_stats, "rows, index and size of a collection")
    stats.add_argument(
        "--vector",
        default="",
        help="the table and index of one of the collection's named vectors (gem) instead of "
        "its own",
    )


def cmd_collections(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        print(f"{'name':<24} {'dim':>5}  {'metric':<20} {'named vectors':<16} model")
        for c in client.collections():
            named = ",".join(f"{v.name} ({v.dim}-d)" for v in c.vectors) or "-"
            print(
                f"{c.name:<24} {c.dim:>5}  {c.metric:<20} {named:<16} {c.model_fingerprint or '-'}"
            )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        stats = client.stats(vector=args.vector)
    what = args.collection + (f", vector {args.vector}" if args.vector else "")
    for name, value in [("collection", what), *stats_rows(stats)]:
        print(f"{name:<15} {value}")
    return 0


def _rows(stats: CollectionStats) -> str:
    if not stats.index_present or not stats.fresh_rows:
        return str(stats.row_count)
    searched = "exactly until folded into it"
    if stats.fresh_cells:
        searched += (
            f"; a search reads those in the {stats.fresh_cells_searched} of "
            f"{stats.fresh_cells} cells nearest to its query"
        )
    added = f"{stats.fresh_rows} added since the index was built"
    return f"{stats.row_count} ({added}, searched {searched})"


def stats_rows(stats: CollectionStats) -> list[tuple[str, str]]:
    """What `imgsearch stats` shows of a collection, row by row."""
    index, kind = stats.index, stats.index_kind.upper()
    if stats.index_present:
        built = f"HNSW over {kind}, m={stats.m}, ef_construction={stats.ef_construction}"
        built += (
            f", build {index.generation}: {index.built_rows} rows in {index.build_seconds:.1f} s"
        )
        if index.graphs > 1:
            built += (
                f"; {index.graphs} graphs, one per coarse cell, a search walking the "
                f"{index.graphs_walked} nearest to its query"
            )
        for rebuilt in index.rebuilt_graphs:
            built += (
                f"; {rebuilt.graphs} of them rebuilt with m={rebuilt.m}, "
                f"ef_construction={rebuilt.ef_construction}"
            )
    else:
        built = f"none yet ({kind} is built at the end of the first load; searches are exact)"
    if index.recall is not None:
        recall = f"{index.recall:.3f} recall@10 on {index.recall_sample} held-out queries"
        effort = f"ef_search {index.ef_search}"
        effort += f", {index.candidates} candidates re-ranked exactly" if index.candidates else ""
    else:
        recall = "not measured yet" if stats.index_present else "-"
        effort = "server defaults"
    live = f"{stats.live_recall:.3f}" if stats.live_recall is not None else "no shadow query yet"
    return [
        ("rows", _rows(stats)),
        ("index", built),
        ("measured recall", recall),
        ("search effort", effort),
        ("live recall", live),
        ("upkeep", index.note or "-"),
        ("table size", f"{stats.table_bytes / 1e6:.1f} MB"),
        ("index size", f"{stats.index_bytes / 1e6:.1f} MB (all indexes of the collection)"),
        ("PostgreSQL", stats.postgres_version),
        ("pgvector", stats.pgvector_version),
        ("settings", ", ".join(f"{k}={v}" for k, v in sorted(stats.settings.items()))),
    ]
