"""Gmail REST under /gmail/v1/users/{userId}/...: routing, bearer and scope checks, faults, quota, the methods."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import MultiDict

from sandbox import mime
from sandbox.core import SandboxCore
from sandbox.discovery import method_scopes
from sandbox.errors import (
    GoogleApiError,
    backend_error,
    bad_request,
    insufficient_scopes,
    invalid_credentials,
    missing_credentials,
    not_found,
    too_many_concurrent,
)
from sandbox.grants import AccessToken
from sandbox.query import compile_query
from sandbox.settings import SENT_COPY_BEFORE_RESPONSE
from sandbox.state import Mailbox, StoredMessage

logger = logging.getLogger(__name__)
METADATA_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"
SEND_MAX_BYTES = 36_700_160
INSERT_MAX_BYTES = 157_286_400
JSON_TYPE = "application/json; charset=UTF-8"


@dataclass
class ApiRequest:
    """A transport-neutral HTTP request, so batch parts and uploads go through the same checks."""

    method: str
    path: str
    query: MultiDict[str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass
class ApiResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE


def json_response(payload: Any, status: int = 200) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload).encode())


def error_response(error: GoogleApiError) -> ApiResponse:
    return ApiResponse(error.code, error.encoded(), dict(error.headers))


@dataclass
class Call:
    """One authorised Gmail call: the mailbox it acts on, the token and the parsed inputs."""

    request: ApiRequest
    mailbox: Mailbox
    token: AccessToken
    params: dict[str, str]

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.request.query.get(name, default)

    def args(self, name: str) -> list[str]:
        return self.request.query.getall(name, [])

    def json(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            parsed = json.loads(self.request.body)
        except ValueError as error:
            raise bad_request(f"Invalid JSON payload received. {error}") from error
        if not isinstance(parsed, dict):
            raise bad_request("Invalid JSON payload received.")
        return parsed

    @property
    def metadata_only(self) -> bool:
        return set(self.token.scopes) & method_scopes()["gmail.users.messages.get"] == {METADATA_SCOPE}


Handler = Callable[[Call], Awaitable[Any]]


def _int_arg(value: str | None, default: int, maximum: int, name: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError as error:
        raise bad_request(f"Invalid value for {name}: {value}", reason="invalidArgument") from error
    if number < 0:
        raise bad_request(f"Invalid value for {name}: {value}", reason="invalidArgument")
    return min(number, maximum) if number else default


def _page_token(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode())
    except ValueError as error:
        raise bad_request("Invalid pageToken", reason="invalidArgument") from error


def _make_page_token(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def attachment_id(message: StoredMessage, part_id: str) -> str:
    return "ANGjdJ" + mime.b64url_unpadded(f"{message.id}:{part_id}".encode())


class GmailApi:
    """The Gmail methods, and `run`: the pipeline every call (plain, batched or uploaded) goes through."""

    def __init__(self, core: SandboxCore) -> None:
        self.core = core
        self.in_flight: dict[str, int] = defaultdict(int)
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        # Routes grouped by the path segment after the user id, so a request tries only a few patterns.
        self._routes_by_resource: dict[str, list[tuple[str, re.Pattern[str], str, Handler]]] = {}
        for http_method, pattern, method_id, handler in (
            ("GET", r"profile", "gmail.users.getProfile", self.get_profile),
            ("GET", r"labels", "gmail.users.labels.list", self.list_labels),
            ("POST", r"labels", "gmail.users.labels.create", self.create_label),
            ("GET", r"labels/(?P<id>[^/]+)", "gmail.users.labels.get", self.get_label),
            ("GET", r"messages", "gmail.users.messages.list", self.list_messages),
            ("POST", r"messages", "gmail.users.messages.insert", self.insert_message),
            ("POST", r"messages/send", "gmail.users.messages.send", self.send_message),
            ("POST", r"messages/import", "gmail.users.messages.import", self.import_message),
            ("POST", r"messages/batchModify", "gmail.users.messages.batchModify", self.batch_modify),
            ("GET", r"messages/(?P<id>[^/]+)", "gmail.users.messages.get", self.get_message),
            ("DELETE", r"messages/(?P<id>[^/]+)", "gmail.users.messages.delete", self.delete_message),
            ("POST", r"messages/(?P<id>[^/]+)/modify", "gmail.users.messages.modify", self.modify_message),
            ("POST", r"messages/(?P<id>[^/]+)/trash", "gmail.users.messages.trash", self.trash_message),
            ("POST", r"messages/(?P<id>[^/]+)/untrash", "gmail.users.messages.untrash", self.untrash_message),
            (
                "GET",
                r"messages/(?P<messageId>[^/]+)/attachments/(?P<id>[^/]+)",
                "gmail.users.messages.attachments.get",
                self.get_attachment,
            ),
            ("GET", r"threads", "gmail.users.threads.list", self.list_threads),
            ("GET", r"threads/(?P<id>[^/]+)", "gmail.users.threads.get", self.get_thread),
            ("POST", r"threads/(?P<id>[^/]+)/modify", "gmail.users.threads.modify", self.modify_thread),
            ("POST", r"threads/(?P<id>[^/]+)/trash", "gmail.users.threads.trash", self.trash_thread),
            ("POST", r"threads/(?P<id>[^/]+)/untrash", "gmail.users.threads.untrash", self.untrash_thread),
            ("GET", r"history", "gmail.users.history.list", self.list_history),
            ("POST", r"watch", "gmail.users.watch", self.watch),
            ("POST", r"stop", "gmail.users.stop", self.stop),
        ):
            compiled = re.compile(r"^/gmail/v1/users/(?P<userId>[^/]+)/" + pattern + r"$")
            self.routes.append((http_method, compiled, method_id, handler))
            self._routes_by_resource.setdefault(pattern.split("/")[0], []).append(self.routes[-1])

    # -- pipeline --------------------------------------------------------------------------------------------

    async def handle(self, request: ApiRequest) -> ApiResponse:
        """Route a request under /gmail/v1 and run it; every error comes back in Google's JSON shape."""
        path_matched = False
        segments = request.path.split("/", 6)
        candidates = self._routes_by_resource.get(segments[5], []) if len(segments) > 5 else []
        for http_method, pattern, method_id, handler in candidates:
            found = pattern.match(request.path)
            if not found:
                continue
            path_matched = True
            if http_method != request.method:
                continue
            params = found.groupdict()
            return await self.run(request, method_id, params.pop("userId"), params, handler)
        if path_matched:
            return error_response(GoogleApiError(405, "methodNotAllowed", "Method Not Allowed"))
        return error_response(not_found())

    def authenticate(self, request: ApiRequest) -> AccessToken:
        # aiohttp's headers are case-insensitive; batch parts carry lower-cased names.
        header = request.headers.get("authorization") or ""
        scheme, _, value = header.partition(" ")
        if not value and "access_token" in request.query:
            scheme, value = "Bearer", request.query["access_token"]
        if scheme.lower() != "bearer" or not value.strip():
            raise missing_credentials()
        token = self.core.grants.authenticate(value.strip())
        if token is None:
            raise invalid_credentials()
        return token

    async def run(
        self, request: ApiRequest, method_id: str, user_id: str, params: dict[str, str], handler: Handler
    ) -> ApiResponse:
        try:
            token = self.authenticate(request)
            if method_scopes().get(method_id, frozenset()).isdisjoint(token.scopes):
                raise insufficient_scopes()
            address = token.grant.address
            if user_id != "me" and user_id.lower() != address:
                raise GoogleApiError(403, "forbidden", f"Delegation denied for {token.grant.address}")
            mailbox = self.core.mail.mailbox(address)
            faults = self.core.faults
            settings = self.core.settings
            caps = [
                c
                for c in (
                    faults.concurrency_cap(method_id),
                    settings.enforced_concurrency_per_user if settings.enforce_quota else None,
                )
                if c
            ]
            if caps and self.in_flight[address] >= min(caps):
                raise too_many_concurrent()
            self.in_flight[address] += 1
            try:
                latency = faults.latency_s(method_id)
                if latency:
                    await asyncio.sleep(latency)
                injected = faults.pick_error(method_id)
                if injected:
                    raise injected
                self.core.quota.charge(
                    address,
                    method_id,
                    settings.quota_table,
                    settings.enforce_quota,
                    settings.quota_units_per_window,
                    settings.quota_window_seconds,
                )
                result = await handler(Call(request, mailbox, token, params))
            finally:
                self.in_flight[address] -= 1
        except GoogleApiError as error:
            return error_response(error)
        except Exception:
            # A sandbox bug must still look like Google to the client: a retryable 500 backendError.
            logger.exception("Gmail sandbox failed on %s %s", request.method, request.path)
            return error_response(backend_error())
        if isinstance(result, ApiResponse):
            return result
        if result is None:
            return ApiResponse(204, b"", content_type="")
        return json_response(result)

    # -- rendering -------------------------------------------------------------------------------------------

    def _part_json(self, message: StoredMessage, part: mime.ParsedPart) -> dict[str, Any]:
        body: dict[str, Any] = {"size": len(part.body)}
        if not part.children:
            limit = (
                self.core.settings.attachment_inline_max_bytes
                if part.filename
                else self.core.settings.body_inline_max_bytes
            )
            if part.body and len(part.body) > limit:
                body["attachmentId"] = attachment_id(message, part.part_id)
            elif part.body:
                body["data"] = mime.b64url_unpadded(part.body)
        rendered: dict[str, Any] = {
            "partId": part.part_id,
            "mimeType": part.mime_type,
            "filename": part.filename,
            "headers": [{"name": k, "value": v} for k, v in part.headers],
            "body": body,
        }
        if part.children:
            rendered["parts"] = [self._part_json(message, child) for child in part.children]
        return rendered

    def render_message(self, message: StoredMessage, fmt: str, metadata_headers: list[str]) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "id": message.id,
            "threadId": message.thread_id,
            "labelIds": list(message.label_ids),
            "snippet": message.parsed.snippet,
            "sizeEstimate": len(message.raw),
            "historyId": str(message.history_id),
            "internalDate": str(message.internal_date_ms),
        }
        if fmt == "raw":
            rendered["raw"] = mime.b64url(message.raw)
        elif fmt == "metadata":
            wanted = {h.lower() for h in metadata_headers}
            headers = [
                {"name": k, "value": v}
                for k, v in message.parsed.headers
                if not wanted or k.lower() in wanted
            ]
            rendered["payload"] = {"mimeType": message.parsed.root.mime_type, "headers": headers}
        elif fmt == "full":
            rendered["payload"] = self._part_json(message, message.parsed.root)
        return rendered

    def _format(self, call: Call, allowed: tuple[str, ...]) -> str:
        fmt = (call.arg("format") or "full").lower()
        if fmt not in allowed:
            raise bad_request(f"Invalid value for format: {fmt}", reason="invalidArgument")
        if call.metadata_only and fmt in ("full", "raw"):
            raise GoogleApiError(403, "forbidden", f"Metadata scope doesn't allow format {fmt.upper()}")
        return fmt

    # -- methods ---------------------------------------------------------------------------------------------

    async def get_profile(self, call: Call) -> dict[str, Any]:
        return call.mailbox.profile()

    async def list_labels(self, call: Call) -> dict[str, Any]:
        return {"labels": [label.as_json() for label in call.mailbox.labels.values()]}

    async def get_label(self, call: Call) -> dict[str, Any]:
        label = call.mailbox.labels.get(call.params["id"])
        if label is None:
            raise not_found()
        counted = [m for m in call.mailbox.messages.values() if label.id in m.label_ids]
        threads = {m.thread_id for m in counted}
        unread = [m for m in counted if "UNREAD" in m.label_ids]
        return {
            **label.as_json(),
            "messagesTotal": len(counted),
            "messagesUnread": len(unread),
            "threadsTotal": len(threads),
            "threadsUnread": len({m.thread_id for m in unread}),
        }

    async def create_label(self, call: Call) -> dict[str, Any]:
        body = call.json()
        label = self.core.mail.create_label(
            call.mailbox,
            str(body.get("name") or ""),
            body.get("messageListVisibility", "show"),
            body.get("labelListVisibility", "labelShow"),
        )
        return label.as_json()

    def _matching_messages(self, call: Call) -> list[StoredMessage]:
        query = call.arg("q") or ""
        if query and call.metadata_only:
            raise GoogleApiError(403, "forbidden", "Metadata scope does not support 'q' parameter")
        predicates, named_spam_trash = compile_query(
            call.mailbox, query, self.core.clock.now_ms(), index_lag_ms=self.core.settings.search_index_lag_ms
        )
        label_ids = call.args("labelIds")
        include_spam_trash = (
            (call.arg("includeSpamTrash") or "false").lower() == "true"
            or named_spam_trash
            or bool({"SPAM", "TRASH"} & set(label_ids))
        )
        matched = []
        for message in call.mailbox.messages.values():
            if not include_spam_trash and ({"SPAM", "TRASH"} & set(message.label_ids)):
                continue
            if any(label not in message.label_ids for label in label_ids):
                continue
            if all(predicate(message) for predicate in predicates):
                matched.append(message)
        matched.sort(key=lambda m: (m.internal_date_ms, m.id), reverse=True)
        return matched

    async def list_messages(self, call: Call) -> dict[str, Any]:
        matched = self._matching_messages(call)
        size = _int_arg(call.arg("maxResults"), 100, 500, "maxResults")
        offset = _page_token(call.arg("pageToken"))
        page = matched[offset : offset + size]
        result: dict[str, Any] = {}
        if page:
            result["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if offset + size < len(matched):
            result["nextPageToken"] = _make_page_token(offset + size)
        result["resultSizeEstimate"] = len(matched)
        return result

    async def list_threads(self, call: Call) -> dict[str, Any]:
        matched = self._matching_messages(call)
        threads: list[StoredMessage] = []
        seen: set[str] = set()
        for message in matched:
            if message.thread_id not in seen:
                seen.add(message.thread_id)
                threads.append(message)
        size = _int_arg(call.arg("maxResults"), 100, 500, "maxResults")
        offset = _page_token(call.arg("pageToken"))
        page = threads[offset : offset + size]
        result: dict[str, Any] = {}
        if page:
            result["threads"] = [
                {
                    "id": m.thread_id,
                    "snippet": m.parsed.snippet,
                    "historyId": str(max(x.history_id for x in call.mailbox.thread_messages(m.thread_id))),
                }
                for m in page
            ]
        if offset + size < len(threads):
            result["nextPageToken"] = _make_page_token(offset + size)
        result["resultSizeEstimate"] = len(threads)
        return result

    async def get_message(self, call: Call) -> dict[str, Any]:
        fmt = self._format(call, ("minimal", "full", "raw", "metadata"))
        message = call.mailbox.message(call.params["id"])
        return self.render_message(message, fmt, call.args("metadataHeaders"))

    async def get_thread(self, call: Call) -> dict[str, Any]:
        fmt = self._format(call, ("minimal", "full", "metadata"))
        members = call.mailbox.thread_messages(call.params["id"])
        return {
            "id": call.params["id"],
            "historyId": str(max(m.history_id for m in members)),
            "messages": [self.render_message(m, fmt, call.args("metadataHeaders")) for m in members],
        }

    def _thread_summary(self, call: Call) -> dict[str, Any]:
        members = call.mailbox.thread_messages(call.params["id"])
        return {
            "id": call.params["id"],
            "historyId": str(max(m.history_id for m in members)),
            "messages": [self.render_message(m, "minimal", []) for m in members],
        }

    async def modify_thread(self, call: Call) -> dict[str, Any]:
        """Changes the labels of the messages the thread has now; later messages do not inherit them."""
        body = call.json()
        for message in call.mailbox.thread_messages(call.params["id"]):
            self.core.mail.modify(
                call.mailbox,
                message.id,
                list(body.get("addLabelIds") or []),
                list(body.get("removeLabelIds") or []),
            )
        return self._thread_summary(call)

    async def trash_thread(self, call: Call) -> dict[str, Any]:
        for message in call.mailbox.thread_messages(call.params["id"]):
            self.core.mail.trash(call.mailbox, message.id)
        return self._thread_summary(call)

    async def untrash_thread(self, call: Call) -> dict[str, Any]:
        for message in call.mailbox.thread_messages(call.params["id"]):
            self.core.mail.untrash(call.mailbox, message.id)
        return self._thread_summary(call)

    async def get_attachment(self, call: Call) -> dict[str, Any]:
        message = call.mailbox.message(call.params["messageId"])
        encoded = call.params["id"]
        try:
            owner, _, part_id = (
                base64.urlsafe_b64decode(encoded[6:] + "=" * (-len(encoded[6:]) % 4)).decode().partition(":")
            )
        except ValueError as error:
            raise bad_request("Invalid attachment token", reason="invalidArgument") from error
        if owner != message.id or not encoded.startswith("ANGjdJ"):
            raise bad_request("Invalid attachment token", reason="invalidArgument")
        for leaf in message.parsed.leaves():
            if leaf.part_id == part_id:
                return {
                    "attachmentId": encoded,
                    "size": len(leaf.body),
                    "data": mime.b64url_unpadded(leaf.body),
                }
        raise not_found()

    def _raw_from_body(self, body: dict[str, Any], limit: int) -> bytes:
        encoded = body.get("raw")
        if not encoded:
            raise bad_request(
                "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
                reason="invalidArgument",
            )
        try:
            raw = mime.b64url_decode(str(encoded))
        except ValueError as error:
            raise bad_request("Invalid value for ByteString", reason="invalidArgument") from error
        check_size(raw, limit)
        return raw

    async def send_message(self, call: Call) -> dict[str, Any]:
        body = call.json()
        return await self.send_raw(
            call.mailbox, self._raw_from_body(body, SEND_MAX_BYTES), body.get("threadId")
        )

    async def send_raw(self, mailbox: Mailbox, raw: bytes, thread_id: str | None) -> dict[str, Any]:
        """Send and deliver; the SENT copy's history (and push) comes before or after the answer by setting."""
        settings = self.core.settings
        echo_first = settings.sent_copy_timing == SENT_COPY_BEFORE_RESPONSE
        result = self.core.mail.send(
            mailbox, raw, thread_id, settings.replace_message_id, deliver_sent_copy=echo_first
        )
        if echo_first and settings.echo_first_push_wait_s > 0:
            await self.core.push.wait_pushed(
                mailbox.address, result.sent.history_id, settings.echo_first_push_wait_s
            )
        else:
            asyncio.get_running_loop().call_later(
                settings.sent_copy_delay_ms / 1000, self.core.mail.commit, mailbox, result.sent
            )
        return {
            "id": result.sent.id,
            "threadId": result.sent.thread_id,
            "labelIds": list(result.sent.label_ids),
        }

    def store_raw(
        self, mailbox: Mailbox, raw: bytes, body: dict[str, Any], thread_by_headers: bool
    ) -> dict[str, Any]:
        message = self.core.mail.insert(
            mailbox, raw, list(body.get("labelIds") or []), body.get("threadId"), thread_by_headers
        )
        return {"id": message.id, "threadId": message.thread_id, "labelIds": list(message.label_ids)}

    async def insert_message(self, call: Call) -> dict[str, Any]:
        body = call.json()
        return self.store_raw(call.mailbox, self._raw_from_body(body, INSERT_MAX_BYTES), body, False)

    async def import_message(self, call: Call) -> dict[str, Any]:
        body = call.json()
        return self.store_raw(call.mailbox, self._raw_from_body(body, INSERT_MAX_BYTES), body, True)

    async def modify_message(self, call: Call) -> dict[str, Any]:
        body = call.json()
        message = self.core.mail.modify(
            call.mailbox,
            call.params["id"],
            list(body.get("addLabelIds") or []),
            list(body.get("removeLabelIds") or []),
        )
        return self.render_message(message, "minimal", [])

    async def batch_modify(self, call: Call) -> None:
        body = call.json()
        ids = list(body.get("ids") or [])
        if len(ids) > 1000:
            raise bad_request("Number of ids cannot exceed 1000", reason="invalidArgument")
        for message_id in ids:
            if message_id in call.mailbox.messages:
                self.core.mail.modify(
                    call.mailbox,
                    message_id,
                    list(body.get("addLabelIds") or []),
                    list(body.get("removeLabelIds") or []),
                )
        return None

    async def trash_message(self, call: Call) -> dict[str, Any]:
        return self.render_message(self.core.mail.trash(call.mailbox, call.params["id"]), "minimal", [])

    async def untrash_message(self, call: Call) -> dict[str, Any]:
        return self.render_message(self.core.mail.untrash(call.mailbox, call.params["id"]), "minimal", [])

    async def delete_message(self, call: Call) -> None:
        self.core.mail.delete(call.mailbox, call.params["id"])
        return None

    async def list_history(self, call: Call) -> dict[str, Any]:
        start_text = call.arg("startHistoryId")
        if not start_text:
            raise bad_request("Required parameter: startHistoryId", reason="required")
        try:
            start = int(start_text)
        except ValueError as error:
            raise bad_request(
                f"Invalid value for startHistoryId: {start_text}", reason="invalidArgument"
            ) from error
        kinds = set(call.args("historyTypes"))
        unknown = kinds - {"messageAdded", "messageDeleted", "labelAdded", "labelRemoved"}
        if unknown:
            raise bad_request(
                f"Invalid value for historyTypes: {sorted(unknown)[0]}", reason="invalidArgument"
            )
        size = _int_arg(call.arg("maxResults"), 100, 500, "maxResults")
        after = _page_token(call.arg("pageToken")) or None
        records, cursor = self.core.mail.list_history(
            call.mailbox, start, kinds or None, call.arg("labelId"), size, after
        )
        result: dict[str, Any] = {}
        if records:
            result["history"] = [record.as_json() for record in records]
        if cursor is not None:
            result["nextPageToken"] = _make_page_token(cursor)
        result["historyId"] = str(call.mailbox.history_id)
        return result

    async def watch(self, call: Call) -> dict[str, Any]:
        return self.core.push.watch(call.mailbox, call.json())

    async def stop(self, call: Call) -> None:
        self.core.push.stop_watch(call.mailbox)
        return None


def check_size(raw: bytes, limit: int) -> None:
    if len(raw) > limit:
        raise GoogleApiError(413, "uploadTooLarge", f"Media larger than: {limit}")
