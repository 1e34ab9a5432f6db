"""Optional parts of one wheel: the servers and the search page come with extras, and each of
their packages checks on import that its extra is installed. When it is not, the error says
which one to install instead of failing later on some module deep inside."""

from __future__ import annotations

import importlib.util

from imgsearch.errors import MissingExtra


def require_extra(extra: str, *modules: str) -> None:
    """Raise MissingExtra naming `extra` unless every one of `modules` can be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"{', '.join(missing)} not installed: this part of imgsearch needs "
            f"pip install 'imgsearch[{extra}]'"
        )
