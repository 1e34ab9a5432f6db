"""`imgsearch web`: the search page over running services, until Ctrl-C; `start_page` also
serves `imgsearch up --web`."""

from __future__ import annotations

import argparse
from typing import Any

from imgsearch import defaults
from imgsearch._signals import stop_on_signals
from imgsearch.cli.options import add_command, client_from, env
from imgsearch.client import ImageSearchClient
from imgsearch.errors import ConfigError, ImageSearchError, InvalidArgument, MissingExtra


def add_web(commands: Any) -> None:
    web = add_command(
        commands, "web", cmd_web, "a search page in the browser: drop an image, see the matches"
    )
    web.add_argument(
        "--address",
        default=env("IMGSEARCH_WEB_ADDRESS", defaults.WEB_ADDRESS),
        help="host:port to serve the page on; loopback unless you choose otherwise "
        "[env IMGSEARCH_WEB_ADDRESS]",
    )
    add_page_token_option(web)
    web.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.MAX_UPLOAD_BYTES / 1e6,
        help="largest picture the page takes, MB",
    )


def cmd_web(args: argparse.Namespace) -> int:
    limit = upload_limit(args.max_upload_mb)
    page = start_page(
        args.address,
        client_from(args),
        collection=args.collection,
        max_upload_bytes=limit,
        token_file=args.page_token_file,
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


def add_page_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-token-file",
        default="",
        metavar="FILE",
        help="file holding the token the page asks for (or set the env IMGSEARCH_PAGE_TOKEN); "
        "required when the page listens beyond loopback",
    )


def upload_limit(max_upload_mb: float) -> int:
    if max_upload_mb <= 0:
        raise InvalidArgument("--max-upload-mb must be above 0")
    return int(max_upload_mb * 1e6)


class Page:
    """The search page's server and the client it searches with, stopped together."""

    def __init__(self, server: Any, client: ImageSearchClient) -> None:
        self.server, self.client = server, client
        self.url: str = server.url

    def stop(self) -> None:
        self.server.stop()
        self.client.close()


def start_page(
    address: str,
    client: ImageSearchClient,
    *,
    collection: str = defaults.COLLECTION,
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES,
    token_file: str = "",
) -> Page:
    """The search page on `address`, searching through `client` (closed with it, or at once
    when the page cannot start). Beyond loopback it needs a page token (webui.access)."""
    try:
        try:
            from webui.access import PAGE_TOKEN_ENV, page_token
            from webui.app import WebConfig, create_app
            from webui.server import WebServer, is_loopback, split_address
        except ImportError as exc:
            raise MissingExtra(f"the search page needs its extra ({exc})") from None
        try:
            host, _ = split_address(address)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        token = page_token(token_file)
        if not token and not is_loopback(host):
            raise ConfigError(
                f"the search page would listen on {host}, beyond this machine, where anyone "
                f"could search and see the pictures: give it a token (env {PAGE_TOKEN_ENV} or "
                "--page-token-file FILE), or serve it on 127.0.0.1"
            )
        config = WebConfig(collection=collection, max_upload_bytes=max_upload_bytes, token=token)
        try:
            server = WebServer(create_app(client, config), address).start()
        except OSError as exc:
            raise ImageSearchError(f"the search page cannot listen on {address}: {exc}") from None
    except BaseException:
        client.close()
        raise
    if token:
        print("the search page asks for its token", flush=True)
    return Page(server, client)
