"""Receiving an SMTP DATA stream into a spool: in memory up to a small size, then in a temporary file, with the
limits applied while the bytes arrive (size, line length, header block), never after.

`DataReceiver.feed(chunk)` takes the content in chunks of any size, cut anywhere (`feed_last` the one holding the
end of the data); it removes the SMTP dot-stuffing
(RFC 5321 4.5.2) with bytes operations over whole chunks (no Python step per line: a 20 MB drop of empty lines is
ten million lines), and once a limit is exceeded it stops storing but the caller keeps reading to the end of the
data, so the refusal can be answered after the final dot as RFC 5321 4.2.5 expects. `end_of_data(tail, chunk)`
finds that end (the `<CRLF>.<CRLF>` line) across chunk boundaries.
"""

from __future__ import annotations

import enum
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_CRLF = b"\r\n"
_END_OF_DATA = b"\r\n.\r\n"
# The content starts at a line start: as if a line had just ended (the end-of-data line may be the first).
DATA_START = _CRLF


def end_of_data(tail: bytes, chunk: bytes) -> tuple[int, int] | None:
    """Where the content ends in `chunk` and where what follows the end-of-data line starts, given the last bytes
    before it (`tail`, at least 4, or DATA_START); None when the end is not in it. The content end may be 0 or
    less when the CRLF ending the last line was already in an earlier chunk."""
    probe = tail + chunk
    end = probe.find(_END_OF_DATA)
    if end < 0:
        return None
    return end + 2 - len(tail), end + len(_END_OF_DATA) - len(tail)


class DataRefusal(enum.Enum):
    TOO_LARGE = "too_large"
    LINE_TOO_LONG = "line_too_long"
    HEADER_TOO_LARGE = "header_too_large"


@dataclass(frozen=True)
class SpoolLimits:
    max_bytes: int
    max_line_bytes: int
    max_header_bytes: int
    max_header_fields: int
    # Kept in memory up to this size, then the spool is a temporary file in `directory` (None: the system's).
    memory_bytes: int
    directory: Path | None = None


@dataclass
class ReceivedData:
    """What DATA delivered: the content in its spool (rewound), its size, and the refusal a limit decided."""

    spool: IO[bytes]
    size: int
    refusal: DataRefusal | None
    # The first bytes of the content (up to a limit), for the drop log of a refused drop.
    head: bytes

    def read_all(self) -> bytes:
        self.spool.seek(0)
        return self.spool.read()

    def close(self) -> None:
        self.spool.close()


class DataReceiver:
    """Feeds one DATA transaction's bytes into a spool; see the module doc."""

    def __init__(self, limits: SpoolLimits, *, head_bytes: int = 256 * 1024) -> None:
        self._limits = limits
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(
            max_size=limits.memory_bytes,
            dir=str(limits.directory) if limits.directory else None,
            prefix="drop-",
        )
        self._head_limit = head_bytes
        self._head = bytearray()
        # The start of a line not yet ended by CRLF (kept to the next chunk).
        self._partial = b""
        self._size = 0
        self._refusal: DataRefusal | None = None
        self._in_header = True
        self._header_bytes = 0
        self._header_fields = 0
        # Tried only at line starts, so the search is linear: a line (with its CR) longer than the limit + CR.
        self._long_line = re.compile(rb"(?:\A|\n)[^\n]{%d}" % (limits.max_line_bytes + 2))

    @property
    def refusal(self) -> DataRefusal | None:
        return self._refusal

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the content, dot-stuffed as on the wire, cut anywhere."""
        data = self._partial + chunk
        cut = data.rfind(_CRLF) + 2 if _CRLF in data else 0
        complete, self._partial = data[:cut], data[cut:]
        if len(self._partial) > self._limits.max_line_bytes + 2:
            self._refuse(DataRefusal.LINE_TOO_LONG)
            self._partial = b""  # only the end of the data matters now; the caller finds it
        if complete and self._refusal is None:
            self._store(complete)

    def feed_last(self, chunk: bytes, content_end: int) -> None:
        """The chunk holding the end-of-data line, and where the content ends in it (`end_of_data`). The content
        ends with a line end; when that was in an earlier chunk, `content_end` is zero or less and the bytes of
        the end-of-data line seen so far are dropped."""
        if content_end >= 0:
            data = self._partial + chunk[:content_end]
        else:
            data = self._partial[: max(len(self._partial) + content_end, 0)]
        self._partial = b""
        if data and self._refusal is None:
            self._store(data)

    def finish(self) -> ReceivedData:
        """The content received (call after the final chunk)."""
        self._spool.seek(0)
        return ReceivedData(self._spool, self._size, self._refusal, bytes(self._head))

    def discard(self) -> None:
        self._spool.close()

    def _refuse(self, refusal: DataRefusal) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def _store(self, lines: bytes) -> None:
        """Complete lines (starting at a line start): checked, unstuffed and written to the spool."""
        if self._long_line.search(lines) is not None:
            self._refuse(DataRefusal.LINE_TOO_LONG)
            return
        # Dot-stuffing: a line that starts with "." had one more added by the client.
        content = (_CRLF + lines).replace(b"\r\n.", _CRLF)[2:] if b"." in lines else lines
        if self._in_header:
            self._count_header(content)
            if self._refusal is not None:
                return
        self._size += len(content)
        if self._size > self._limits.max_bytes:
            self._refuse(DataRefusal.TOO_LARGE)
            return
        if len(self._head) < self._head_limit:
            self._head += content[: self._head_limit - len(self._head)]
        self._spool.write(content)

    def _count_header(self, content: bytes) -> None:
        """The header block's size and field count, up to its blank line (a field is a line not starting with
        whitespace); beyond the limits the drop is refused before its body is stored."""
        probe = _CRLF + content
        blank = probe.find(b"\r\n\r\n") if not content.startswith(_CRLF) else 0
        header = content if blank < 0 else content[: max(blank, 0)]
        if blank >= 0:
            self._in_header = False
        self._header_bytes += len(header)
        lines = header.count(_CRLF) + (0 if header.endswith(_CRLF) or not header else 1)
        continued = (_CRLF + header).count(b"\r\n ") + (_CRLF + header).count(b"\r\n\t")
        self._header_fields += lines - continued
        if (
            self._header_bytes > self._limits.max_header_bytes
            or self._header_fields > self._limits.max_header_fields
        ):
            self._refuse(DataRefusal.HEADER_TOO_LARGE)
