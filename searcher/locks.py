"""Advisory locks that serialise a collection's builds (and what must not run beside them)
across searchers sharing one database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def advisory_lock(
    cur: Any, purpose: str, name: str, *, wait: bool = True, shared: bool = False
) -> Iterator[bool]:
    """A session lock on (purpose, name); with wait=False, yields False at once if another
    session holds it. Shared holders (folds) do not exclude each other, only the exclusive one
    (a build)."""
    key, kind = f"{purpose}:{name}", "_shared" if shared else ""
    if wait:
        cur.execute(f"SELECT pg_advisory_lock{kind}(hashtext(%s))", (key,))
    else:
        cur.execute(f"SELECT pg_try_advisory_lock{kind}(hashtext(%s))", (key,))
        if not cur.fetchone()[0]:
            yield False
            return
    try:
        yield True
    finally:
        cur.execute(f"SELECT pg_advisory_unlock{kind}(hashtext(%s))", (key,))
