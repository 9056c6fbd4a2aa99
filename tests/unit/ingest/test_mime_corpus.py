"""The CPython email test corpus of the running Python never crashes the normalizer, and the bounded source the
parser sees keeps every message's structure."""

from __future__ import annotations

import email
import re
import sysconfig
from email import policy
from email.message import Message
from email.parser import BytesParser
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
    assert not [d for d in mail.defects if d.startswith(("limit:", "parse_failed"))]
    bounded = bound_raw_message(raw, DEFAULT_LIMITS).data
    # No limit is anywhere near ordinary mail: the parser saw the message unchanged, but for the MIME parameter
    # fields in RFC 2231 syntax or folded inside a quoted value, which it sees in their plain, unfolded form.
    if not _PARAMETER_FIELD_NEEDING_REWRITE.search(raw):
        assert bounded == raw
    # The structure the modern parser (which reads RFC 2231 and unfolds) sees is what the bounded source gives.
    assert _shape(BytesParser(policy=policy.compat32).parsebytes(bounded)) == _shape(
        BytesParser(policy=policy.default).parsebytes(raw)
    )


_PARAMETER_FIELD_NEEDING_REWRITE = re.compile(
    rb'^content-(?:type|disposition):(?:[^\n]|\n[ \t])*(?:\*\s*(?:\d+\s*\*?\s*)?=|"[^"]*\n)',
    re.IGNORECASE | re.MULTILINE,
)


def _shape(message: Message) -> list[tuple[str, str | None]]:
    return [(part.get_content_type(), part.get_boundary()) for part in message.walk()]
