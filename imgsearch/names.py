"""What a collection may be called: one rule for the searcher, the client and the search page.
The name becomes a table name, so it is kept to what PostgreSQL takes unquoted."""

from __future__ import annotations

import re

from imgsearch.errors import InvalidArgument

COLLECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def check_collection_name(name: str) -> None:
    """Raise InvalidArgument unless `name` is 1-63 lower case letters, digits and underscores,
    starting with a letter."""
    if not COLLECTION_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid collection name {name[:80]!r}: use 1-63 lower case letters, digits and "
            "underscores, starting with a letter"
        )
