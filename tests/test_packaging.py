"""The wheel as users get it: `python -m build` makes a wheel and an sdist, and the wheel
installed alone into fresh virtual environments (the client only, `[searcher]`, `[embedder]`,
`[web]`) gives exactly what that install promises: every module it is meant to run imports, its
console scripts answer --help, and the client alone carries no torch, database driver or
Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PACKAGES = ("imgsearch", "serving", "embedder", "searcher", "webui")

# Run inside each environment, from a folder outside the checkout: imports every module of the
# packages that install should run, and tries the others, reporting what happened as JSON.
INSPECT = """
import importlib, importlib.util, json, pkgutil, sys
usable, packages = sys.argv[1].split(","), sys.argv[2].split(",")
optional = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else set()
report = {"failed": {}, "refused": {}, "imported": 0, "found": {}, "files": {}}
for name in packages:
    spec = importlib.util.find_spec(name)
    report["files"][name] = spec.origin if spec else None
    if name not in usable:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            report["refused"][name] = str(exc)
        continue
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        try:
            importlib.import_module(module.name)
            report["imported"] += 1
        except ImportError as exc:
            key = "refused" if module.name in optional else "failed"
            report[key][module.name] = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            report["failed"][module.name] = f"{type(exc).__name__}: {exc}"
for name in ("torch", "torchvision", "psycopg2", "prometheus_client", "grpc_health"):
    report["found"][name] = importlib.util.find_spec(name) is not None
