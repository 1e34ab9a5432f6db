"""The API contract in protos/: documented, and matched by the committed generated code."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

from google.protobuf import descriptor_pb2

from tests.conftest import ROOT


def test_committed_stubs_are_regenerated_byte_for_byte_from_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _undocumented_elements(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Paths (in the descriptor's numbering) of messages, fields, enums, values, services and
    methods that have no leading comment."""
    commented = {
        tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()
    }
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in commented:
            missing.append(f"{file.name}: {name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...]) -> None:
        check(path, msg.name)
        for i, field in enumerate(msg.field):
            check(path + (2, i), f"{msg.name}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                walk_message(nested, path + (3, i))
        for i, enum in enumerate(msg.enum_type):
            walk_enum(enum, path + (4, i))

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...]) -> None:
        check(path, enum.name)
        for i, value in enumerate(enum.value):
            check(path + (2, i), f"{enum.name}.{value.name}")

    for i, msg in enumerate(file.message_type):
        walk_message(msg, (4, i))
    for i, enum in enumerate(file.enum_type):
        walk_enum(enum, (5, i))
    for i, service in enumerate(file.service):
        check((6, i), service.name)
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_message_field_enum_and_rpc_has_a_comment(tmp_path) -> None:
    from grpc_tools import protoc

    out = tmp_path / "api.binpb"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in ROOT.glob("protos/**/*.proto"))
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{ROOT / 'third_party' / 'protos'}",
            f"-I{resources.files('grpc_tools') / '_proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ]
    )
    assert status == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert {f.name for f in files} >= {
        "imgsearch/v1/embedder.proto",
        "imgsearch/v1/searcher.proto",
    }
    missing = [m for f in files for m in _undocumented_elements(f)]
    assert missing == []


def test_importing_the_client_pulls_in_neither_torch_nor_psycopg2() -> None:
    code = (
        "import sys, imgsearch, imgsearch.v1.embedder_pb2_grpc, imgsearch.v1.searcher_pb2_grpc; "
        "heavy = sorted(m for m in ('torch', 'torchvision', 'psycopg2', 'pgserver') "
        "if m in sys.modules); print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_and_rpcs_are_as_designed() -> None:
    from imgsearch.v1 import embedder_pb2, searcher_pb2

    embedder = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"]
    searcher = searcher_pb2.DESCRIPTOR.services_by_name["SearcherService"]
    assert embedder.full_name == "imgsearch.v1.EmbedderService"
    assert {m.name for m in embedder.methods} == {"Embed", "EmbedStream", "GetModelInfo"}
    assert {m.name for m in searcher.methods} == {
        "CreateCollection",
        "GetCollection",
        "ListCollections",
        "DropCollection",
        "Upsert",
        "FindDuplicates",
        "Search",
        "SearchBatch",
        "Get",
        "ListItems",
        "Delete",
        "GetStats",
    }
    stream = embedder.methods_by_name["EmbedStream"]
    assert stream.client_streaming and stream.server_streaming
    upsert = searcher.methods_by_name["Upsert"]
    assert upsert.client_streaming and not upsert.server_streaming
    batch = searcher.methods_by_name["SearchBatch"]
    assert not batch.client_streaming and not batch.server_streaming
    for result in (embedder_pb2.EmbedResult, searcher_pb2.SearchBatchResult):
        error_field = result.DESCRIPTOR.fields_by_name["error"]
        assert error_field.message_type.full_name == "google.rpc.Status"
