"""Multipart bodies (batch multipart/mixed, upload multipart/related): parts, head/body split, headers.
Both CRLF and LF line endings are accepted, because google-api-python-client sends LF."""

from __future__ import annotations

import re

from sandbox.errors import bad_request


def boundary_of(content_type: str) -> str:
    found = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not found:
        raise bad_request("Missing boundary in multipart/mixed Content-Type")
    return found.group(1)


def split_head(blob: bytes) -> tuple[list[bytes], bytes]:
    """Header lines and the rest, accepting CRLF or LF line endings."""
    crlf, lf = blob.find(b"\r\n\r\n"), blob.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        head, rest = blob[:crlf], blob[crlf + 4 :]
    elif lf >= 0:
        head, rest = blob[:lf], blob[lf + 2 :]
    else:
        head, rest = blob, b""
    return [line for line in head.replace(b"\r\n", b"\n").split(b"\n") if line], rest


def header_dict(lines: list[bytes]) -> dict[str, str]:
    """Header lines as a dict keyed by lower-cased name (later lines win)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def split_parts(body: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(
            chunk[2:] if chunk.startswith(b"\r\n") else chunk[1:] if chunk.startswith(b"\n") else chunk
        )
    return parts
