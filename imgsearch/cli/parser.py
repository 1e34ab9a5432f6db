"""The `imgsearch` command line, assembled: each command module adds its own subcommands."""

from __future__ import annotations

import argparse

import imgsearch.cli
from imgsearch.cli import admin, ingest, search, stack, web
from imgsearch.cli.options import Formatter

# In the order `imgsearch --help` lists them.
SUBCOMMANDS = (
    stack.add_up,
    ingest.add_ingest,
    search.add_search,
    search.add_duplicates,
    ingest.add_feature_files,
    admin.add_collections_and_stats,
    web.add_web,
    stack.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch", description=imgsearch.cli.__doc__, formatter_class=Formatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser
