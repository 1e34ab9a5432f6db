"""The containers, run for real: build every image without Docker Hub or PyPI, start the stack with
docker-compose.yml and deploy/docker/compose.local.yml, and use it as a newcomer would.

Steps, each timed: a Debian base image made with debootstrap (cached), a wheelhouse made on the
host (cached, keyed by pyproject.toml), the images (PostgreSQL + pgvector from the embedded
server's wheel, the searcher, the slim embedder, the client and search page), a model file
exported on the host (random weights, fixed seed). Then: every service healthy; 200 generated
photo-like pictures ingested through the client image and each query's original first; the page
answering with its token and refusing without; the searcher killed mid-ingest (`docker kill`)
and crashed (SIGKILL from the host, as the OOM killer does), the ingest re-run with nothing lost
or doubled; `down` then `up` with the collection and its index still there; every container
running as a user other than root. Sizes and start times go to bench/results/compose.json.

Run by scripts/compose-test (README), and by .ci/run where Docker is available.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compose_build import (  # the sibling module: scripts/ is this script's path
    PICTURES,
    ROOT,
    WORK,
    base_image,
    build_images,
    compose_command,
    docker_unavailable,
    log,
    model_file,
    photos,
    run,
    torch_embedder,
    wheelhouse,
)

PROJECT = "imgsearch-compose-test"
SERVICES = ("postgres", "searcher", "embedder", "web")
LIMITS_MB = {"imgsearch-searcher:local": 400, "imgsearch-embedder-slim:local": 1000}


# -- the stack -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stack:
    """docker compose with the production file, the local override and this run's secrets."""

    def __init__(self, model: Path, photo_dir: Path) -> None:
        self.compose = [
            *compose_command(),
            "-p",
            PROJECT,
            "-f",
            "docker-compose.yml",
            "-f",
            "deploy/docker/compose.local.yml",
        ]
        self.page_token = secrets.token_urlsafe(16)
        # Free host ports, so a stack or server already on this machine is not in the way.
        self.web_port = free_port()
        self.env = dict(
            os.environ,
            WEB_HOST_PORT=str(self.web_port),
            SEARCHER_HOST_PORT=str(free_port()),
            SEARCHER_METRICS_HOST_PORT=str(free_port()),
            POSTGRES_PASSWORD=secrets.token_urlsafe(16),
            IMGSEARCH_PAGE_TOKEN=self.page_token,
            IMGSEARCH_MODEL_FILE=str(model),
            PHOTOS_DIR=str(photo_dir),
        )

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.compose, *args, cwd=ROOT, env=self.env, check=check)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.compose, *args],
            cwd=ROOT,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def container(self, service: str) -> str:
        (container,) = self("ps", "-q", service).stdout.split()
        return container

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("run", "--rm", "-T", "client", *args, check=check)

    def wait_healthy(self, services: tuple[str, ...], timeout_s: float = 300) -> dict[str, float]:
        """Seconds until each service's container says healthy."""
        started, healthy = time.monotonic(), dict[str, float]()
        while len(healthy) < len(services):
            for service in services:
                if service in healthy:
                    continue
                state = run(
                    "docker",
                    "inspect",
                    "-f",
                    "{{.State.Health.Status}}",
                    self.container(service),
                    check=False,
                ).stdout.strip()
                if state == "healthy":
                    healthy[service] = round(time.monotonic() - started, 1)
            if time.monotonic() - started > timeout_s:
                raise SystemExit(
                    f"not healthy after {timeout_s:.0f} s: "
                    f"{sorted(set(services) - set(healthy))}\n{self('logs').stdout[-4000:]}"
                )
            time.sleep(0.5)
        return healthy

    def rows(self) -> int:
        stats = self.client("stats").stdout
        found = re.search(r"^rows\s+(\d+)", stats, re.MULTILINE)
        assert found, stats
        return int(found.group(1))

    def stats(self) -> dict[str, str]:
        lines = self.client("stats").stdout.splitlines()
        return {line[:15].strip(): line[15:].strip() for line in lines if line.strip()}


def started_at(container: str) -> float:
    """When Docker started the container, as a Unix time."""
    text = run("docker", "inspect", "-f", "{{.State.StartedAt}}", container).stdout.strip()
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(
        f"0.{fraction or 0}"
    )


