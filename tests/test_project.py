"""The project's ground rules: CI runs exactly the README's test command."""

from __future__ import annotations

import re

import pytest

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
