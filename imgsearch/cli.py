"""`imgsearch`: run the local stack, ingest folders of images, search by image or id, and a demo.

Every option shows its default and the environment variable it reads (`imgsearch CMD --help`).
Exit status: 0 success; 1 some images could not be ingested (each is listed); 2 an error that
stopped the command (its message says what to do).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# The local stack starts PostgreSQL with fork+exec while gRPC threads run; gRPC's fork handlers
# have nothing to do there but log a line each time. Set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from imgsearch._channel import ChannelSecurity  # noqa: E402
from imgsearch._signals import stop_on_signals  # noqa: E402
from imgsearch.client import DEFAULT_COLLECTION, Hit, ImageSearchClient, IngestItem  # noqa: E402
from imgsearch.errors import ImageSearchError, InvalidArgument  # noqa: E402
from imgsearch.regions import Box, crop  # noqa: E402
from imgsearch.v1 import embedder_pb2, searcher_pb2  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
RANDOM_WEIGHTS_WARNING = (
    "WARNING: the embedder runs on RANDOM weights: these results mean nothing about image "
    "content (fetch the ImageNet weights for real results)"
)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgsearch"


def stable_id(path: Path) -> int:
    """An id from the file's absolute path: the same file gets the same id on every run."""
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def image_files(paths: Sequence[str]) -> Iterator[Path]:
    """Image files named or found (recursively, in a stable order) under the given paths."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    yield found
        elif path.is_file():
            yield path
        else:
            raise ImageSearchError(f"{name}: no such file or folder")


# -- commands ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    stack = _start_stack(
        args,
        host=args.host,
        embedder_port=args.embedder_port,
        searcher_port=args.searcher_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tokens_file=args.tokens_file,
        embedder_metrics_address=args.embedder_metrics_address,
        searcher_metrics_address=args.searcher_metrics_address,
    )
    if stack is None:
        return 2
    stop = stop_on_signals()
    print(f"embedder  {stack.embedder_address}", flush=True)
    print(f"searcher  {stack.searcher_address}", flush=True)
    print(f"data      {args.data_dir}", flush=True)
    if args.tls_cert:
        mutual = ", client certificates required" if args.tls_client_ca else ""
        print(f"tls       on ({args.tls_cert}{mutual}): clients pass --tls-ca", flush=True)
    if (
        args.tokens_file
        or os.environ.get("IMGSEARCH_TOKEN")
        or os.environ.get("IMGSEARCH_READ_TOKEN")
    ):
        print("auth      bearer tokens required (clients: IMGSEARCH_TOKEN or --token-file)")
    for name, url in stack.metrics_urls.items():
        print(f"metrics   {name} {url}", flush=True)
    page = None
    try:
        if args.web:
            security = ChannelSecurity.from_env()
            if args.tls_cert:
                security = replace(security, tls=True)
            page = _start_page(
                args.web,
                ImageSearchClient(
                    stack.embedder_address, stack.searcher_address, security=security
                ),
                collection=DEFAULT_COLLECTION,
                max_upload_mb=20.0,
            )
            print(f"web       {page.url}", flush=True)
        if stack.model_info.weights_source == "random":
            print(RANDOM_WEIGHTS_WARNING, flush=True)
        print("ready; Ctrl-C stops everything", flush=True)
        stop.wait()
        print("stopping …", flush=True)
    finally:
        if page is not None:
            page.stop()
        stack.stop()
    print("stopped", flush=True)
    return 0


class _Page:
    """The search page's server and the client it searches with, stopped together."""

    def __init__(self, server: Any, client: ImageSearchClient) -> None:
        self.server, self.client = server, client
        self.url: str = server.url

    def stop(self) -> None:
        self.server.stop()
        self.client.close()


