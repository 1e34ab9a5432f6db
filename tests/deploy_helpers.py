"""What the deployment tests share: the console scripts the wheel installs, the settings the
services read from the environment, and what a secret's name looks like."""

from __future__ import annotations

import re
import tomllib

from embedder.config import EmbedderConfig
from embedder.config import env_name as embedder_env
from searcher.config import SearcherConfig
from searcher.config import env_name as searcher_env
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = set(PYPROJECT["project"]["scripts"])
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|DSN")


def known_settings() -> set[str]:
    """Every IMGSEARCH_* variable a service or the client reads."""
    known = {searcher_env(f) for f in SearcherConfig.__dataclass_fields__}
    known |= {embedder_env(f) for f in EmbedderConfig.__dataclass_fields__}
    from webui.access import PAGE_TOKEN_ENV

    return known | {"IMGSEARCH_TOKEN", "IMGSEARCH_READ_TOKEN", "IMGSEARCH_EMBEDDER",
                    "IMGSEARCH_SEARCHER", PAGE_TOKEN_ENV}  # fmt: skip
