"""Running our commands as real processes in the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from tests.conftest import ROOT

# A proxy nobody listens on: downloads fail at once even on machines with a network, so the
# "not cached and cannot be downloaded" paths are tested everywhere.
DEAD_PROXY = "http://127.0.0.1:9"


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment with no way out to the internet, plus `extra`."""
    return dict(os.environ, https_proxy=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, **extra)


def run_module(
    module: str, *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` from the project root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )


def imgsearch(
    *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `imgsearch` CLI as a process."""
    return run_module("imgsearch.cli", *args, timeout=timeout, env=env)
