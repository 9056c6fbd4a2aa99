"""The CPython email test corpus of the running Python never crashes the normalizer."""

from __future__ import annotations

import email
import sysconfig
from pathlib import Path

import pytest

from services.ingest.domain.mime import DEFAULT_LIMITS, normalize_message
from services.ingest.domain.mime_bounds import bound_raw_message
from tests.fixtures.mime_samples import assert_publishable


def _corpus_dir() -> Path:
    """Lib/test/test_email/data of the running Python, wherever this installation keeps its stdlib tests."""
    candidates = [
        Path(email.__file__).parent.parent / "test" / "test_email" / "data",
        Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"the running Python ships no email test corpus; looked in {candidates}")


CORPUS = sorted(_corpus_dir().glob("msg_*.txt"))


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_corpus_message_normalizes_without_crashing(path: Path) -> None:
    raw = path.read_bytes()

    mail = normalize_message(raw)

    assert_publishable(mail)
    assert mail.size_bytes == len(raw)
    # No limit is anywhere near ordinary mail: the parser saw the message unchanged.
    assert bound_raw_message(raw, DEFAULT_LIMITS).data == raw
    assert not [d for d in mail.defects if d.startswith(("limit:", "parse_failed"))]
