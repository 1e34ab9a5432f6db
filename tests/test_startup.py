"""A server, or the local stack, that cannot start as configured says why in one line and exits
with status 2: no traceback, nothing left running (the suite's leak check would fail)."""

from __future__ import annotations

import os

import pytest

from tests.process_helpers import imgsearch, run_module

DEAD_DSN = "postgresql://nobody@127.0.0.1:9/none"  # never reached: these fail before it matters


@pytest.mark.parametrize(
    ("service", "args", "env", "says"),
    [
        (
            "searcher",
            ("--dsn", DEAD_DSN),
            {"IMGSEARCH_SEARCHER_POOL_SIZE": "many"},
            "IMGSEARCH_SEARCHER_POOL_SIZE='many' is not a valid int",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN),
            {"IMGSEARCH_SEARCHER_POOL_SIZE": "2"},
            "--pool-size (IMGSEARCH_SEARCHER_POOL_SIZE) must be at least 3, not 2",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN, "--recall-target", "99"),
            {},
            "--recall-target (IMGSEARCH_SEARCHER_RECALL_TARGET) must be from 0 to 1, not 99.0",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN, "--recall-sample", "50"),
            {},
            "--recall-sample (IMGSEARCH_SEARCHER_RECALL_SAMPLE) must be 0 (no recall check) or at "
            "least 200, not 50",
        ),
        (
            "embedder",
            ("--weights", "random", "--max-message-bytes", "0"),
            {},
            "--max-message-bytes (IMGSEARCH_EMBEDDER_MAX_MESSAGE_BYTES) must be from 1024 to "
            "2147483647, not 0",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN, "--default-index-kind", "ivf"),
            {},
            "unknown index kind 'ivf'; use one of vector, halfvec, binary",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN, "--tls-cert", "server.pem"),
            {},
            "TLS needs both --tls-cert and --tls-key",
        ),
        (
            "searcher",
            ("--dsn", DEAD_DSN, "--tokens-file", "/no/such/tokens"),
            {},
            "cannot read the tokens file /no/such/tokens",
        ),
        ("embedder", ("--log-format", "yaml"), {}, "log format must be text or json, not 'yaml'"),
        (
            "embedder",
            ("--weights", "random", "--duplicate-probes", "0", "--tls-client-ca", "ca.pem"),
            {},
            "--tls-client-ca needs --tls-cert and --tls-key",
        ),
    ],
)
def test_a_service_that_cannot_start_says_why_in_one_line_and_exits_2(
    service: str, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    result = run_module(
        service, "--address", "127.0.0.1:0", *args, env={**os.environ, **env}, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert f"imgsearch-{service}: cannot start: {says}" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_with_half_a_tls_setting_stops_what_it_started_and_says_why(tmp_path) -> None:
    result = imgsearch(
        "up", "--data-dir", str(tmp_path), "--weights", "random", "--embedder-port", "0",
        "--searcher-port", "0", "--tls-cert", str(tmp_path / "server.pem"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "imgsearch: TLS needs both --tls-cert and --tls-key" in result.stderr
    assert "Traceback" not in result.stderr
