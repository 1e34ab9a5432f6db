"""Options several commands share, each added by one function and read back by one: where the
services are and how to reach them, which model the local stack serves, the servers' own TLS and
tokens, and how a search is answered."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgsearch import defaults
from imgsearch._channel import ChannelSecurity
from imgsearch.client import ImageSearchClient
from imgsearch.errors import InvalidArgument
from imgsearch.records import SearchOptions


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, and descriptions as written."""


def add_command(
    commands: Any,
    name: str,
    run: Callable[[argparse.Namespace], int],
    help: str,
    *,
    client: bool = True,
) -> argparse.ArgumentParser:
    """The subcommand `name`, which runs `run`; with the client options unless `client` is
    False (the commands that start the services themselves)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, formatter_class=Formatter
    )
    if client:
        add_client_options(parser)
    parser.set_defaults(run=run)
    return parser


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def data_dir_default() -> str:
    return env("IMGSEARCH_DATA_DIR", str(defaults.data_dir()))


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Where the services are, which collection, and how to reach them (TLS, token)."""
    parser.add_argument(
        "--embedder",
        default=env("IMGSEARCH_EMBEDDER", defaults.EMBEDDER_ADDRESS),
        help="embedder address: host:port, host1:port,host2:port, or dns:///name:port "
        "[env IMGSEARCH_EMBEDDER]",
    )
    parser.add_argument(
        "--searcher",
        default=env("IMGSEARCH_SEARCHER", defaults.SEARCHER_ADDRESS),
        help="searcher address [env IMGSEARCH_SEARCHER]",
    )
    parser.add_argument(
        "--collection",
        default=env("IMGSEARCH_COLLECTION", defaults.COLLECTION),
        help="collection [env IMGSEARCH_COLLECTION]",
    )
    parser.add_argument(
        "--timeout", type=float, default=defaults.CALL_TIMEOUT_S, help="deadline per call, seconds"
    )
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


def client_from(args: argparse.Namespace) -> ImageSearchClient:
    """The client add_client_options' flags describe."""
    return ImageSearchClient(
        args.embedder,
        args.searcher,
        collection=args.collection,
        timeout_s=args.timeout,
        force=args.force,
        security=security_from(args),
    )


def security_from(args: argparse.Namespace) -> ChannelSecurity:
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


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """Which items may be hits and how hard the index is walked (SearchOptions)."""
    parser.add_argument(
        "--min-distance",
        type=float,
        default=0.0,
        help="leave out hits nearer than this: the query's near-duplicates (see GetModelInfo "
        "duplicate_distance)",
    )
    parser.add_argument(
        "--max-distance",
        type=float,
        default=0.0,
        help="keep only hits this near: the query's near-duplicates; 0 for no bound",
    )
    parser.add_argument(
        "--label", action="append", default=[], help="only these labels (repeatable)"
    )
    parser.add_argument(
        "--ef-search",
        type=int,
        default=0,
        help="HNSW candidate list walked per query (0: the collection's calibrated effort)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="halfvec and binary indexes: candidates re-ranked by exact distance (0: the "
        "collection's calibrated number)",
    )
    parser.add_argument(
        "--exact", action="store_true", help="compare with every row: exact hits, slower"
    )
    parser.add_argument(
        "--vector",
        default="",
        help="search by one of the collection's named vectors (gem: copy detection, in a "
        "collection made by an embedder of logits,gem) instead of its own",
    )


def search_options_from(args: argparse.Namespace) -> SearchOptions:
    return SearchOptions(
        labels=tuple(args.label),
        min_distance=args.min_distance,
        max_distance=args.max_distance,
        ef_search=args.ef_search,
        candidates=args.candidates,
        exact=args.exact,
        vector=args.vector,
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The embedder's model, as `imgsearch-embedder` takes it."""
    parser.add_argument(
        "--model", default=defaults.MODEL, help="torchvision model (squeezenet1_1, resnet50, ...)"
    )
    parser.add_argument(
        "--head",
        default=defaults.STACK_HEAD,
        help="logits,gem: both vectors from one pass, stored with every item (the logits "
        "searched by default, the GeM vector for duplicates); logits (the classifier output) "
        "or gem (GeM-pooled features, L2-normalised; better for finding the same picture) "
        "alone",
    )
    parser.add_argument(
        "--runtime",
        default=defaults.RUNTIME,
        help="auto (ONNX Runtime on CPU when installed, else torch), torch or onnx",
    )
    parser.add_argument(
        "--weights",
        default=env("IMGSEARCH_WEIGHTS", defaults.WEIGHTS),
        help="imagenet, a state_dict path, or random (meaningless results) [env IMGSEARCH_WEIGHTS]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")


def model_settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The model add_model_options' flags name, as the local stack takes it."""
    return {name: getattr(args, name) for name in ("model", "head", "runtime", "weights", "seed")}


def add_serving_options(parser: argparse.ArgumentParser) -> None:
    """The servers' own TLS, token and metrics settings, for both services of `imgsearch up`."""
    parser.add_argument(
        "--tls-cert",
        default="",
        help="PEM certificate chain: both services serve TLS (with --tls-key)",
    )
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
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
    for service in ("embedder", "searcher"):
        parser.add_argument(
            f"--{service}-metrics-address",
            default="",
            help=f"host:port for the {service}'s Prometheus /metrics "
            "(empty: off; port 0 picks one)",
        )