def _start_page(
    address: str, client: ImageSearchClient, *, collection: str, max_upload_mb: float
) -> _Page:
    """The search page on `address`, searching through `client` (closed with it, or at once
    when the page cannot start)."""
    try:
        try:
            from webui.app import WebConfig, create_app
            from webui.server import WebServer, is_loopback, split_address
        except ImportError as exc:
            raise ImageSearchError(f"the search page needs its extra ({exc})") from None
        try:
            host, _ = split_address(address)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if max_upload_mb <= 0:
            raise InvalidArgument("--max-upload-mb must be above 0")
        config = WebConfig(collection=collection, max_upload_bytes=int(max_upload_mb * 1e6))
        try:
            server = WebServer(create_app(client, config), address).start()
        except OSError as exc:
            raise ImageSearchError(f"the search page cannot listen on {address}: {exc}") from None
    except BaseException:
        client.close()
        raise
    if not is_loopback(host):
        print(
            f"WARNING: the search page listens on {host}, beyond this machine, and asks no "
            "one for a password: anyone who can reach it can search and see the pictures",
            file=sys.stderr,
        )
    return _Page(server, client)


def cmd_web(args: argparse.Namespace) -> int:
    page = _start_page(
        args.address, _client(args), collection=args.collection, max_upload_mb=args.max_upload_mb
    )
    stop = stop_on_signals()
    print(f"web       {page.url}", flush=True)
    print(f"searching {args.collection} through {args.embedder} and {args.searcher}", flush=True)
    print("ready; Ctrl-C stops the page", flush=True)
    try:
        stop.wait()
    finally:
        page.stop()
    print("stopped", flush=True)
    return 0


def _start_stack(args: argparse.Namespace, **settings: Any) -> Any:
    """The local stack, started with the model options in `args` and `settings`, or None after
    saying why it could not start. The server side is imported here, and only here."""
    try:
        from embedder.model import ModelLoadError
        from searcher.embedded import EmbeddedDatabaseError
        from serving.local_stack import LocalStack, StackConfig
    except ImportError as exc:
        raise ImageSearchError(
            f"`imgsearch {args.command}` runs both services on this machine and needs them "
            f"installed: pip install 'imgsearch[all]' ({exc})"
        ) from None
    config = StackConfig(
        data_dir=Path(args.data_dir),
        weights=args.weights,
        model=args.model,
        head=args.head,
        runtime=args.runtime,
        seed=args.seed,
        **settings,
    )
    try:
        return LocalStack(config).start()
    except EmbeddedDatabaseError as exc:
        print(f"imgsearch: the searcher cannot start: {exc}", file=sys.stderr)
        return None
    except ModelLoadError as exc:
        print(f"imgsearch: the embedder cannot start: {exc}", file=sys.stderr)
        if config.weights == "imagenet":
            print(
                "imgsearch: without ImageNet weights you can still try everything with "
                "--weights random (results are then meaningless)",
                file=sys.stderr,
            )
        return None


