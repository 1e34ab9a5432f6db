"""`imgsearch-embedder` as a process: it refuses to start without its weights, and SIGTERM lets
in-flight work finish, refuses new work, and exits in time."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc

from imgsearch.v1 import embedder_pb2 as pb
from tests import images
from tests.embedder_helpers import embedder_stub, vector_of
from tests.process_helpers import end_process, offline_env, run_module, start_service


def _start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    return start_service("embedder", *args, env=env)


def test_missing_weights_stop_the_embedder_at_start_with_the_file_to_fetch(tmp_path: Path) -> None:
    result = run_module(
        "embedder", "--address", "127.0.0.1:0", env=offline_env(TORCH_HOME=str(tmp_path))
    )
    assert result.returncode == 2
    assert "cannot start" in result.stderr
    assert "squeezenet1_1-b8a52dc0.pth" in result.stderr
    assert str(tmp_path / "hub" / "checkpoints") in result.stderr


def test_sigterm_finishes_in_flight_work_refuses_new_work_and_exits(tmp_path: Path) -> None:
    process, port = _start("--weights", "random", "--grace-s", "30")
    try:
        channel, stub = embedder_stub(port)
        with channel:
            data = [images.jpeg(i, (320, 240)) for i in range(192)]  # seconds of work
            request = pb.EmbedRequest(
                images=[pb.Image(key=str(i), data=d) for i, d in enumerate(data)]
            )
            in_flight = stub.Embed.future(request, timeout=120)
            time.sleep(0.5)  # the server is working on it
            assert not in_flight.done()
            process.send_signal(signal.SIGTERM)
            results = in_flight.result().results
            assert [r.key for r in results] == [str(i) for i in range(192)]
            assert all(vector_of(r).shape == (1000,) for r in results)
        assert process.wait(timeout=30) == 0
        channel, stub = embedder_stub(port)
        with channel:
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                raise AssertionError("a stopped embedder answered")
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
    finally:
        end_process(process)
