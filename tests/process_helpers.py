"""Running our commands as real processes in the tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import psutil

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


# -- what the tests leave running ----------------------------------------------------------------


def processes_left_behind(basetemp: Path, started_after: float) -> list[psutil.Process]:
    """Processes started during the run that still live: this process's descendants, and any
    process whose command line names a path under the run's `basetemp` (PostgreSQL servers
    daemonise away from their parent, but their data directories are there). A PostgreSQL
    server's own workers are left out: they end with their postmaster."""
    me = psutil.Process()
    descendants = {child.pid for child in me.children(recursive=True)}
    ancestors = {me.pid} | {parent.pid for parent in me.parents()}  # e.g. `timeout ... pytest`
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        info = process.info
        if info["pid"] in ancestors or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (info["create_time"] or 0) < started_after:
            continue
        command = " ".join(info["cmdline"] or ())
        if command.startswith("postgres: "):
            continue  # a worker of a postmaster: reported through its postmaster
        if info["pid"] in descendants or str(basetemp) in command:
            found.append(process)
    return found


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}: (gone)"


def end_processes(processes: list[psutil.Process], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL what is still there after `grace_s`."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
