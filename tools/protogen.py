"""Generates the Python code of protos/ into mailsync/v1 (messages, gRPC stubs and type stubs).

`-I protos` mirrors the Python package (protos/mailsync/v1 -> mailsync.v1), so the generated modules import
each other as `from mailsync.v1 import common_pb2` with no sys.path or import rewriting.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("mailsync") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc over every .proto into out_dir; returns the files written."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    target = ROOT / PACKAGE
    for stale in target.glob("*_pb2*.py*"):
        stale.unlink()
    written = generate(ROOT)
    for init in (ROOT / "mailsync" / "__init__.py", target / "__init__.py"):
        if not init.exists():
            init.write_text('"""Generated from protos/: do not edit; run `make protos`."""\n')
    print(f"generated {len(written)} files into {target.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    if shutil.which("protoc-gen-mypy") is None:
        raise SystemExit("protoc-gen-mypy not on PATH: run through `make protos`")
    main()
