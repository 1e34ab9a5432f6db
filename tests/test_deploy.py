"""The container files, read as Docker would read them (no Docker engine here): the Dockerfile's
stages and the compose file's services, images, health checks, environment and ports; every
file and command they name exists in the repo; and the README's deploy steps match them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import pytest
import yaml

from searcher.config import env_name as searcher_env
from tests.conftest import ROOT
from tests.deploy_helpers import CONSOLE_SCRIPTS, PYPROJECT, SECRET_NAME, known_settings


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its (KEYWORD, arguments) instructions, continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stage = Stage(name.strip(), base.strip())
            stages[stage.name] = stage
        elif stage is not None:
            stage.instructions.append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """["a", "b"] (JSON array form) as a list."""
    assert args.startswith("["), f"use the exec form: {args}"
    return list(yaml.safe_load(args))


def env_pairs(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_dockerfile_has_a_stage_per_service_run_as_a_non_root_user(stages) -> None:
    assert {"base", "searcher", "embedder", "embedder-slim", "client"} <= set(stages)
    for name in ("searcher", "embedder", "embedder-slim", "client"):
        stage = stages[name]
        assert stage.base == "base"
        assert stage.last("USER") not in ("root", "0")
        (entrypoint,) = exec_form(stage.last("ENTRYPOINT"))
        assert entrypoint in CONSOLE_SCRIPTS
    user = stages["searcher"].last("USER")
    assert any("useradd" in run and user in run for run in stages["base"].all("RUN"))


def test_every_file_the_dockerfile_copies_exists(stages) -> None:
    for stage in stages.values():
        for args in stage.all("COPY"):
            *sources, _destination = shlex.split(args)
            if sources[0].startswith("--from="):  # another stage's files
                assert sources[0].removeprefix("--from=") in stages, args
                continue
            for source in sources:
                assert (ROOT / source).exists(), source


def test_the_image_copies_every_package_the_wheel_ships(stages) -> None:
    packages = {
        pattern.rstrip("*")
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {shlex.split(args)[0] for args in stages["build"].all("COPY")}
    assert packages <= copied, f"the build stage does not copy {sorted(packages - copied)}"


def test_the_services_check_their_health_over_grpc_on_the_port_they_serve(stages) -> None:
    for name, service in (("searcher", "SEARCHER"), ("embedder", "EMBEDDER"),
                          ("embedder-slim", "EMBEDDER")):  # fmt: skip
        stage = stages[name]
        health = stage.last("HEALTHCHECK")
        command = exec_form(health.split(" CMD ", 1)[1])
        assert command[0] == "imgsearch-health" and command[0] in CONSOLE_SCRIPTS
        port = command[1].rsplit(":", 1)[1]
        env = {}
        for args in stage.all("ENV"):
            env.update(env_pairs(args))
        assert env[f"IMGSEARCH_{service}_ADDRESS"].endswith(f":{port}")
        exposed = " ".join(stage.all("EXPOSE")).split()
        assert port in exposed
        assert env[f"IMGSEARCH_{service}_METRICS_ADDRESS"].rsplit(":", 1)[1] in exposed


def test_the_searcher_image_installs_no_torch(stages) -> None:
    assert stages["searcher"].all("COPY") == ["--from=searcher-build /opt/venv /opt/venv"]
    installs = " ".join(stages["searcher-build"].all("RUN"))
    assert '".[searcher]"' in installs
    extras = PYPROJECT["project"]["optional-dependencies"]
    searcher_deps = extras["searcher"] + extras["server"]
    assert not any(dep.startswith(("torch", "imgsearch[embedder", "onnx")) for dep in searcher_deps)
    assert "torch" in " ".join(extras["embedder"])


def test_no_secret_is_baked_into_an_image(stages) -> None:
    for stage in stages.values():
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                for name in env_pairs(args) if keyword == "ENV" else [args.split("=")[0]]:
                    assert not SECRET_NAME.search(name), f"{stage.name}: {keyword} {name}"


def test_compose_postgres_is_pgvector_on_pg17_with_a_volume_and_a_healthcheck(compose) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "pgvector/pgvector:pg17"
    volume, _, mount = postgres["volumes"][0].partition(":")
    assert volume in compose["volumes"] and mount == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_compose_searcher_waits_for_a_healthy_postgres_and_takes_its_dsn_from_env(compose) -> None:
    searcher = compose["services"]["searcher"]
    assert searcher["depends_on"]["postgres"]["condition"] == "service_healthy"
    dsn = searcher["environment"][searcher_env("dsn")]
    assert "${POSTGRES_PASSWORD" in dsn and "@postgres:5432/" in dsn
    assert searcher["build"]["target"] == "searcher"
    assert "${SEARCHER_HOST_PORT:-50052}:50052" in searcher["ports"]


def test_compose_embedder_scales_and_is_reached_by_dns_round_robin(compose) -> None:
    embedder = compose["services"]["embedder"]
    assert "container_name" not in embedder and "ports" not in embedder  # --scale embedder=3
    assert "50051" in embedder["expose"]
    assert embedder["build"]["target"] == "embedder"
    client = compose["services"]["client"]
    assert client["environment"]["IMGSEARCH_EMBEDDER"] == "dns:///embedder:50051"
    assert client["environment"]["IMGSEARCH_SEARCHER"] == "searcher:50052"


def test_compose_names_only_real_targets_scripts_and_settings(compose, stages) -> None:
    known_env = known_settings()
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["target"] in stages, name
            assert (ROOT / service["build"]["context"] / "Dockerfile").exists()
        for key, value in service.get("environment", {}).items():
            if key.startswith("IMGSEARCH_"):
                assert key in known_env, f"{name}: {key}"
            if SECRET_NAME.search(key) or "PASSWORD" in str(value):
                assert "${" in str(value), f"{name}: {key} must come from the environment"
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD" and test[1] == "python":  # the page: an HTTP GET of /
            assert "urlopen('http://127.0.0.1:8080/'" in test[-1], f"{name}: {test}"
        elif test and test[0] == "CMD":
            assert test[1] in CONSOLE_SCRIPTS, f"{name}: {test[1]}"


def test_the_readme_deploy_steps_match_the_compose_file(compose) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(?:\S+=\S+ )*(docker compose .+)$", section, re.MULTILINE)
    assert commands, "the deploy section shows the docker compose commands"
    services = set(compose["services"])
    for command in commands:
        for scaled in re.findall(r"--scale (\w+)=", command):
            assert scaled in services
        run = re.search(r"run --rm (\w+)", command)
        if run:
            assert run.group(1) in services
    assert "docker compose -p imgsearch up -d --scale embedder=3" in section
    for port in ("50052", "9102"):
        assert port in section
    for target in ("searcher", "embedder"):
        assert f"--target {target}" in section
