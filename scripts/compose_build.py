"""What scripts/compose_test.py builds the images from, where Docker Hub and PyPI are out of reach:
a Debian base image made with debootstrap (cached), a wheelhouse made on the host (cached, keyed
by pyproject.toml), the images themselves, a model file exported on the host (random weights,
fixed seed) and generated photo-like pictures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgsearch-compose"
WORK = ROOT / ".compose"
BASE_IMAGE = "imgsearch-base:bookworm"
PICTURES = 200
PIP_OFFLINE = "--no-index --find-links=/wheelhouse"
# (tag, build target or Dockerfile): what compose.local.yml names.
IMAGES = [
    ("imgsearch-postgres:local", "deploy/docker/postgres-pgserver.Dockerfile"),
    ("imgsearch-searcher:local", "searcher"),
    ("imgsearch-embedder-slim:local", "embedder-slim"),
    ("imgsearch:local", "client"),
]


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    *command: str | Path, check: bool = True, **options: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], text=True, capture_output=True, **options)
    if check and done.returncode != 0:
        raise SystemExit(
            f"failed ({done.returncode}): {' '.join(map(str, command))}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def docker_unavailable() -> str:
    """Why Docker cannot be used here, or "" when it can."""
    if shutil.which("docker") is None:
        return "no docker command"
    info = run("docker", "info", check=False)
    if info.returncode != 0:
        said = info.stderr.strip().splitlines() or [f"exit {info.returncode}"]
        return f"no Docker engine answers: {said[-1]}"
    return ""


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where installed, else v1.29 (`docker-compose`, Debian's)."""
    if run("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("neither `docker compose` nor `docker-compose` is installed")


# -- what the images are built from ----------------------------------------------------------------


def base_image() -> None:
    """A Debian bookworm root with python3 and python3-venv, imported as BASE_IMAGE."""
    if run("docker", "image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    archive = CACHE / "bookworm-minbase-python3.tar"
    if not archive.exists():
        if shutil.which("debootstrap") is None:
            raise SystemExit("debootstrap is not installed (apt-get install debootstrap)")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            root = Path(scratch) / "root"
            log("making the base image with debootstrap (about a minute)")
            run(
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                root,
                "http://deb.debian.org/debian",
            )
            # What a service never reads: package caches and lists, documentation, translations.
            for leftover in (
                "var/cache/apt/archives",
                "var/lib/apt/lists",
                "usr/share/doc",
                "usr/share/man",
                "usr/share/locale",
                "usr/share/info",
            ):
                for entry in (root / leftover).glob("*"):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            run("tar", "-C", root, "-cf", f"{archive}.partial", ".")
            os.replace(f"{archive}.partial", archive)
    with archive.open("rb") as tar:
        run("docker", "import", "-", BASE_IMAGE, stdin=tar)


def wheelhouse(extras: str = "searcher,web,embedder-onnx") -> None:
    """Every wheel the images install, fetched on the host into ./wheelhouse (cached)."""
    project = (ROOT / "pyproject.toml").read_bytes()
    kind = "torch" if "embedder," in f"{extras}," else "slim"
    cached = CACHE / f"wheelhouse-{kind}-{hashlib.sha256(project).hexdigest()[:16]}"
    if not cached.exists():
        for old in CACHE.glob(f"wheelhouse-{kind}-*"):  # those of an older pyproject.toml
            shutil.rmtree(old)
        partial = cached.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        log("fetching the wheels on the host")
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            partial,
            f"{ROOT}[{extras}]",
            "setuptools>=69",
        )
        for own in partial.glob("imgsearch-*.whl"):
            own.unlink()  # the images build imgsearch from the sources they copy
        os.replace(partial, cached)
    target = ROOT / "wheelhouse"
    for old in target.glob("*.whl"):
        old.unlink()
    for wheel in cached.glob("*.whl"):
        shutil.copy2(wheel, target / wheel.name)


def build_images(images: list[tuple[str, str]] = IMAGES) -> dict[str, dict[str, float]]:
    """Build every image the override names; seconds and size of each."""
    built = {}
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the engine's classic builder: no buildx here
    for tag, what in images:
        where = ["-f", what] if what.endswith("Dockerfile") else ["--target", what]
        started = time.monotonic()
        run(
            "docker",
            "build",
            "--quiet",
            *where,
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            "--build-arg",
            f"PIP_INSTALL_OPTIONS={PIP_OFFLINE}",
            "-t",
            tag,
            ROOT,
            env=env,
        )
        size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", tag).stdout)
        built[tag] = {"build_s": round(time.monotonic() - started, 1), "size_mb": size / 1e6}
        log(f"built {tag}: {size / 1e6:.0f} MB in {built[tag]['build_s']:.0f} s")
    return built


def model_file() -> Path:
    from imgsearch.defaults import STACK_HEAD

    # Both heads, as `imgsearch up` and the compose file's torch embedder serve them.
    out = WORK / "embedder-logits-gem.onnx"
    if not out.exists():
        WORK.mkdir(exist_ok=True)
        run(
            sys.executable, "-m", "embedder.export", out, "--weights", "random",
            "--head", STACK_HEAD, cwd=ROOT,
        )  # fmt: skip
    out.chmod(0o644)
    return out


def photos() -> Path:
    """PICTURES generated photo-like JPEGs (textures, noise, natural sizes), readable by all."""
    from imgsearch.photos import textured_photo

    folder = WORK / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    sizes = [(1024, 768), (800, 600), (768, 1024), (1280, 720), (640, 480)]
    for i in range(PICTURES):
        path = folder / f"photo-{i:03d}.jpg"
        if not path.exists():
            textured_photo(i, sizes[i % len(sizes)], scene=i).save(path, quality=90)
        path.chmod(0o644)
    return folder


# The torch embedder: PyPI's torch is the CUDA build (~3 GB of wheels), so it is built only when
# asked (`compose-test --torch-embedder`), to measure it; the stack runs the slim one.
TORCH_EMBEDDER = ("imgsearch-embedder:local", "embedder")


def torch_embedder() -> dict[str, float]:
    """Build the torch embedder image; its size, and seconds from its container's start (random
    weights, nothing to download) until its own health check first passes."""
    wheelhouse(
        "searcher,web,embedder-onnx,embedder,onnx"
    )  # the classic builder builds every earlier stage
    (built,) = build_images([TORCH_EMBEDDER]).values()
    tag = TORCH_EMBEDDER[0]
    container = run("docker", "run", "-d", "-e", "IMGSEARCH_EMBEDDER_WEIGHTS=random", tag)
    name = container.stdout.strip()
    started = time.monotonic()
    try:
        while run("docker", "exec", name, "imgsearch-health", "localhost:50051",
                  check=False).returncode != 0:  # fmt: skip
            if time.monotonic() - started > 600:
                raise SystemExit(f"{tag} did not start: {run('docker', 'logs', name).stderr}")
            time.sleep(0.2)
        built["cold_start_s"] = round(time.monotonic() - started, 1)
    finally:
        run("docker", "rm", "-f", name, check=False)
    log(f"{tag}: {built['size_mb']:.0f} MB, healthy {built['cold_start_s']} s after docker run")
    return built
