"""Running our commands as real processes in the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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


def start_service(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """`python -m module --address 127.0.0.1:0 args...` (imgsearch-embedder or -searcher),
    once it says it is listening; returns the process and its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--address", "127.0.0.1:0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else dict(env),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on port" in line:
            # Keep reading its log, so a chatty service never blocks on a full pipe.
            reader = threading.Thread(target=process.stdout.read, daemon=True)
            reader.start()
            _readers[process.pid] = reader
            return process, int(line.rsplit(" ", 1)[1])
    process.wait(timeout=30)
    raise AssertionError(f"{module} did not start")


_readers: dict[int, threading.Thread] = {}


def end_process(process: subprocess.Popen[str]) -> None:
    """Kill it if it still runs, reap it, close its pipe."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    reader = _readers.pop(process.pid, None)
    if reader is not None:
        reader.join(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
