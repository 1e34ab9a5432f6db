"""The console scripts of the services, as the wheel installs them for every install. Each
imports its service only when run, so one run where that service's extra is missing says which
extra to install, in one line, instead of a traceback."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from imgsearch.errors import MissingExtra


def _run(script: str, module: str) -> Callable[[], int]:
    def main() -> int:
        try:
            service_main: Callable[[], int] = importlib.import_module(module).main
        except MissingExtra as exc:
            print(f"{script}: {exc}", file=sys.stderr)
            return 2
        return service_main()

    return main


searcher = _run("imgsearch-searcher", "searcher.__main__")
embedder = _run("imgsearch-embedder", "embedder.__main__")
health = _run("imgsearch-health", "serving.healthcheck")
embedder_export = _run("imgsearch-embedder-export", "embedder.export")
