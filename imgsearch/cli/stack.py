"""The local stack from the command line: `imgsearch up` (both services here until Ctrl-C) and
`imgsearch demo` (the whole job in one command). The one module of the client that reaches
server-side code, and only through the `stack` package, imported when these commands run."""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from imgsearch import defaults
from imgsearch._channel import ChannelSecurity
from imgsearch._signals import stop_on_signals
from imgsearch.cli.ingest import ingest_paths
from imgsearch.cli.options import (
    add_command,
    add_model_options,
    add_serving_options,
    data_dir_default,
    model_settings_from,
)
from imgsearch.cli.output import (
    RANDOM_WEIGHTS_WARNING,
    show_duplicates,
    show_hits,
    write_duplicate_sheets,
    write_grid,
)
from imgsearch.cli.web import add_page_token_option, start_page
from imgsearch.client import ImageSearchClient
from imgsearch.errors import (
    EmbeddedDatabaseError,
    ImageSearchError,
    MissingExtra,
    ModelLoadError,
)


def add_up(commands: Any) -> None:
    up = add_command(
        commands,
        "up",
        cmd_up,
        "run PostgreSQL + searcher + embedder here until Ctrl-C",
        client=False,
    )
    up.add_argument(
        "--data-dir",
        default=data_dir_default(),
        help="where the database lives [env IMGSEARCH_DATA_DIR]",
    )
    up.add_argument("--host", default=defaults.LOCAL_HOST, help="address to listen on")
    for service, port in (
        ("embedder", defaults.EMBEDDER_PORT),
        ("searcher", defaults.SEARCHER_PORT),
    ):
        up.add_argument(f"--{service}-port", type=int, default=port, help="0 picks a free port")
    add_model_options(up)
    add_serving_options(up)
    up.add_argument(
        "--web",
        nargs="?",
        const=defaults.WEB_ADDRESS,
        default="",
        metavar="ADDRESS",
        help=f"also serve the search page (host:port; {defaults.WEB_ADDRESS} when none is given)",
    )
    add_page_token_option(up)