def cmd_ingest(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.cifar100:
            if args.paths:
                raise ImageSearchError("give either PATHs or --cifar100 ROOT, not both")
            return ingest_cifar100(client, args.cifar100, args.split, args.update)
        if not args.paths:
            raise ImageSearchError("give the image files or folders to ingest, or --cifar100 ROOT")
        return ingest_paths(client, args.paths, label=args.label, update=args.update)


def ingest_paths(
    client: ImageSearchClient, paths: Sequence[str], *, label: str = "", update: bool = False
) -> int:
    files = list(image_files(paths))
    unreadable: list[tuple[str, str]] = []

    def item(path: Path) -> IngestItem | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            unreadable.append((str(path), exc.strerror or str(exc)))
            return None
        return IngestItem(
            id=stable_id(path), image=data, label=label or path.parent.name, uri=str(path.resolve())
        )

    return ingest_items(
        client, [(stable_id(p), functools.partial(item, p)) for p in files], update, unreadable
    )


def ingest_cifar100(client: ImageSearchClient, root: str, split: str, update: bool) -> int:
    from imgsearch.cifar import cifar100_item, load_cifar100

    dataset = load_cifar100(Path(root), split=split)
    sources: list[tuple[int, Callable[[], IngestItem | None]]] = [
        (index, functools.partial(cifar100_item, dataset, split, index))
        for index in range(len(dataset.data))
    ]
    return ingest_items(client, sources, update)


def ingest_items(
    client: ImageSearchClient,
    sources: Sequence[tuple[int, Callable[[], IngestItem | None]]],
    update: bool,
    unreadable: list[tuple[str, str]] | None = None,
) -> int:
    """Ingest (id, how to load it) pairs with a progress bar and a summary. Unless `update`,
    ids already stored are skipped: re-running resumes an interrupted ingest."""
    from tqdm import tqdm

    unreadable = [] if unreadable is None else unreadable
    skipped = 0
    if not update:
        client.ensure_collection()
        present: set[int] = set()
        ids = [item_id for item_id, _ in sources]
        for start in range(0, len(ids), 1000):
            present |= client.existing_ids(ids[start : start + 1000])
        skipped = sum(1 for item_id, _ in sources if item_id in present)
        sources = [(i, load) for i, load in sources if i not in present]

    def items() -> Iterator[IngestItem]:
        for _, load in sources:
            item = load()
            if item is None:
                bar.update(1)
            else:
                yield item

    started = time.monotonic()
    with tqdm(total=len(sources), unit="img", desc="ingest", file=sys.stderr) as bar:
        report = client.ingest(items(), on_progress=bar.update)
    elapsed = time.monotonic() - started
    failed = [(item.uri, reason) for item, reason in report.failed] + unreadable
    rate = report.stored / elapsed if elapsed > 0 else 0.0
    print(
        f"ingested {report.stored} ({report.inserted} new, {report.updated} updated), "
        f"skipped {skipped} already stored, failed {len(failed)} — {rate:.1f} images/s"
    )
    for uri, reason in failed:
        print(f"  failed: {uri}: {reason}")
    return 1 if failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    if bool(args.images) == (args.id is not None):
        raise ImageSearchError("give the query: one or more image files, or --id ID")
    if args.box and args.id is not None:
        raise ImageSearchError("--box cuts a region out of a query image; --id has none")
    box = Box.parse(args.box) if args.box else None
    ranges = {"min_distance": args.min_distance, "max_distance": args.max_distance}
    with _client(args) as client:
        if args.id is not None:
            hits = client.search_id(args.id, args.top_k, labels=args.label, **ranges)
            show_hits(hits, as_json=args.json)
            if args.grid:
                write_grid(args.grid, None, f"id {args.id}", hits, False)
            return 0
        outcomes = client.search_images(
            args.images, args.top_k, box=box, labels=args.label, **ranges
        )
        random_weights = _random_weights(client)
    if len(args.images) == 1:
        (only,) = outcomes
        if isinstance(only, ImageSearchError):
            raise only
        show_hits(only, as_json=args.json, random_weights=random_weights)
        if args.grid:
            image = args.images[0]
            write_grid(args.grid, _query_picture(image, box), Path(image).name, only,
                       random_weights)  # fmt: skip
        return 0
    show_several(args.images, outcomes, as_json=args.json, random_weights=random_weights)
    if args.grid:
        # One sheet per query image: out-01.png, out-02.png, ... in the order given.
        out = Path(args.grid)
        for number, (image, found) in enumerate(zip(args.images, outcomes, strict=True), 1):
            if not isinstance(found, ImageSearchError):
                sheet = out.with_name(f"{out.stem}-{number:02d}{out.suffix or '.png'}")
                write_grid(str(sheet), _query_picture(image, box), Path(image).name, found,
                           random_weights)  # fmt: skip
    return 1 if any(isinstance(o, ImageSearchError) for o in outcomes) else 0


def show_several(
    images: Sequence[str],
    outcomes: Sequence[Sequence[Hit] | ImageSearchError],
    *,
    as_json: bool,
    random_weights: bool,
) -> None:
    """Each query image's hits (or why it has none), keyed by the file as given."""
    if as_json:
        queries: dict[str, Any] = {}
        for image, outcome in zip(images, outcomes, strict=True):
            if isinstance(outcome, ImageSearchError):
                queries[image] = {"error": str(outcome)}
            else:
                queries[image] = {"hits": _hits_json(outcome)}
        print(json.dumps({"queries": queries, "random_weights": random_weights}, indent=2))
        return
    if random_weights:
        print(RANDOM_WEIGHTS_WARNING)
    for image, outcome in zip(images, outcomes, strict=True):
        print(f"\n== {image}")
        if isinstance(outcome, ImageSearchError):
            print(f"  failed: {outcome}")
        else:
            show_hits(outcome)


def _query_picture(image: str, box: Box | None) -> Any:
    data = Path(image).read_bytes()
    if box is not None:
        data = crop(data, box, max_pixels=1 << 62)  # already cropped once under the limit
    return _open(data)


def _random_weights(client: ImageSearchClient) -> bool:
    try:
        return bool(client.model_info().weights_source == embedder_pb2.WEIGHTS_SOURCE_RANDOM)
    except ImageSearchError:
        return False


def show_hits(hits: Sequence[Hit], *, as_json: bool = False, random_weights: bool = False) -> None:
    if as_json:
        print(
            json.dumps(
                {"hits": _hits_json(hits), "random_weights": random_weights},
                indent=2,
            )
        )
        return
    if random_weights:
        print(RANDOM_WEIGHTS_WARNING)
    print(f"{'rank':>4}  {'id':>20}  {'label':<16}  {'distance':>10}  uri")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.id:>20}  {hit.label[:16]:<16}  {hit.distance:>10.4f}  {hit.uri}")
    if not hits:
        print("(no hits: the collection is empty or nothing matches the filter)")


