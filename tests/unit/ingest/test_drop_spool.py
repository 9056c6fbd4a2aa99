"""The DATA receiver: dot-stuffing undone and the end of data found whatever the chunking, limits applied while the
bytes arrive, and a drop beyond the memory size kept on disk."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.drop_spool import (
    DATA_START,
    DataReceiver,
    DataRefusal,
    ReceivedData,
    SpoolLimits,
    end_of_data,
)

LIMITS = SpoolLimits(
    max_bytes=1024 * 1024,
    max_line_bytes=1000,
    max_header_bytes=4096,
    max_header_fields=50,
    memory_bytes=64 * 1024,
)


def stuffed(content_lines: list[bytes]) -> bytes:
    """The lines as an SMTP client sends them: dot-stuffed, CRLF-ended, then the end-of-data line."""
    return (
        b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in content_lines)
        + b".\r\n"
    )


def receive(wire: bytes, cuts: list[int], limits: SpoolLimits = LIMITS) -> tuple[ReceivedData, bytes]:
    """What the listener's read loop does, chunk by chunk; returns the data and what followed its end."""
    receiver = DataReceiver(limits)
    tail = DATA_START
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(wire)}), len(wire)]
    for start, stop in itertools.pairwise(bounds):
        chunk = wire[start:stop]
        found = end_of_data(tail, chunk)
        if found is not None:
            content_end, rest = found
            receiver.feed_last(chunk, content_end)
            return receiver.finish(), chunk[rest:] + wire[stop:]
        receiver.feed(chunk)
        tail = (tail + chunk)[-4:]
    raise AssertionError("the end of data was never found")


lines = st.lists(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    | st.sampled_from([b".", b"..", b".x", b"", b"...."]),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    content_lines=lines,
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    after=st.sampled_from([b"", b"QUIT\r\n"]),
)
def test_any_chunking_gives_back_the_content_and_what_followed(
    content_lines: list[bytes], cuts: list[int], after: bytes
) -> None:
    received, rest = receive(stuffed(content_lines) + after, cuts)

    expected = b"".join(line + b"\r\n" for line in content_lines)
    assert received.read_all() == expected
    assert received.size == len(expected) and received.refusal is None
    assert rest == after


def test_an_empty_message_ends_at_the_first_line() -> None:
    received, rest = receive(b".\r\nQUIT\r\n", [1, 2])

    assert received.read_all() == b"" and rest == b"QUIT\r\n"


@pytest.mark.parametrize(
    ("content_lines", "refusal"),
    [
        ([b"Subject: s", b"", b"x" * 1001], DataRefusal.LINE_TOO_LONG),
        ([b"Subject: s", b"", *[b"y" * 900] * 1300], DataRefusal.TOO_LARGE),
        ([*(b"X-F: v" for _ in range(51)), b"", b"body"], DataRefusal.HEADER_TOO_LARGE),
        (
            [b"X-Big: " + b"v" * 900, *(b" " + b"v" * 900 for _ in range(5)), b"", b"body"],
            DataRefusal.HEADER_TOO_LARGE,
        ),
    ],
)
def test_limits_apply_while_reading_and_the_rest_is_only_scanned(
    content_lines: list[bytes], refusal: DataRefusal
) -> None:
    wire = stuffed(content_lines)

    received, rest = receive(wire, list(range(0, len(wire), 4096)))

    assert received.refusal is refusal
    assert rest == b""
    assert len(received.read_all()) <= LIMITS.max_bytes


def test_negative_control_the_same_lines_within_the_limits_are_received() -> None:
    ok = [b"Subject: s", *(b"X-F: v" for _ in range(40)), b"", *[b"y" * 900] * 100]

    received, _ = receive(stuffed(ok), list(range(0, 200_000, 4096)))

    assert received.refusal is None and received.read_all() == b"".join(line + b"\r\n" for line in ok)


def _rolled(received: ReceivedData) -> bool:
    spool: Any = received.spool
    return bool(spool._rolled)


def test_a_drop_beyond_the_memory_size_is_spooled_to_disk_and_a_small_one_is_not() -> None:
    large = [b"Subject: s", b"", *[b"z" * 76] * 2000]
    small = [b"Subject: s", b"", b"hello"]

    received_large, _ = receive(stuffed(large), list(range(0, 400_000, 65536)))
    received_small, _ = receive(stuffed(small), [])

    assert _rolled(received_large) and not _rolled(received_small)
    assert received_large.read_all() == b"".join(line + b"\r\n" for line in large)


def test_twenty_megabytes_of_empty_lines_are_received_in_bytes_operations() -> None:
    """The drop that took 33 s and +1.5 GB: ten million empty lines. The receiver keeps them on disk."""
    limits = SpoolLimits(
        max_bytes=25 * 1024 * 1024,
        max_line_bytes=8192,
        max_header_bytes=256 * 1024,
        max_header_fields=1000,
        memory_bytes=1024 * 1024,
    )
    wire = b"Subject: empty lines\r\n\r\n" + b"\r\n" * 10_000_000 + b".\r\n"

    received, _ = receive(wire, list(range(0, len(wire), 65536)), limits)

    assert received.refusal is None and received.size == len(wire) - 3
    assert _rolled(received)
