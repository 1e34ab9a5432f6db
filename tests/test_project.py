"""The project's ground rules: CI runs exactly the README's test command, every command keeps its
options, and the layout keeps its rules (imports one way, small rooms, one home per default,
one error tree, a documented public API)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.command_help import COMMANDS, GOLDEN, help_text, options
from tests.conftest import ROOT


def _readme_commands() -> dict[str, str]:
    """The commands in the README's 'two commands' block, keyed by their comment."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return {
        comment.strip(): command.strip()
        for command, comment in re.findall(r"^(\S[^#\n]*)#(.*)$", section, re.MULTILINE)
    }


def test_readme_names_a_main_job_command_and_a_test_command_that_exist() -> None:
    commands = _readme_commands()
    assert commands == {
        "the main job: a local stack on the embedded database": "./scripts/demo",
        "the test suite": "./scripts/test",
    }
    for command in commands.values():
        assert (ROOT / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()["the test suite"] in ci_lines


@pytest.mark.parametrize("service", ["embedder", "searcher"])
def test_the_readme_documents_every_flag_and_variable_of_each_service(service: str) -> None:
    import dataclasses
    import importlib

    config = importlib.import_module(f"{service}.config")
    cls = config.EmbedderConfig if service == "embedder" else config.SearcherConfig
    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        assert f"`{flag}` | `{config.env_name(field.name)}`" in readme, flag


def test_the_leak_check_finds_a_daemonised_server_and_a_child_left_running(tmp_path) -> None:
    import subprocess
    import sys
    import time

    import psutil

    from tests.process_helpers import end_processes, processes_left_behind

    started = time.time() - 1
    data_dir = tmp_path / "pgdata"
    # A "server" that daemonised: its parent shell is gone, only its data directory names it.
    subprocess.run(
        ["sh", "-c", f'setsid {sys.executable} -c "import time; time.sleep(600)" {data_dir} &'],
        check=True,
    )
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        left = processes_left_behind(tmp_path, started)
        commands = [" ".join(process.cmdline()) for process in left]
        assert any(str(data_dir) in command for command in commands), commands
        assert child.pid in {process.pid for process in left}
        daemon = next(p for p in left if str(data_dir) in " ".join(p.cmdline()))
        assert daemon.ppid() != psutil.Process().pid  # not our child: found by its path
    finally:
        end_processes(processes_left_behind(tmp_path, started))
        child.wait(timeout=10)
    assert processes_left_behind(tmp_path, started) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_keeps_its_options_defaults_and_variables(command: str) -> None:
    """Recorded by `python -m tests.command_help --write`; a difference is a change users see."""
    recorded = options((GOLDEN / f"{command}.txt").read_text())
    assert options(help_text(command)) == recorded


# -- the layout's rules, checked on the source ------------------------------------------------

PACKAGES = ("imgsearch", "serving", "embedder", "searcher", "stack", "webui")
SERVICES = {"embedder", "searcher"}
SERVER_SIDE = {*SERVICES, "serving", "stack"}


def _sources(*roots: str) -> list[Path]:
    """Our Python files under `roots`, generated code left out."""
    return sorted(
        path
        for root in roots
        for path in (ROOT / root).rglob("*.py")
        if "imgsearch/v1" not in path.as_posix() and ".venv" not in path.parts
    )


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages a file imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def test_imports_run_one_way_and_only_the_stack_composes_both_services() -> None:
    """client → contract; services → serving → contract; the stack above both services."""
    wrong: list[str] = []
    for path in _sources(*PACKAGES):
        relative = path.relative_to(ROOT).as_posix()
        package = relative.split("/")[0]
        allowed = {
            "imgsearch": {"imgsearch", "webui"},  # the CLI serves the search page
            "webui": {"imgsearch", "webui"},
            "serving": {"imgsearch", "serving"},
            "embedder": {"imgsearch", "serving", "embedder"},
            "searcher": {"imgsearch", "serving", "searcher"},
            "stack": set(PACKAGES) - {"webui"},
        }[package]
        if relative == "imgsearch/cli/stack.py":
            allowed = allowed | {"stack"}  # the one module of the client that starts servers
        wrong += [f"{relative} imports {name}" for name in _imported_packages(path) - allowed]
    assert wrong == []
    composing = [p for p in _sources(*PACKAGES) if SERVICES <= _imported_packages(p)]
    assert {p.relative_to(ROOT).parts[0] for p in composing} == {"stack"}


def test_no_module_over_500_lines_and_no_function_over_60_outside_bench_and_tests() -> None:
    long_modules = [
        f"{path.relative_to(ROOT)}: {lines}"
        for path in _sources(*PACKAGES, "bench", "scripts", "tests")
        if (lines := len(path.read_text().splitlines())) > 500
    ]
    long_functions = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}"
        for path in _sources(*PACKAGES, "scripts")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - node.lineno + 1) > 60  # type: ignore[operator]
    ]
    assert long_modules == [] and long_functions == []