print(json.dumps(report))
"""


def _run(*command: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("imgsearch-*.whl")
    return found


def _fresh_install(where: Path, requirement: str) -> Path:
    """A new virtual environment with `requirement` installed from the index; its python."""
    created = _run(sys.executable, "-m", "venv", where, cwd=where.parent)
    assert created.returncode == 0, created.stderr
    python = where / "bin" / "python"
    installed = _run(python, "-m", "pip", "install", "--quiet", requirement, cwd=where.parent)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


@pytest.fixture
def environment(tmp_path: Path, wheel: Path) -> Iterator[tuple[Path, Path]]:
    """A fresh environment for one test, removed afterwards (the embedder's is ~6 GB)."""
    yield tmp_path / "venv", wheel
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


def _inspect(
    python: Path, usable: tuple[str, ...], cwd: Path, optional: tuple[str, ...] = ()
) -> dict:  # type: ignore[type-arg]
    """What importing the packages did; modules in `optional` may refuse (their extra is not
    installed), every other module of a usable package must import."""
    result = _run(
        python, "-c", INSPECT, ",".join(usable), ",".join(PACKAGES), ",".join(optional), cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    report: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    assert report["failed"] == {}, report["failed"]
    for name in usable:  # the installed copy, not the checkout
        assert str(ROOT) not in report["files"][name] and "site-packages" in report["files"][name]
    return report


def _answers_help(venv: Path, *scripts: str) -> None:
    for script in scripts:
        result = _run(venv / "bin" / script, "--help", cwd=venv.parent)
        assert result.returncode == 0, f"{script}: {result.stderr[-2000:]}"
        assert "usage:" in result.stdout


def test_build_makes_a_wheel_of_the_five_packages_and_an_sdist_with_the_contract(
    dist: Path, wheel: Path
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}
        names = set(archive.namelist())
    assert set(PACKAGES) <= tops and not tops & {"tests", "bench", "scripts"}, tops
    assert "imgsearch/v1/searcher_pb2.pyi" in names and "imgsearch/v1/py.typed" in names
    assert {"webui/page.html", "webui/page.js"} <= names
    (sdist,) = dist.glob("imgsearch-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "serving/guard.py"} <= members


def test_the_client_alone_imports_every_client_module_and_nothing_heavy(environment) -> None:
    venv, wheel = environment
    python = _fresh_install(venv, str(wheel))
    report = _inspect(python, ("imgsearch",), venv.parent)
    assert report["imported"] >= 15
    assert not any(report["found"][name] for name in ("torch", "psycopg2", "prometheus_client"))
    # The server-side packages say which extra they need instead of failing deep inside.
    assert set(report["refused"]) == {"serving", "embedder", "searcher", "webui"}
    assert "imgsearch[server]" in report["refused"]["serving"]
    _answers_help(venv, "imgsearch")
    for script, extra in (("imgsearch-searcher", "searcher"), ("imgsearch-embedder", "embedder"),
                          ("imgsearch-health", "server")):  # fmt: skip
        refused = _run(venv / "bin" / script, "--help", cwd=venv.parent)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert f"pip install 'imgsearch[{extra}]'" in refused.stderr
    up = _run(venv / "bin" / "imgsearch", "up", "--data-dir", venv / "data", cwd=venv.parent)
    assert up.returncode == 2 and "pip install 'imgsearch[all]'" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr


def test_the_searcher_extra_runs_the_searcher_without_torch(environment) -> None:
    venv, wheel = environment
    python = _fresh_install(venv, f"{wheel}[searcher]")
    report = _inspect(python, ("imgsearch", "serving", "searcher"), venv.parent)
    assert not report["found"]["torch"] and report["found"]["psycopg2"]
    assert "imgsearch[embedder]" in report["refused"]["embedder"]
    _answers_help(venv, "imgsearch", "imgsearch-searcher", "imgsearch-health")


def test_the_embedder_extra_runs_the_embedder_without_a_database_driver(environment) -> None:
    venv, wheel = environment
    python = _fresh_install(venv, f"{wheel}[embedder]")
    report = _inspect(python, ("imgsearch", "serving", "embedder"), venv.parent)
    assert report["found"]["torch"] and not report["found"]["psycopg2"]
    assert "imgsearch[searcher]" in report["refused"]["searcher"]
    _answers_help(venv, "imgsearch", "imgsearch-embedder", "imgsearch-health")


def test_the_web_extra_serves_the_page_with_the_client_alone(environment) -> None:
    venv, wheel = environment
    python = _fresh_install(venv, f"{wheel}[web]")
    report = _inspect(python, ("imgsearch", "webui"), venv.parent)
    assert not any(report["found"][name] for name in ("torch", "psycopg2", "prometheus_client"))
    _answers_help(venv, "imgsearch")
    web = _run(venv / "bin" / "imgsearch", "web", "--help", cwd=venv.parent)
    assert web.returncode == 0 and "--address" in web.stdout


def test_the_embedder_onnx_extra_serves_an_exported_model_without_torch(
    environment, tmp_path: Path
) -> None:
    venv, wheel = environment
    python = _fresh_install(venv, f"{wheel}[embedder-onnx]")
    torch_parts = ("embedder.model", "embedder.onnx_runtime")
    report = _inspect(python, ("imgsearch", "serving", "embedder"), venv.parent, torch_parts)
    assert not report["found"]["torch"] and not report["found"]["psycopg2"]
    assert set(report["refused"]) == {*torch_parts, "searcher", "webui"}
    assert "No module named 'torch'" in report["refused"]["embedder.model"]
    _answers_help(venv, "imgsearch", "imgsearch-embedder", "imgsearch-health")
    # Exported here (torch), served there (no torch): the slim image's arrangement.
    model = tmp_path / "model.onnx"
    exported = _run(sys.executable, "-m", "embedder.export", model, "--weights", "random", cwd=ROOT)
    assert exported.returncode == 0, exported.stderr[-2000:]
    embedder = subprocess.Popen(
        [
            venv / "bin" / "imgsearch-embedder",
            "--model-file",
            model,
            "--address",
            "127.0.0.1:0",
            "--duplicate-probes",
            "0",
        ],  # fmt: skip
        cwd=venv.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert embedder.stdout is not None
        line = next((line for line in embedder.stdout if "listening on port" in line), "")
        assert line, f"the embedder did not start: exit {embedder.wait(timeout=30)}"
        port = line.rsplit(" ", 1)[1].strip()
        health = _run(venv / "bin" / "imgsearch-health", f"127.0.0.1:{port}", cwd=venv.parent)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
        without_file = _run(venv / "bin" / "imgsearch-embedder", "--address", "127.0.0.1:0",
                            cwd=venv.parent)  # fmt: skip
        assert without_file.returncode == 2 and "--model-file" in without_file.stderr
        assert "Traceback" not in without_file.stderr, without_file.stderr
    finally:
        embedder.kill()
        embedder.wait(timeout=30)
        assert embedder.stdout is not None
        embedder.stdout.close()
