"""Regenerate the committed gRPC stubs in imgsearch/v1/ from protos/, or check they are current.

    python scripts/gen_protos.py          # rewrite imgsearch/v1/*_pb2*.py[i]
    python scripts/gen_protos.py --check  # exit 1, naming the files, when they are stale

Outputs depend on the exact grpcio-tools and mypy-protobuf versions pinned in pyproject's [dev].
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "protos"
PACKAGE_DIR = Path("imgsearch") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over protos/imgsearch/v1; return the generated files, relative to out_dir."""
    from grpc_tools import protoc

    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto")
    )
    well_known = resources.files("grpc_tools") / "_proto"
    mypy_grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if mypy_grpc_plugin is None:
        sys.exit("protoc-gen-mypy_grpc not found next to this Python: install the [dev] extra")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    return sorted(
        p.relative_to(out_dir)
        for p in (out_dir / PACKAGE_DIR).iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def committed_files() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for p in (ROOT / PACKAGE_DIR).iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def stale_files(fresh_dir: Path, fresh: list[Path]) -> list[str]:
    """Files that differ, are missing, or should no longer exist."""
    problems = [
        str(rel)
        for rel in fresh
        if not (ROOT / rel).exists() or (ROOT / rel).read_bytes() != (fresh_dir / rel).read_bytes()
    ]
    problems += [f"{rel} (no longer generated)" for rel in set(committed_files()) - set(fresh)]
    return sorted(problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        fresh = generate(fresh_dir)
        stale = stale_files(fresh_dir, fresh)
        if check:
            if stale:
                print("stale generated code (run `make protos`):", *stale, sep="\n  ")
                return 1
            print(f"generated code is current ({len(fresh)} files)")
            return 0
        for rel in committed_files():
            (ROOT / rel).unlink()
        for rel in fresh:
            shutil.copyfile(fresh_dir / rel, ROOT / rel)
        print(f"wrote {len(fresh)} files under {PACKAGE_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
