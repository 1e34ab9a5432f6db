"""The `--help` of every command the wheel installs, as a user sees it, taken apart per option so
that a refactoring can be checked not to change a command, a flag, a default or a variable.

`python -m tests.command_help --write` records the current texts in tests/command_help/ (after a
deliberate change to a command, and only then); tests/test_project.py compares against them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "command_help"

SUBCOMMANDS = (
    "up",
    "ingest",
    "search",
    "duplicates",
    "import-features",
    "export-features",
    "collections",
    "stats",
    "web",
    "demo",
)
COMMANDS: dict[str, list[str]] = {
    "imgsearch": ["imgsearch", "--help"],
    **{f"imgsearch-{name}": ["imgsearch", name, "--help"] for name in SUBCOMMANDS},
    "imgsearch-embedder": ["imgsearch-embedder", "--help"],
    "imgsearch-searcher": ["imgsearch-searcher", "--help"],
    "imgsearch-health": ["imgsearch-health", "--help"],
    "imgsearch-embedder-export": ["imgsearch-embedder-export", "--help"],
}


def _environment() -> dict[str, str]:
    """A fixed environment: no IMGSEARCH_* settings, a known data folder, a known width."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSEARCH_", "PG"))}
    env.update(COLUMNS="100", XDG_DATA_HOME="/data-home", HOME="/home/someone")
    return env


def help_text(name: str) -> str:
    script, *args = COMMANDS[name]
    done = subprocess.run(
        [str(Path(sys.executable).parent / script), *args],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


_ENTRY = re.compile(r"^  (-\S.*|[a-zA-Z]\S*(?: \S+)*)$")


def options(text: str) -> dict[str, str]:
    """Each option or positional argument of a help text with its help, white space folded;
    'usage' keeps the usage line's parts and 'head' the text above the options. The order of
    options is left out: it is not behaviour."""
    body = text.split("\noptions:\n", 1)
    usage, _, head = body[0].partition("\n\n")
    entries: dict[str, str] = {
        "usage": " ".join(sorted(re.findall(r"\[[^][]*\]|\S+", " ".join(usage.split())))),
        "head": " ".join(head.split()),
    }
    if len(body) == 1:
        return entries
    key = ""
    for line in re.split(r"\n(?=  \S)", "\n" + body[1]):
        line = line.strip("\n")
        if not line.strip():
            continue
        first, _, rest = line.strip().partition("  ")
        key = first.strip()
        entries[key] = " ".join(rest.split())
    return entries


def main() -> None:
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.command_help --write")
    GOLDEN.mkdir(exist_ok=True)
    for name in COMMANDS:
        (GOLDEN / f"{name}.txt").write_text(help_text(name))
        print(f"wrote {GOLDEN / name}.txt")


if __name__ == "__main__":
    main()
