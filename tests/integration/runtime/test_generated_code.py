"""The committed mailsync/v1 code is exactly what `make protos` generates from protos/ now."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tools import protogen


def test_generated_code_is_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # protoc finds the mypy plugins (protoc-gen-mypy) on PATH, and they live next to this interpreter.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    written = protogen.generate(tmp_path)
    committed_dir = protogen.ROOT / protogen.PACKAGE
    committed = sorted(
        p.name for p in committed_dir.iterdir() if p.name.endswith(protogen.GENERATED_SUFFIXES)
    )

    assert sorted(p.name for p in written) == committed, (
        "run `make protos`: the set of generated files differs"
    )
    stale = [p.name for p in written if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert stale == [], f"run `make protos`: out of date: {stale}"


def test_a_changed_proto_would_be_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: generating from a modified .proto gives different bytes, so the check above can fail."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    protos = tmp_path / "protos"
    (protos / protogen.PACKAGE).mkdir(parents=True)
    for source in (protogen.PROTO_ROOT / protogen.PACKAGE).glob("*.proto"):
        (protos / protogen.PACKAGE / source.name).write_bytes(source.read_bytes())
    common = protos / protogen.PACKAGE / "common.proto"
    common.write_text(common.read_text() + "\nmessage ProtogenDriftProbe {\n  string probe = 1;\n}\n")
    monkeypatch.setattr(protogen, "PROTO_ROOT", protos)
    out = tmp_path / "out"
    out.mkdir()
    written = {p.name: p.read_bytes() for p in protogen.generate(out)}
    assert written["common_pb2.py"] != (protogen.ROOT / protogen.PACKAGE / "common_pb2.py").read_bytes()
