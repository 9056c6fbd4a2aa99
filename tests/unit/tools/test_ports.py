"""Free ports: never handed to two processes while a claim is fresh, and claims do not pile up forever."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from tools import ports


def _hand_out(claims_file: str, count: int) -> list[int]:
    ports.CLAIMS_FILE = Path(claims_file)
    return [ports.free_port() for _ in range(count)]


def test_ports_handed_to_concurrent_processes_are_all_different_and_claimed(tmp_path: Path) -> None:
    claims_file = tmp_path / "claims.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        batches = pool.starmap(_hand_out, [(str(claims_file), 25)] * 4)
    handed = [port for batch in batches for port in batch]
    assert len(handed) == len(set(handed)) == 100
    assert set(json.loads(claims_file.read_text())) == {str(port) for port in handed}


def test_a_claimed_port_is_not_handed_out_again_until_its_claim_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims_file = tmp_path / "claims.json"
    monkeypatch.setattr(ports, "CLAIMS_FILE", claims_file)
    first = ports.free_port()
    stale_at = time.time() - ports.CLAIM_SECONDS - 1
    claims_file.write_text(json.dumps({str(first): time.time(), "1": stale_at}))

    later = [ports.free_port() for _ in range(30)]

    assert first not in later
    claims = json.loads(claims_file.read_text())
    assert "1" not in claims and str(first) in claims


def test_a_corrupt_claims_file_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claims_file = tmp_path / "claims.json"
    claims_file.write_text("{not json")
    monkeypatch.setattr(ports, "CLAIMS_FILE", claims_file)

    port = ports.free_port()

    assert json.loads(claims_file.read_text()) == {str(port): pytest.approx(time.time(), abs=60)}