def up_measuring_cold_starts(stack: Stack) -> dict[str, float]:
    """`up -d` on an empty project; for each service, seconds from its container's start until
    its own health check command first passes (polled, not at Docker's 10 s interval)."""
    up = stack.popen("up", "-d", "--no-build")
    answered: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(answered) < len(SERVICES) and time.monotonic() < deadline:
        for service in SERVICES:
            found = stack("ps", "-q", service, check=False).stdout.split()
            if service in answered or not found:
                continue
            test = json.loads(
                run("docker", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", found[0]).stdout
            )
            command = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
            if run("docker", "exec", found[0], *command, check=False).returncode == 0:
                answered[service] = round(time.time() - started_at(found[0]), 1)
        time.sleep(0.2)
    if up.wait(timeout=300) != 0:
        raise SystemExit(f"docker compose up failed: {up.stderr.read() if up.stderr else ''}")
    return answered


def check(condition: bool, what: str, results: dict[str, Any]) -> None:
    results.setdefault("checks", {})[what] = bool(condition)
    log(("ok: " if condition else "FAILED: ") + what)


def originals_first(stack: Stack, count: int = 20) -> int:
    """How many of `count` pictures find themselves first, searched through the client image."""
    names = [f"photo-{i:03d}.jpg" for i in range(0, PICTURES, PICTURES // count)]
    answer = json.loads(
        stack.client("search", "--json", "--top-k", "3", *[f"/photos/{n}" for n in names]).stdout
    )
    return sum(
        1
        for name in names
        if (hits := answer["queries"][f"/photos/{name}"]["hits"]) and hits[0]["uri"].endswith(name)
    )


def page_answers(stack: Stack, photo: Path) -> tuple[int, int, str]:
    """The page's status for a search without the token and with it, and its first hit."""

    def post(headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{stack.web_port}/api/search?top_k=3",
            data=photo.read_bytes(),
            method="POST",
            headers={"Content-Type": "image/jpeg", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, {}

    without, _ = post({})
    wrong, _ = post({"Authorization": "Bearer not-the-token"})
    assert wrong == without, (wrong, without)
    status, answer = post({"Authorization": f"Bearer {stack.page_token}"})
    return without, status, answer["hits"][0]["uri"] if answer.get("hits") else ""


@dataclass
class Interrupted:
    """An ingest during which the searcher was killed (at `killed_at` pictures; -1: it ended
    before), still running, its stderr read by `reader` into `stderr`."""

    ingest: subprocess.Popen[str]
    killed_at: int
    reader: threading.Thread
    stderr: list[str]

    def finish(self, timeout_s: float = 600) -> str:
        """Wait for the ingest to end; what it printed on stderr."""
        self.ingest.wait(timeout=timeout_s)
        self.reader.join(timeout=30)
        return "".join(self.stderr)


def kill_searcher_during(stack: Stack, *ingest_args: str) -> Interrupted:
    """Start `imgsearch ingest` in the client image and `docker kill` the searcher once its
    progress bar has passed 20 pictures (read from its stderr as it draws)."""
    ingest = stack.popen("run", "--rm", "-T", "client", "ingest", *ingest_args, "/photos")
    progress, seen = [0], []

    def follow() -> None:
        assert ingest.stderr is not None
        while chunk := ingest.stderr.read(64):
            seen.append(chunk)
            for done in re.findall(rf"(\d+)/{PICTURES}\b", "".join(seen)[-200:]):
                progress[0] = int(done)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline, killed_at = time.monotonic() + 120, -1
    while ingest.poll() is None and time.monotonic() < deadline:
        if 20 <= progress[0] < PICTURES:
            killed_at = progress[0]
            run("docker", "kill", stack.container("searcher"))
            break
        time.sleep(0.02)
    return Interrupted(ingest, killed_at, reader, seen)


def ingest_killing_the_searcher(stack: Stack, results: dict[str, Any]) -> None:
    """`docker kill` the searcher while an ingest streams; bring it back; ingest again."""
    # A fast machine may finish the first ingest before the kill lands: then re-embed them all.
    for args in ((), ("--update",), ("--update",)):
        attempt = kill_searcher_during(stack, *args)
        if attempt.killed_at > 0:
            break
        attempt.finish()
    stack("up", "-d", "--no-build")  # `docker kill` is a manual stop: restart policies skip it
    back = stack.wait_healthy(("searcher",))["searcher"]
    err = attempt.finish()  # it replays while the searcher is away, then ends
    killed_at, ingest = attempt.killed_at, attempt.ingest
    said = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    results["kill_mid_ingest"] = {
        "pictures_when_killed": killed_at,
        "ingest_args": list(args),
        "searcher_healthy_again_s": back,
        "ingest_exit": ingest.returncode,
        "ingest_said": said[-2:],
    }
    check(
        0 < killed_at < PICTURES,
        f"docker kill of the searcher mid-ingest (at {killed_at} of {PICTURES} pictures); "
        f"the interrupted ingest ended with exit {ingest.returncode}",
        results,
    )
    again = stack.client("ingest", "/photos")
    results["kill_mid_ingest"]["reattemptsaid"] = again.stdout.strip().splitlines()[-1:]
    rows = stack.rows()
    distinct = psql(stack, "SELECT count(DISTINCT uri) FROM imgsearch_data.images")
    check(
        rows == PICTURES and distinct == str(PICTURES),
        f"the ingest run again completes: "
        f"{rows} rows, {distinct} distinct pictures, nothing lost or doubled",
        results,
    )
    # The embedder serves logits,gem: each item's gem vector went into its own table with it.
    gem = stack.client("stats", "--vector", "gem").stdout
    found = re.search(r"^rows\s+(\d+)", gem, re.MULTILINE)
    gem_rows = int(found.group(1)) if found else 0
    check(
        gem_rows == PICTURES,
        f"every item carries its gem vector too: {gem_rows} rows in the gem vector's table",
        results,
    )


def crash_restarts(stack: Stack, results: dict[str, Any]) -> None:
    """SIGKILL of the searcher's process from the host (what the OOM killer does): the
    restart policy brings it back with nothing lost."""
    container = stack.container("searcher")
    before = int(run("docker", "inspect", "-f", "{{.RestartCount}}", container).stdout)
    os.kill(int(run("docker", "inspect", "-f", "{{.State.Pid}}", container).stdout), signal.SIGKILL)
    time.sleep(2)
    took = stack.wait_healthy(("searcher",))["searcher"]
    after = int(run("docker", "inspect", "-f", "{{.RestartCount}}", container).stdout)
    check(
        after == before + 1 and stack.rows() == PICTURES,
        f"a crashed searcher is restarted by its restart policy (healthy again in {took:.0f} s), "
        f"{PICTURES} rows",
        results,
    )


def psql(stack: Stack, sql: str) -> str:
    done = run(
        "docker",
        "exec",
        stack.container("postgres"),
        "psql",
        "-h",
        "/tmp",
        "-U",
        "imgsearch",
        "-d",
        "imgsearch",
        "-tAc",
        sql,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def non_root(stack: Stack, results: dict[str, Any]) -> None:
    users = {}
    for service in SERVICES:
        container = stack.container(service)
        configured = run("docker", "inspect", "-f", "{{.Config.User}}", container).stdout.strip()
        uid = run("docker", "exec", container, "id", "-u").stdout.strip()
        users[service] = {"user": configured, "uid": uid}
    results["users"] = users
    check(
        all(
            u["uid"] not in ("", "0") and u["user"] not in ("", "root", "0") for u in users.values()
        ),
        "every container runs as a user other than root: "
        + ", ".join(f"{s} {u['user']} (uid {u['uid']})" for s, u in users.items()),
        results,
    )


def exercise(stack: Stack, photo_dir: Path, results: dict[str, Any]) -> None:
    started = time.monotonic()
    results["cold_start_to_healthy_s"] = up_measuring_cold_starts(stack)
    log(f"cold start to passing its health check: {results['cold_start_to_healthy_s']}")
    stack.wait_healthy(SERVICES)
    results["up_to_all_healthy_s"] = round(time.monotonic() - started, 1)
    check(True, "every service reaches healthy (as Docker reports it)", results)
    non_root(stack, results)
    ingest_killing_the_searcher(stack, results)
    found = originals_first(stack)
    check(found == 20, f"{found} of 20 searched pictures find their original first", results)
    without, status, first = page_answers(stack, photo_dir / "photo-007.jpg")
    check(
        without == 401 and status == 200 and first.endswith("photo-007.jpg"),
        f"the page refuses without its token ({without}) and answers with it ({status}, "
        f"first hit {Path(first).name})",
        results,
    )
    crash_restarts(stack, results)
    index = stack.stats().get("index", "")
    stack("down")
    stack("up", "-d", "--no-build")
    results["warm_start_to_healthy_s"] = stack.wait_healthy(SERVICES)
    after = stack.stats()
    check(
        stack.rows() == PICTURES and after.get("index") == index and index.startswith("HNSW"),
        f"after down and up: {PICTURES} rows and the same index ({index})",
        results,
    )
    check(originals_first(stack) == 20, "after down and up: originals still first", results)
    results["exercise_s"] = round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack and its volumes up")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/compose.json")
    parser.add_argument(
        "--torch-embedder",
        action="store_true",
        help="also build the torch embedder image (PyPI's CUDA torch: ~3 GB of wheels) and "
        "measure its size and start; the stack still runs the slim one",
    )
    args = parser.parse_args(argv)
    reason = docker_unavailable()
    if reason:
        print(f"compose-test SKIPPED: {reason}")
        return 0
    results: dict[str, Any] = {
        "docker": run("docker", "version", "-f", "{{.Server.Version}}").stdout.strip()
    }
    started = time.monotonic()
    base_image()
    if args.torch_embedder:
        results["torch_embedder"] = torch_embedder()
    wheelhouse()
    results["images"] = build_images()
    results["build_s"] = round(time.monotonic() - started, 1)
    stack = Stack(model_file(), photos())
    results["compose"] = " ".join(stack.compose[: stack.compose.index("-p")])
    stack("down", "-v", check=False)  # what an interrupted earlier run left
    try:
        exercise(stack, WORK / "photos", results)
    finally:
        if not args.keep:
            stack("down", "-v", check=False)
        results["total_s"] = round(time.monotonic() - started, 1)
        for tag, limit in LIMITS_MB.items():
            check(
                results["images"][tag]["size_mb"] <= limit,
                f"{tag} within {limit} MB ({results['images'][tag]['size_mb']:.0f} MB)",
                results,
            )
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        log(f"results in {args.results}")
    failed = [what for what, ok in results["checks"].items() if not ok]
    log(
        f"{len(results['checks']) - len(failed)} checks passed, {len(failed)} failed "
        f"in {results['total_s']:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
