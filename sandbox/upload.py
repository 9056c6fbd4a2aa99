"""Media upload for send/insert/import at /upload/gmail/v1/...: uploadType media, multipart and resumable."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from multidict import MultiDict

from sandbox.discovery import method_scopes
from sandbox.errors import GoogleApiError, bad_request, insufficient_scopes, not_found
from sandbox.gmail_api import (
    INSERT_MAX_BYTES,
    SEND_MAX_BYTES,
    ApiRequest,
    ApiResponse,
    Call,
    GmailApi,
    check_size,
    error_response,
)
from sandbox.multipart import boundary_of, header_dict, split_head, split_parts

_PATH = re.compile(r"^/upload/gmail/v1/users/(?P<userId>[^/]+)/messages(?P<action>/send|/import)?$")
_METHODS = {
    "/send": ("gmail.users.messages.send", SEND_MAX_BYTES),
    "/import": ("gmail.users.messages.import", INSERT_MAX_BYTES),
    "": ("gmail.users.messages.insert", INSERT_MAX_BYTES),
}
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)|bytes \*/(\d+)")


@dataclass
class ResumableSession:
    user_id: str
    action: str
    metadata: dict[str, Any]
    total: int | None
    received: bytearray = field(default_factory=bytearray)


class UploadApi:
    def __init__(self, api: GmailApi) -> None:
        self.api = api
        self.sessions: dict[str, ResumableSession] = {}

    async def handle(self, request: ApiRequest, content_type: str) -> ApiResponse:
        found = _PATH.match(request.path)
        if not found:
            return error_response(not_found())
        user_id, action = found["userId"], found["action"] or ""
        _, limit = _METHODS[action]
        upload_type = request.query.get("uploadType", "media")
        try:
            if request.method == "PUT" or "upload_id" in request.query:
                return await self._resumable_chunk(request)
            if request.method != "POST":
                raise GoogleApiError(405, "methodNotAllowed", "Method Not Allowed")
            if upload_type == "media":
                raw, metadata = request.body, dict[str, Any]()
            elif upload_type == "multipart":
                raw, metadata = self._multipart(request.body, content_type)
            elif upload_type == "resumable":
                return self._start_resumable(request, user_id, action, limit)
            else:
                raise bad_request(f"Invalid uploadType: {upload_type}", reason="invalidArgument")
            check_size(raw, limit)
        except GoogleApiError as error:
            return error_response(error)
        return await self._finish(request, user_id, action, raw, metadata)

    async def _finish(
        self, request: ApiRequest, user_id: str, action: str, raw: bytes, metadata: dict[str, Any]
    ) -> ApiResponse:
        method_id, _ = _METHODS[action]

        async def store(call: Call) -> dict[str, Any]:
            if action == "/send":
                return await self.api.send_raw(call.mailbox, raw, metadata.get("threadId"))
            return self.api.store_raw(call.mailbox, raw, metadata, thread_by_headers=action == "/import")

        return await self.api.run(request, method_id, user_id, {}, store)

    @staticmethod
    def _multipart(body: bytes, content_type: str) -> tuple[bytes, dict[str, Any]]:
        parts = split_parts(body, boundary_of(content_type))
        if len(parts) != 2:
            raise bad_request("Multipart upload needs exactly a metadata part and a media part")
        _, metadata_blob = split_head(parts[0])
        media_lines, media = split_head(parts[1])
        media = re.sub(rb"\r?\n$", b"", media)
        headers = header_dict(media_lines)
        if not headers.get("content-type", "message/rfc822").lower().startswith("message/"):
            raise bad_request("Media type not accepted: expected message/*", reason="badContent")
        try:
            metadata = json.loads(metadata_blob.strip() or b"{}")
        except ValueError as error:
            raise bad_request(f"Invalid JSON metadata: {error}") from error
        return media, metadata

    def _start_resumable(self, request: ApiRequest, user_id: str, action: str, limit: int) -> ApiResponse:
        token = self.api.authenticate(request)
        if not set(token.scopes) & method_scopes()[_METHODS[action][0]]:
            raise insufficient_scopes()
        declared = request.headers.get("X-Upload-Content-Length")
        total = int(declared) if declared and declared.isdigit() else None
        if total is not None and total > limit:
            raise GoogleApiError(413, "uploadTooLarge", f"Media larger than: {limit}")
        try:
            metadata = json.loads(request.body or b"{}")
        except ValueError as error:
            raise bad_request(f"Invalid JSON metadata: {error}") from error
        upload_id = secrets.token_urlsafe(18)
        self.sessions[upload_id] = ResumableSession(
            user_id=user_id, action=action, metadata=metadata, total=total
        )
        host = request.headers.get("Host", "")
        location = f"http://{host}{request.path}?uploadType=resumable&upload_id={upload_id}"
        return ApiResponse(
            200, b"", headers={"Location": location, "X-GUploader-UploadID": upload_id}, content_type=""
        )

    async def _resumable_chunk(self, request: ApiRequest) -> ApiResponse:
        upload_id = request.query.get("upload_id", "")
        session = self.sessions.get(upload_id)
        if session is None:
            raise not_found()
        content_range = request.headers.get("Content-Range", "")
        found = _RANGE.match(content_range)
        if found and found.group(4):
            session.total = int(found.group(4))
        elif found:
            start = int(found.group(1))
            if start != len(session.received):
                raise bad_request("Content-Range does not continue the upload")
            session.received.extend(request.body)
            if found.group(3) != "*":
                session.total = int(found.group(3))
        else:
            session.received.extend(request.body)
            session.total = len(session.received)
        limit = _METHODS[session.action][1]
        if len(session.received) > limit:
            del self.sessions[upload_id]
            raise GoogleApiError(413, "uploadTooLarge", f"Media larger than: {limit}")
        if session.total is None or len(session.received) < session.total:
            headers = {"Range": f"bytes=0-{len(session.received) - 1}"} if session.received else {}
            return ApiResponse(308, b"", headers=headers, content_type="")
        del self.sessions[upload_id]
        chunk_request = ApiRequest(request.method, request.path, MultiDict(), request.headers, b"")
        return await self._finish(
            chunk_request, session.user_id, session.action, bytes(session.received), session.metadata
        )
