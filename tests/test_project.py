"""The project's ground rules: CI runs exactly the README's test command."""

from __future__ import annotations

import re

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