def _hits_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {"rank": r, "id": h.id, "label": h.label, "distance": h.distance,
         "uri": h.uri, "attributes": h.attributes}
        for r, h in enumerate(hits, 1)
    ]  # fmt: skip


def write_grid(
    out: str,
    query_image: Any,
    query_caption: str,
    hits: Sequence[Hit],
    random_weights: bool,
) -> None:
    from imgsearch.grid import GridHit, load_image, name_of, search_grid

    grid = search_grid(
        query_image,
        query_caption,
        [
            GridHit(load_image(h.uri) if h.uri else None, h.label, h.distance, name_of(h.uri))
            for h in hits
        ],
        warning="RANDOM WEIGHTS: these results say nothing about image content"
        if random_weights
        else "",
    )
    grid.save(out)
    print(f"wrote {Path(out).resolve()}")


def _open(data: bytes) -> Any:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except OSError:
        return None


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Find the collection's groups of near-duplicates, print them, optionally draw them."""
    from tqdm import tqdm

    with _client(args) as client:
        max_distance = args.max_distance
        if max_distance is None:
            max_distance = client.suggested_duplicate_distance()
        with tqdm(desc="comparing", unit=" items", disable=args.json, file=sys.stderr) as bar:

            def progress(scanned: int, total: int) -> None:
                bar.total = total
                bar.update(scanned - bar.n)

            groups = client.find_duplicates(
                max_distance,
                labels=args.label,
                limit=args.limit,
                exact=args.exact,
                on_progress=progress,
            )
    if args.json:
        print(
            json.dumps(
                {
                    "max_distance": max_distance,
                    "groups": [
                        [{"id": m.id, "label": m.label, "uri": m.uri, "distance": m.distance}
                         for m in group]
                        for group in groups
                    ],
                },
                indent=2,
            )
        )  # fmt: skip
    else:
        items = sum(len(group) for group in groups)
        print(f"{len(groups)} groups of near-duplicates ({items} items) within {max_distance:g}")
        for number, group in enumerate(groups, 1):
            print(f"group {number}: {len(group)} items")
            for member in group:
                print(
                    f"  {member.id:>20}  {member.label[:16]:<16}  {member.distance:>10.4f}  "
                    f"{member.uri}"
                )
    if args.grid:
        write_duplicate_sheets(Path(args.grid), groups)
    return 0


