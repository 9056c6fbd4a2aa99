"""The resource limits that keep one hostile message from stalling or crashing an ingest worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MimeLimits:
    """Caps applied before and while a raw message is parsed; exceeding one records a defect, never raises.

    The header caps exist because CPython's header parser is super-linear in encoded words and addresses
    (cpython gh-136063); the depth cap because the feed parser recurses per nesting level.
    """

    # Gmail accepts incoming messages up to 50 MB.
    max_message_bytes: int = 50 * 1024 * 1024
    # Enough for a 45 MB attachment in 76-character base64 lines.
    max_lines: int = 600_000
    # Per header block (the message's own and each MIME part's).
    max_header_block_bytes: int = 256 * 1024
    max_header_bytes: int = 64 * 1024
    # Address fields: the header parser is quadratic in their tokens and defects.
    max_address_header_bytes: int = 16 * 1024
    # MIME structure fields (Content-*) are short in real mail and slow to parse when huge.
    max_mime_header_bytes: int = 4 * 1024
    max_header_count: int = 1000
    max_addresses_per_header: int = 1000
    max_encoded_words_per_header: int = 256
    max_encoded_words_total: int = 4096
    max_depth: int = 50
    # Body lines times the multiparts open around them (the parser tests each line against each boundary):
    # four times the line cap, so a 45 MB attachment three multiparts deep still fits.
    max_boundary_checks: int = 2_400_000
    max_parts: int = 500
    # Characters kept of each of the text and HTML bodies.
    max_body_chars: int = 256 * 1024
    max_message_ids: int = 100
    max_participants: int = 1000
    # One address (display name included) and all address fields of a message together; the address reader
    # is linear, these bound its work and what is published.
    max_address_bytes: int = 2048
    max_address_bytes_total: int = 64 * 1024
    max_defects: int = 100
    snippet_chars: int = 200
