"""`imgsearch-embedder` as a process: it refuses to start without its weights, and SIGTERM lets
in-flight work finish, refuses new work, and exits in time."""

from __future__ import annotations

import queue
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
            # A stream the client holds open: in flight for as long as the test needs, on a fast
            # machine as on a slow one (a big Embed call finished inside 0.5 s on a CI machine).
            outbox: queue.Queue[pb.EmbedStreamRequest | None] = queue.Queue()
            replies = stub.EmbedStream(iter(outbox.get, None), timeout=120)
            outbox.put(_message(range(0, 8)))
            assert [r.key for r in next(replies).results] == [str(i) for i in range(8)]
            process.send_signal(signal.SIGTERM)
            _wait_until_new_calls_are_refused(port)
            outbox.put(_message(range(8, 24)))  # more work on the call admitted before the signal
            outbox.put(None)
            (last,) = list(replies)
            assert [r.key for r in last.results] == [str(i) for i in range(8, 24)]
            assert all(vector_of(r).shape == (1000,) for r in last.results)
        assert process.wait(timeout=30) == 0
    finally:
        end_process(process)


def _message(keys: range) -> pb.EmbedStreamRequest:
    return pb.EmbedStreamRequest(
        images=[pb.Image(key=str(i), data=images.jpeg(i, (320, 240))) for i in keys]
    )


def _wait_until_new_calls_are_refused(port: int) -> None:
    """Until a new call is refused: the service has taken the signal (it may take a moment). A call
    that meets the shutdown on an open connection is cancelled; later ones find no listener."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        channel, stub = embedder_stub(port)
        with channel:
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                return
        time.sleep(0.1)
    raise AssertionError("the embedder still took new calls 20 s after SIGTERM")