def write_duplicate_sheets(folder: Path, groups: Sequence[Sequence[Any]]) -> None:
    """One picture per group: its first member, then the others with their distance to it."""
    from imgsearch.grid import GridHit, load_image, name_of, search_grid

    folder.mkdir(parents=True, exist_ok=True)
    for number, group in enumerate(groups, 1):
        first, *rest = group
        sheet = search_grid(
            load_image(first.uri) if first.uri else None,
            f"id {first.id} {name_of(first.uri)}",
            [
                GridHit(load_image(m.uri) if m.uri else None, m.label, m.distance, name_of(m.uri))
                for m in rest
            ],
            first_caption=f"group {number}",
        )
        sheet.save(folder / f"group-{number:04d}.png")
    print(f"wrote {len(groups)} sheets to {folder.resolve()}")


def cmd_import_features(args: argparse.Namespace) -> int:
    from imgsearch.features import read_features

    with _client(args) as client, open(args.file, encoding="utf-8") as lines:
        stored = client.import_features(read_features(lines))
    print(f"imported {stored} rows from {args.file} into {args.collection}")
    return 0


def cmd_export_features(args: argparse.Namespace) -> int:
    from imgsearch import vectors
    from imgsearch.features import write_features

    with _client(args) as client, open(args.file, "w", encoding="utf-8") as out:
        count = write_features(
            out,
            ((i.id, i.label, vectors.from_proto(i.vector)) for i in client.list_items()),
        )
    print(f"exported {count} rows of {args.collection} to {args.file}")
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(f"{'name':<24} {'dim':>5}  {'metric':<20} model")
        for c in client.collections():
            metric = searcher_pb2.Metric.Name(c.metric)
            print(f"{c.name:<24} {c.dim:>5}  {metric:<20} {c.model_fingerprint or '-'}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    index, params = stats.index, stats.index_params
    kind = searcher_pb2.IndexKind.Name(params.kind).removeprefix("INDEX_KIND_")
    if stats.index_present:
        built = f"HNSW over {kind}, m={params.m}, ef_construction={params.ef_construction}"
        built += (
            f", build {index.generation}: {index.built_rows} rows in {index.build_seconds:.1f} s"
        )
    else:
        built = f"none yet ({kind} is built at the end of the first load; searches are exact)"
    if index.HasField("recall"):
        recall = f"{index.recall:.3f} recall@10 on {index.recall_sample} stored vectors"
        effort = f"ef_search {index.ef_search}"
        effort += f", {index.candidates} candidates re-ranked exactly" if index.candidates else ""
    else:
        recall = "not measured yet" if stats.index_present else "-"
        effort = "server defaults"
    live = f"{stats.live_recall:.3f}" if stats.HasField("live_recall") else "no shadow query yet"
    rows = [
        ("collection", args.collection),
        ("rows", str(stats.row_count)),
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
    for name, value in rows:
        print(f"{name:<15} {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the stack, ingest a labelled image set, search with a re-encoded copy of one of
    its images, print the hits and write the grid."""
    from PIL import Image

    from imgsearch.demo_data import write_dataset

    data_dir = Path(args.data_dir)
    paths = cifar100_files(Path(args.cifar100), data_dir / "cifar-images", args.cifar_images)
    if paths:
        images_dir = data_dir / "cifar-images"
        print(f"demo: {len(paths)} CIFAR-100 training images from {args.cifar100}", flush=True)
    else:
        images_dir = data_dir / "demo-images"
        print(
            f"demo: no CIFAR-100 under {args.cifar100}; generating a labelled image set in "
            f"{images_dir}",
            flush=True,
        )
        paths = write_dataset(images_dir, per_label=args.per_label)
    stack = _start_stack(args, embedder_port=0, searcher_port=0)
    if stack is None:
        return 2
    try:
        random_weights = stack.model_info.weights_source == "random"
        if random_weights:
            print(RANDOM_WEIGHTS_WARNING, flush=True)
        print(f"demo: embedder {stack.embedder_address}, searcher {stack.searcher_address}")
        with ImageSearchClient(
            stack.embedder_address, stack.searcher_address, collection=args.collection
        ) as client:
            status = ingest_paths(client, [str(images_dir)])
            query_path = paths[len(paths) // 3]
            original = Image.open(query_path).convert("RGB")
            copy = original.resize((original.width * 9 // 10, original.height * 9 // 10))
            buffer = io.BytesIO()
            copy.save(buffer, "JPEG", quality=75)
            print(f"demo: searching with a smaller, re-compressed copy of {query_path}")
            hits = client.search_image(buffer.getvalue(), top_k=args.top_k)
            show_hits(hits, random_weights=random_weights)
            write_grid(args.grid, copy, query_path.name, hits, random_weights)
            if random_weights:
                print(RANDOM_WEIGHTS_WARNING)
        page_command = [
            "imgsearch", "up", "--data-dir", str(data_dir), "--web",
            *(["--weights", args.weights] if args.weights != "imagenet" else []),
            *(["--model", args.model] if args.model != "squeezenet1_1" else []),
            *(["--head", args.head] if args.head != "logits" else []),
        ]  # fmt: skip
        print(
            "search page: run `" + " ".join(page_command) + "`, then open "
            f"http://127.0.0.1:8080/?collection={args.collection}"
        )
        return status
    finally:
        stack.stop()


def cifar100_files(root: Path, out: Path, count: int) -> list[Path]:
    """The first `count` CIFAR-100 training images as PNG files under out/<class>/ (so the grid
    can show them), or [] when no local copy is there. The demo never downloads."""
    if not (root / "cifar-100-python").is_dir():
        return []
    from imgsearch.cifar import cifar100_item, load_cifar100

    try:
        dataset = load_cifar100(root, split="train", download=False)
    except ImageSearchError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return []
    paths = []
    for index in range(min(count, len(dataset.data))):
        item = cifar100_item(dataset, "train", index)
        path = out / item.label / f"{index:05d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.image)
        paths.append(path)
    return paths


# -- wiring ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ImageSearchClient:
    return ImageSearchClient(
        args.embedder,
        args.searcher,
        collection=args.collection,
        timeout_s=args.timeout,
        force=args.force,
        security=_security(args),
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedder",
        default=_env("IMGSEARCH_EMBEDDER", "localhost:50051"),
        help="embedder address: host:port, host1:port,host2:port, or dns:///name:port "
        "[env IMGSEARCH_EMBEDDER]",
    )
    parser.add_argument(
        "--searcher",
        default=_env("IMGSEARCH_SEARCHER", "localhost:50052"),
        help="searcher address [env IMGSEARCH_SEARCHER]",
    )
    parser.add_argument(
        "--collection",
        default=_env("IMGSEARCH_COLLECTION", DEFAULT_COLLECTION),
        help="collection [env IMGSEARCH_COLLECTION]",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    parser.add_argument(
        "--force",
        action="store_true",
        help="use a collection filled by a different model (vectors will not be comparable)",
    )
    security = ChannelSecurity.from_env()
    parser.add_argument(
        "--tls",
        action="store_true",
        default=security.tls,
        help="connect with TLS (implied by --tls-ca/--tls-cert) [env IMGSEARCH_TLS=1]",
    )
    for name, default, what in (
        ("ca", security.ca_file, "PEM CA bundle to trust (default: the system's)"),
        ("cert", security.cert_file, "client certificate, for mutual TLS"),
        ("key", security.key_file, "key of --tls-cert"),
    ):
        parser.add_argument(
            f"--tls-{name}", default=default, help=f"{what} [env IMGSEARCH_TLS_{name.upper()}]"
        )
    parser.add_argument(
        "--token-file",
        default="",
        help="file holding the bearer token to send (or set the env IMGSEARCH_TOKEN)",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The embedder's model, as `python -m embedder` takes it."""
    parser.add_argument(
        "--model", default="squeezenet1_1", help="torchvision model (squeezenet1_1, resnet50, ...)"
    )
    parser.add_argument(
        "--head",
        default="logits",
        help="logits (the classifier output) or gem (GeM-pooled features, L2-normalised; "
        "better for finding the same picture)",
    )
    parser.add_argument(
        "--runtime",
        default="auto",
        help="auto (ONNX Runtime on CPU when installed, else torch), torch or onnx",
    )
    parser.add_argument(
        "--weights",
        default=_env("IMGSEARCH_WEIGHTS", "imagenet"),
        help="imagenet, a state_dict path, or random (meaningless results) [env IMGSEARCH_WEIGHTS]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")


def _serving_options(parser: argparse.ArgumentParser) -> None:
    """The servers' own TLS, token and metrics settings, for both services of `imgsearch up`."""
    parser.add_argument(
        "--tls-cert",
        default="",
        help="PEM certificate chain: both services serve TLS (with --tls-key)",
    )
    parser.add_argument(
        "--tls-key",
        default="",
        help="PEM private key of --tls-cert",
    )
    parser.add_argument(
        "--tls-client-ca",
        default="",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    parser.add_argument(
        "--tokens-file",
        default="",
        help="bearer tokens, one 'read TOKEN' or 'write TOKEN' per line; with it (or "
        "IMGSEARCH_TOKEN / IMGSEARCH_READ_TOKEN set) every call but health needs a token",
    )
    parser.add_argument(
        "--embedder-metrics-address",
        default="",
        help="host:port for the embedder's Prometheus /metrics (empty: off; port 0 picks one)",
    )
    parser.add_argument(
        "--searcher-metrics-address",
        default="",
        help="host:port for the searcher's Prometheus /metrics (empty: off; port 0 picks one)",
    )


def _security(args: argparse.Namespace) -> ChannelSecurity:
    token = ChannelSecurity.from_env().token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {args.token_file}: {exc.strerror}") from None
    return ChannelSecurity(
        tls=bool(args.tls or args.tls_ca or args.tls_cert),
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        token=token,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch", description=__doc__, formatter_class=_Formatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = _env("IMGSEARCH_DATA_DIR", str(default_data_dir()))

    up = commands.add_parser(
        "up",
        help="run PostgreSQL + searcher + embedder here until Ctrl-C",
        formatter_class=_Formatter,
    )
    up.add_argument(
        "--data-dir", default=data_dir, help="where the database lives [env IMGSEARCH_DATA_DIR]"
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--embedder-port", type=int, default=50051, help="0 picks a free port")
    up.add_argument("--searcher-port", type=int, default=50052, help="0 picks a free port")
    _model_options(up)
    _serving_options(up)
    up.add_argument(
        "--web",
        nargs="?",
        const="127.0.0.1:8080",
        default="",
        metavar="ADDRESS",
        help="also serve the search page (host:port; 127.0.0.1:8080 when none is given)",
    )
    up.set_defaults(run=cmd_up)

    ingest = commands.add_parser(
        "ingest",
        help="embed and store images (folders are walked recursively)",
        formatter_class=_Formatter,
    )
    _client_options(ingest)
    ingest.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    ingest.add_argument(
        "--cifar100",
        metavar="ROOT",
        help="ingest CIFAR-100 from ROOT through torchvision (downloaded when missing and "
        "online); ids = dataset indices, labels = class names",
    )
    ingest.add_argument(
        "--split", default="train", choices=["train", "test"], help="CIFAR-100 split"
    )
    ingest.add_argument(
        "--label", default="", help="label for every image (default: its folder's name)"
    )
    ingest.add_argument("--update", action="store_true", help="re-embed images already stored")
    ingest.set_defaults(run=cmd_ingest)

    search = commands.add_parser(
        "search",
        help="the stored images nearest to an image or a stored id",
        formatter_class=_Formatter,
    )
    _client_options(search)
    search.add_argument(
        "images", nargs="*", metavar="IMAGE", help="query image files, each with its own hits"
    )
    search.add_argument("--id", type=int, help="search with the stored item's own vector")
    search.add_argument(
        "--box",
        metavar="X,Y,W,H",
        help="search by this region of each image (pixels, after EXIF orientation)",
    )
    search.add_argument(
        "--min-distance",
        type=float,
        default=0.0,
        help="leave out hits nearer than this: the query's near-duplicates (see GetModelInfo "
        "duplicate_distance)",
    )
    search.add_argument(
        "--max-distance",
        type=float,
        default=0.0,
        help="keep only hits this near: the query's near-duplicates; 0 for no bound",
    )
    search.add_argument("--top-k", type=int, default=10, help="how many hits")
    search.add_argument(
        "--label", action="append", default=[], help="only these labels (repeatable)"
    )
    search.add_argument("--json", action="store_true", help="print JSON for scripts")
    search.add_argument("--grid", metavar="PNG", help="write a picture of the query and its hits")
    search.set_defaults(run=cmd_search)

    duplicates = commands.add_parser(
        "duplicates",
        help="groups of near-duplicate images in the collection",
        formatter_class=_Formatter,
    )
    _client_options(duplicates)
    duplicates.add_argument(
        "--max-distance",
        type=float,
        help="items this close are duplicates (default: the embedder's suggestion for its "
        "model, GetModelInfo duplicate_distance)",
    )
    duplicates.add_argument(
        "--label", action="append", default=[], help="only these labels (repeatable)"
    )
    duplicates.add_argument("--limit", type=int, default=0, help="most groups; 0 for all")
    duplicates.add_argument(
        "--exact", action="store_true", help="compare every pair exactly (slower)"
    )
    duplicates.add_argument("--json", action="store_true", help="print JSON for scripts")
    duplicates.add_argument(
        "--grid", metavar="DIR", help="write one picture per group into this folder"
    )
    duplicates.set_defaults(run=cmd_duplicates)

    for name, run, text in (
        ("import-features", cmd_import_features, "store vectors from a id|label|{v1,...} file"),
        ("export-features", cmd_export_features, "write a collection as id|label|{v1,...} lines"),
    ):
        sub = commands.add_parser(name, help=text, formatter_class=_Formatter)
        _client_options(sub)
        sub.add_argument("file", metavar="FILE", help="the feature file, one line per image")
        sub.set_defaults(run=run)

    for name, run, text in (
        ("collections", cmd_collections, "list collections"),
        ("stats", cmd_stats, "rows, index and size of a collection"),
    ):
        sub = commands.add_parser(name, help=text, formatter_class=_Formatter)
        _client_options(sub)
        sub.set_defaults(run=run)

    web = commands.add_parser(
        "web",
        help="a search page in the browser: drop an image, see the matches",
        formatter_class=_Formatter,
    )
    _client_options(web)
    web.add_argument(
        "--address",
        default=_env("IMGSEARCH_WEB_ADDRESS", "127.0.0.1:8080"),
        help="host:port to serve the page on; loopback unless you choose otherwise "
        "[env IMGSEARCH_WEB_ADDRESS]",
    )
    web.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest picture the page takes, MB"
    )
    web.set_defaults(run=cmd_web)

    demo = commands.add_parser(
        "demo",
        help="the whole thing in one command: stack, a labelled image set, a search, a grid",
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "--data-dir", default=str(Path(data_dir) / "demo"), help="demo database and images"
    )
    _model_options(demo)
    demo.add_argument("--collection", default="demo", help="collection to fill")
    demo.add_argument(
        "--cifar100",
        default=str(Path(data_dir) / "cifar100"),
        metavar="ROOT",
        help="use CIFAR-100 from this folder when it holds cifar-100-python/ (never downloaded "
        "by the demo; `imgsearch ingest --cifar100 ROOT` downloads)",
    )
    demo.add_argument("--cifar-images", type=int, default=2000, help="CIFAR-100 images to use")
    demo.add_argument(
        "--per-label", type=int, default=20, help="generated images per label (10 labels)"
    )
    demo.add_argument("--top-k", type=int, default=10, help="hits to show")
    demo.add_argument("--grid", default="imgsearch-demo.png", help="where to write the grid")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except ImageSearchError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgsearch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
