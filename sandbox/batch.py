"""Batch requests at /batch and /batch/gmail/v1: multipart/mixed in, multipart/mixed out, at most 100 parts."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import parse_qsl

from multidict import MultiDict

from sandbox.errors import bad_request
from sandbox.gmail_api import ApiRequest, ApiResponse, GmailApi, error_response
from sandbox.multipart import boundary_of, header_dict, split_head, split_parts

MAX_PARTS = 100


def inherited_headers(outer: Mapping[str, str]) -> dict[str, str]:
    """Outer headers that apply to every part: all but the Content-* ones."""
    return {k.lower(): v for k, v in outer.items() if not k.lower().startswith("content-")}


def parse_inner(part: bytes, inherited: dict[str, str]) -> tuple[str | None, ApiRequest]:
    """One part: its Content-ID and the HTTP request it carries (outer non-Content headers apply too)."""
    part_header_lines, http_blob = split_head(part)
    part_headers = header_dict(part_header_lines)
    request_lines, inner_body = split_head(http_blob)
    if not request_lines:
        raise bad_request("Empty batch part")
    method, target, *_ = request_lines[0].decode("latin-1").split(" ")
    headers = {**inherited, **header_dict(request_lines[1:])}
    path, _, query = target.partition("?")
    if inner_body.endswith(b"\r\n"):
        inner_body = inner_body[:-2]
    elif inner_body.endswith(b"\n"):
        inner_body = inner_body[:-1]
    return part_headers.get("content-id"), ApiRequest(
        method=method.upper(),
        path=path,
        query=MultiDict(parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        body=inner_body,
    )


def _response_part(content_id: str | None, response: ApiResponse) -> bytes:
    lines = ["Content-Type: application/http"]
    if content_id:
        inner = content_id.strip("<>")
        lines.append(f"Content-ID: <response-{inner}>")
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
    head = [f"HTTP/1.1 {response.status} {reason}"]
    if response.content_type:
        head.append(f"Content-Type: {response.content_type}")
    head.extend(f"{k}: {v}" for k, v in response.headers.items())
    return (
        ("\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(head) + "\r\n\r\n").encode() + response.body + b"\r\n"
    )


async def run_batch(api: GmailApi, content_type: str, body: bytes, outer: Mapping[str, str]) -> ApiResponse:
    """Execute every part (concurrently, as Google may) and answer in one multipart/mixed body."""
    if not content_type.lower().startswith("multipart/mixed"):
        return error_response(bad_request("Batch requests must be multipart/mixed"))
    try:
        parts = split_parts(body, boundary_of(content_type))
    except Exception as error:
        return error_response(bad_request(f"Malformed batch body: {error}"))
    if len(parts) > MAX_PARTS:
        return error_response(bad_request(f"Too many requests in batch request. The maximum is {MAX_PARTS}."))
    if not parts:
        return error_response(bad_request("Empty batch request"))
    try:
        inherited = inherited_headers(outer)
        parsed = [parse_inner(part, inherited) for part in parts]
    except ValueError as error:
        return error_response(bad_request(f"Malformed batch part: {error}"))
    for _, request in parsed:
        if request.path.startswith("/upload/"):
            return error_response(bad_request("Media requests cannot be used in a batch request."))
    responses = await asyncio.gather(*(api.handle(request) for _, request in parsed))
    boundary = "batch_" + secrets.token_hex(12)
    out = b"".join(
        b"--" + boundary.encode() + b"\r\n" + _response_part(cid, resp)
        for (cid, _), resp in zip(parsed, responses, strict=True)
    )
    out += b"--" + boundary.encode() + b"--\r\n"
    return ApiResponse(200, out, content_type=f"multipart/mixed; boundary={boundary}")