def test_only_entry_points_exit_the_process() -> None:
    """Library code raises imgsearch errors; `main`s turn them into exit statuses, and only a
    module run as a program (`sys.exit(main())`) exits."""
    exits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _sources(*PACKAGES)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ("SystemExit" in line or "sys.exit(" in line) and line.strip() != "sys.exit(main())"
    ]
    assert exits == []


def test_each_shared_default_is_defined_once_in_imgsearch_defaults() -> None:
    from imgsearch import defaults

    values = {
        defaults.EMBEDDER_PORT,
        defaults.SEARCHER_PORT,
        defaults.MAX_MESSAGE_BYTES,
        defaults.MAX_UPLOAD_BYTES,
        8080,
        defaults.COLLECTION,
        defaults.MODEL,
        ".local",
    }
    # Other things called "images": the ONNX graph's input, and `imgsearch search`'s argument.
    exempt = {("embedder/onnx_session.py", "images"), ("imgsearch/cli/search.py", "images")}
    found = []
    for path in _sources(*PACKAGES):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "imgsearch/defaults.py":
            continue
        text = path.read_text()
        if "64 * 1024 * 1024" in text:
            found.append(f"{relative}: 64 * 1024 * 1024")
        for node in ast.walk(ast.parse(text)):
            value = getattr(node, "value", None) if isinstance(node, ast.Constant) else None
            if value in values and (relative, value) not in exempt and not isinstance(value, bool):
                found.append(f"{relative}:{node.lineno}: {value!r}")
    assert found == []


def test_the_public_api_is_listed_and_every_name_in_it_says_what_it_is() -> None:
    import inspect

    import imgsearch

    assert {"ImageSearchClient", "SearchOptions", "Hit", "ImageSearchError"} <= set(
        imgsearch.__all__
    )
    undocumented = []
    for name in imgsearch.__all__:
        value = getattr(imgsearch, name)
        doc = inspect.getdoc(value) or ""
        if not doc or doc.startswith(f"{name}("):  # a dataclass's generated signature
            undocumented.append(name)
        if inspect.isclass(value) and not issubclass(value, Exception):
            undocumented += [
                f"{name}.{member}"
                for member, function in vars(value).items()
                if not member.startswith("_")
                and (inspect.isfunction(function) or isinstance(function, property))
                and not inspect.getdoc(function)
            ]
    assert undocumented == []


def test_every_error_is_in_the_one_tree_that_errors_py_draws() -> None:
    import importlib
    import pkgutil

    from imgsearch import errors

    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.endswith("__main__") and ".v1" not in info.name:
                importlib.import_module(info.name)

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    ours = [
        c for c in subclasses(errors.ImageSearchError) if c.__module__.split(".")[0] in PACKAGES
    ]
    assert [c.__qualname__ for c in ours if c.__module__ != errors.__name__] == []
    drawn = errors.__doc__ or ""
    assert [c.__name__ for c in ours if c.__name__ not in drawn.split()] == []