def add_demo(commands: Any) -> None:
    demo = add_command(
        commands,
        "demo",
        cmd_demo,
        "the whole thing in one command: stack, a labelled image set with planted copies, a "
        "search, a grid, the near-duplicates",
        client=False,
    )
    data_dir = Path(data_dir_default())
    # demo-v2: photo-like pictures with planted copies. Earlier demos' flat pictures (and their
    # collection) stay in demo/: mixed with them, the duplicate search would show their groups.
    demo.add_argument(
        "--data-dir", default=str(data_dir / "demo-v2"), help="demo database and images"
    )
    add_model_options(demo)
    demo.add_argument("--collection", default="demo", help="collection to fill")
    demo.add_argument(
        "--cifar100",
        default=str(data_dir / "cifar100"),
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


def start_stack(args: argparse.Namespace, **settings: Any) -> Any:
    """The local stack, started with the model options in `args` and `settings`."""
    try:
        from stack import LocalStack, StackConfig
    except ImportError as exc:
        raise MissingExtra(
            f"`imgsearch {args.command}` runs both services on this machine and needs them "
            f"installed: pip install 'imgsearch[all]' ({exc})"
        ) from None
    config = StackConfig(data_dir=Path(args.data_dir), **model_settings_from(args), **settings)
    try:
        return LocalStack(config).start()
    except ModelLoadError as exc:
        way_out = (
            "; without ImageNet weights you can still try everything with --weights random "
            "(results are then meaningless)"
            if config.weights == defaults.WEIGHTS and "--weights random" not in str(exc)
            else ""
        )
        raise ModelLoadError(f"the embedder cannot start: {exc}{way_out}") from None
    except EmbeddedDatabaseError as exc:
        raise EmbeddedDatabaseError(f"the searcher cannot start: {exc}") from None


def cmd_up(args: argparse.Namespace) -> int:
    stack = start_stack(
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
    stop = stop_on_signals()
    _show_stack(args, stack)
    page = None
    try:
        if args.web:
            security = ChannelSecurity.from_env()
            if args.tls_cert:
                security = replace(security, tls=True)
            client = ImageSearchClient(
                stack.embedder_address, stack.searcher_address, security=security
            )
            page = start_page(args.web, client, token_file=args.page_token_file)
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


def _show_stack(args: argparse.Namespace, stack: Any) -> None:
    """What `imgsearch up` serves, where, and how a client gets in."""
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the stack, ingest a labelled image set with a few planted copies, search with a
    re-encoded copy of one of its images, print the hits and write the grid, then find the
    near-duplicates and say which groups are the planted copies."""
    from imgsearch.demo_data import plant_copies

    data_dir = Path(args.data_dir)
    images_dir, paths = _demo_images(args, data_dir)
    planted = plant_copies(paths)
    stack = start_stack(args, embedder_port=0, searcher_port=0)
    try:
        random_weights = stack.model_info.weights_source == "random"
        if random_weights:
            print(RANDOM_WEIGHTS_WARNING, flush=True)
        print(f"demo: embedder {stack.embedder_address}, searcher {stack.searcher_address}")
        with ImageSearchClient(
            stack.embedder_address, stack.searcher_address, collection=args.collection
        ) as client:
            _without_an_earlier_demos_collection(client)
            status = ingest_paths(client, [str(images_dir)])
            _search_with_a_copy(args, client, paths[len(paths) // 3], random_weights)
            _find_the_planted_copies(client, planted, data_dir / "duplicates")
        print(
            "search page: run `" + " ".join(_page_command(args, data_dir)) + "`, then open "
            f"http://{defaults.WEB_ADDRESS}/?collection={args.collection}"
        )
        return status
    finally:
        stack.stop()


def _without_an_earlier_demos_collection(client: ImageSearchClient) -> None:
    """Drop the demo's collection when an earlier demo made it without a vector this embedder
    serves (the gem vector its duplicates compare): it is the demo's own, and re-ingesting its
    pictures takes seconds."""
    from imgsearch.errors import NotFound
    from imgsearch.v1 import searcher_pb2

    try:
        described = client.describe_collection()
    except NotFound:
        return
    missing = {h.name for h in client.model_info().heads[1:]} - {v.name for v in described.vectors}
    if missing:
        print(
            f"demo: collection {described.name!r} is from an earlier demo, without the "
            f"{', '.join(sorted(missing))} vector: making it anew",
            flush=True,
        )
        client.searcher.DropCollection(searcher_pb2.DropCollectionRequest(name=described.name))


def _demo_images(args: argparse.Namespace, data_dir: Path) -> tuple[Path, list[Path]]:
    """CIFAR-100 pictures when a local copy is there, else a generated labelled set."""
    from imgsearch.demo_data import write_dataset

    paths = cifar100_files(Path(args.cifar100), data_dir / "cifar-images", args.cifar_images)
    if paths:
        print(f"demo: {len(paths)} CIFAR-100 training images from {args.cifar100}", flush=True)
        return data_dir / "cifar-images", paths
    images_dir = data_dir / "demo-images"
    print(
        f"demo: no CIFAR-100 under {args.cifar100}; generating a labelled image set in "
        f"{images_dir}",
        flush=True,
    )
    return images_dir, write_dataset(images_dir, per_label=args.per_label)


def _search_with_a_copy(
    args: argparse.Namespace, client: ImageSearchClient, query_path: Path, random_weights: bool
) -> None:
    """Search with a smaller, re-compressed copy of one ingested picture; show and draw it."""
    from PIL import Image

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


def _find_the_planted_copies(
    client: ImageSearchClient, planted: list[tuple[Path, Path, str]], sheets: Path
) -> None:
    """Find the collection's near-duplicates as `imgsearch duplicates` does (by its GeM vector
    when it has one), and say which groups are the planted copies and what else came back."""
    print(f"demo: {len(planted)} edited copies were planted among the pictures:")
    for original, copy, how in planted:
        print(f"  {copy.name}: {original.name} {how}")
    vector = client.duplicates_vector()
    head = vector or client.model_info().head
    distance = client.suggested_duplicate_distance(vector=vector)
    print(f"demo: comparing the {head} vectors of the pictures, within {distance:.4g}")
    groups = client.find_duplicates(max_distance=distance, vector=vector)
    show_duplicates(groups, distance, as_json=False)
    pairs = {frozenset((str(o.resolve()), str(c.resolve()))) for o, c, _ in planted}
    found = sum(frozenset(m.uri for m in group.members) in pairs for group in groups)
    others = len(groups) - found
    print(
        f"demo: {found} of the {len(planted)} planted copies came back as groups with their "
        f"originals; {others} other groups" + (_why_other_groups(head) if others else "")
    )
    for stale in sheets.glob("group-*.png"):  # the demo's own folder: an earlier run's sheets
        stale.unlink()
    write_duplicate_sheets(sheets, groups)


def _why_other_groups(head: str) -> str:
    """What the demo's other groups are: every picture it generated is a different one."""
    why = f" (distinct generated pictures that the {head} head puts within the distance"
    if head != "logits":
        return why + ")"
    return why + (
        "; the GeM head embeds for copy detection: `imgsearch demo --head gem "
        "--collection demo_gem`)"
    )


def _page_command(args: argparse.Namespace, data_dir: Path) -> list[str]:
    """`imgsearch up` over the demo's data, as the demo ran it, with the search page."""
    return [
        "imgsearch", "up", "--data-dir", str(data_dir), "--web",
        *(["--weights", args.weights] if args.weights != defaults.WEIGHTS else []),
        *(["--model", args.model] if args.model != defaults.MODEL else []),
        *(["--head", args.head] if args.head != defaults.STACK_HEAD else []),
    ]  # fmt: skip


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
