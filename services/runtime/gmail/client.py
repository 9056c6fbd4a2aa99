"""An asyncio Gmail client for one mailbox: every call classified, transient failures retried with backoff,
messages fetched in small batches that retry only their failed items, and sends never retried blindly."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from googleapiclient.http import MediaIoBaseUpload
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.runtime.gmail.api import GmailApi
from services.runtime.gmail.batch import LeanBatchHttpRequest
from services.runtime.gmail.errors import (
    AccessTokenRejected,
    GmailError,
    GmailNotFound,
    HistoryExpired,
    MessageTooLarge,
    PermanentAuthFailure,
    RetryableGmailError,
    SendingLimitReached,
    SendOutcomeUnknown,
    classify,
)
from services.runtime.gmail.pacing import Grant, user_key_of_token
from services.runtime.gmail.quota import quota_units
from services.runtime.gmail.retry import RetryPolicy, RetryTiming
from services.runtime.instruments import instruments

AccessTokenSource = Callable[[], Awaitable[str]]
# Told which token Gmail refused (401) before the source is asked again, so a cache in front of the auth service
# drops it and auth refreshes instead of handing the same token back.
TokenRejectedHook = Callable[[str], None]
# Gmail caps a batch at 100 parts but answers bigger ones with per-user concurrency 429s; 25 keeps them rare.
MAX_BATCH_PARTS = 25
# messages.send's mediaUpload maxSize in the gmail.v1 discovery document (35 MiB).
MAX_SEND_BYTES = 36_700_160
_HISTORY_PAGE = 500
_LIST_PAGE = 500
_QUOTA_UNITS = metrics.get_meter("mailsync.gmail").create_counter(
    "gmail.quota_units",
    unit="{unit}",
    description="Gmail quota units spent by requests sent (legacy cost table)",
)


_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}
)


def _outcome_of(error: GmailError) -> str:
    """`rate_limited` when Google refused for quota or rate (what the quota alert watches), else `error`."""
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    if isinstance(error, SendingLimitReached) or status == 429 or reason in _RATE_LIMIT_REASONS:
        return "rate_limited"
    return "error"


def fixed_access_token(token: str) -> AccessTokenSource:
    """A token source that always gives the same access token (tests, one-shot scripts)."""

    async def source() -> str:
        return token

    return source


def decode_base64url(data: str) -> bytes:
    """Gmail's base64url, padded (raw) or not (body data, attachments)."""
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@dataclass(frozen=True)
class Profile:
    email_address: str
    history_id: str
    messages_total: int
    threads_total: int


@dataclass(frozen=True)
class HistoryListing:
    """Every history record after the start id, oldest first, and the mailbox's history id at the end."""

    records: list[dict[str, Any]]
    history_id: str


@dataclass(frozen=True)
class WatchStarted:
    history_id: str
    expiration: dt.datetime


@dataclass
class MessageBatch:
    """The outcome of fetching many messages: found ones by id, ids Gmail no longer has, and the ids that still
    failed (retries exhausted or a permanent per-item error) with why."""

    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_found: set[str] = field(default_factory=set)
    failed: dict[str, GmailError] = field(default_factory=dict)


class GmailClient:
    """Gmail for one mailbox, authorised by access tokens from `access_token` (the auth service in production)."""

    def __init__(
        self,
        api: GmailApi,
        access_token: AccessTokenSource,
        *,
        user_id: str = "me",
        quota_user: str | None = None,
        policy: RetryPolicy | None = None,
        timing: RetryTiming | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        on_token_rejected: TokenRejectedHook | None = None,
    ) -> None:
        """`quota_user` names the Gmail user for pacing (a mailbox id or address); without it the user is known
        by the access token, which names one user too (a new token starts a new budget)."""
        self._tracer = trace.get_tracer("mailsync.gmail", tracer_provider=tracer_provider)
        self._api = api
        self._access_token = access_token
        self._user_id = user_id
        self._quota_user = quota_user
        self._policy = policy or RetryPolicy()
        self._timing = timing or RetryTiming()
        self._on_token_rejected = on_token_rejected

    async def get_profile(self) -> Profile:
        body = await self._call("users.getProfile", lambda users: users.getProfile(userId=self._user_id))
        return Profile(
            email_address=body["emailAddress"],
            history_id=str(body["historyId"]),
            messages_total=int(body.get("messagesTotal", 0)),
            threads_total=int(body.get("threadsTotal", 0)),
        )

    async def list_history(
        self,
        start_history_id: str,
        *,
        history_types: Sequence[str] | None = None,
        label_id: str | None = None,
        page_size: int = _HISTORY_PAGE,
    ) -> HistoryListing:
        """All pages of history.list; raises HistoryExpired when Gmail no longer keeps `start_history_id`."""
        records: list[dict[str, Any]] = []
        page_token: str | None = None
        history_id = start_history_id
        while True:
            params: dict[str, Any] = {
                "userId": self._user_id,
                "startHistoryId": start_history_id,
                "maxResults": page_size,
            }
            if history_types:
                params["historyTypes"] = list(history_types)
            if label_id:
                params["labelId"] = label_id
            if page_token:
                params["pageToken"] = page_token
            try:
                body = await self._call("users.history.list", functools.partial(_list_history, params=params))
            except GmailNotFound as exc:
                raise HistoryExpired(
                    f"Gmail no longer has history from id {start_history_id}: resync the mailbox",
                    status=exc.status,
                    reason=exc.reason,
                ) from exc
            records.extend(body.get("history", []))
            history_id = str(body.get("historyId", history_id))
            page_token = body.get("nextPageToken")
            if not page_token:
                return HistoryListing(records=records, history_id=history_id)

    async def list_messages(
        self,
        q: str | None = None,
        *,
        label_ids: Sequence[str] | None = None,
        limit: int | None = None,
        page_size: int = _LIST_PAGE,
    ) -> list[dict[str, Any]]:
        """Message stubs ({id, threadId}) matching the query, across pages, newest first as Gmail lists them."""
        found: list[dict[str, Any]] = []
        page_token: str | None = None
        while limit is None or len(found) < limit:
            params: dict[str, Any] = {"userId": self._user_id, "maxResults": page_size}
            if q:
                params["q"] = q
            if label_ids:
                params["labelIds"] = list(label_ids)
            if page_token:
                params["pageToken"] = page_token
            body = await self._call("users.messages.list", functools.partial(_list_messages, params=params))
            found.extend(body.get("messages", []))
            page_token = body.get("nextPageToken")
            if not page_token:
                break
        return found if limit is None else found[:limit]

    async def find_by_rfc822_message_id(self, message_id: str) -> list[dict[str, Any]]:
        """Messages whose Message-ID header is `message_id` (how a caller checks Sent after SendOutcomeUnknown)."""
        bare = message_id.strip().removeprefix("<").removesuffix(">")
        return await self.list_messages(f"rfc822msgid:{bare}")

    async def get_message(
        self, message_id: str, *, format: str = "full", metadata_headers: Sequence[str] | None = None
    ) -> dict[str, Any]:
        params = self._get_params(message_id, format, metadata_headers)
        result: dict[str, Any] = await self._call(
            "users.messages.get", lambda users: users.messages().get(**params)
        )
        return result

    async def get_messages_raw(self, message_ids: Iterable[str]) -> MessageBatch:
        """messages.get format=raw for many ids, in batches."""
        return await self.get_messages(message_ids, format="raw")

    async def get_messages(
        self,
        message_ids: Iterable[str],
        *,
        format: str = "raw",
        metadata_headers: Sequence[str] | None = None,
    ) -> MessageBatch:
        """messages.get for many ids in batch requests of at most `batch_size`, retrying only the items that
        failed transiently, with backoff between rounds."""
        result = MessageBatch()
        pending = list(dict.fromkeys(message_ids))
        size = max(1, min(self._api.endpoint.batch_size, MAX_BATCH_PARTS))
        retry_round = 0
        while pending:
            again: list[str] = []
            last_errors: dict[str, RetryableGmailError] = {}
            queue = list(pending)
            while queue:
                with self._tracer.start_as_current_span(
                    "Gmail batch users.messages.get", kind=SpanKind.CLIENT
                ) as span:
                    span.set_attribute("gmail.method", "users.messages.get")
                    span.set_attribute("gmail.retry_round", retry_round)
                    # With pacing, the batch holds as many of the next `size` ids as the user's budget allows.
                    chunk, outcomes = await self._run_get_batch(queue[:size], format, metadata_headers)
                    queue = queue[len(chunk) :]
                    span.set_attribute("gmail.batch_size", len(chunk))
                    instruments().gmail_requests.add(
                        len(chunk), {"gmail.method": "users.messages.get", "gmail.outcome": "batched"}
                    )
                    _QUOTA_UNITS.add(
                        quota_units("users.messages.get") * len(chunk), {"gmail.method": "users.messages.get"}
                    )
                for message_id, outcome in outcomes.items():
                    if isinstance(outcome, RetryableGmailError):
                        again.append(message_id)
                        last_errors[message_id] = outcome
                    elif isinstance(outcome, GmailNotFound):
                        result.not_found.add(message_id)
                    elif isinstance(outcome, PermanentAuthFailure):
                        raise outcome  # the grant itself is refused: no item of this mailbox can succeed
                    elif isinstance(outcome, GmailError):
                        result.failed[message_id] = outcome
                    else:
                        result.messages[message_id] = outcome
            if not again:
                break
            retry_at = max((e.retry_at for e in last_errors.values() if e.retry_at), default=None)
            delay = self._timing.delay_for(self._policy, retry_round, retry_at)
            retry_round += 1
            if delay is None or retry_round >= self._policy.max_attempts:
                result.failed.update(last_errors)
                break
            await self._timing.sleep(delay)
            pending = again
        return result

    async def get_attachment(self, message_id: str, attachment_id: str) -> bytes:
        body = await self._call(
            "users.messages.attachments.get",
            lambda users: (
                users.messages()
                .attachments()
                .get(userId=self._user_id, messageId=message_id, id=attachment_id)
            ),
        )
        return decode_base64url(body.get("data", ""))

    async def modify_message(
        self,
        message_id: str,
        *,
        add_label_ids: Sequence[str] = (),
        remove_label_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        body = {"addLabelIds": list(add_label_ids), "removeLabelIds": list(remove_label_ids)}
        result: dict[str, Any] = await self._call(
            "users.messages.modify",
            lambda users: users.messages().modify(userId=self._user_id, id=message_id, body=body),
        )
        return result

    async def send_raw(self, raw: bytes, *, thread_id: str | None = None) -> dict[str, Any]:
        """messages.send, exactly once: never retried here. A failure after which Gmail may have accepted the
        message raises SendOutcomeUnknown; search Sent (find_by_rfc822_message_id) before sending again."""
        if len(raw) > MAX_SEND_BYTES:
            raise MessageTooLarge(
                f"message is {len(raw)} bytes, over Gmail's {MAX_SEND_BYTES}-byte limit for messages.send",
                status=413,
            )
        metadata: dict[str, Any] = {"threadId": thread_id} if thread_id else {}
        if len(raw) > self._api.endpoint.media_upload_threshold:
            media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=False)

            def request(users: Any) -> Any:
                return users.messages().send(userId=self._user_id, body=metadata or None, media_body=media)
        else:
            body = {**metadata, "raw": base64.urlsafe_b64encode(raw).decode("ascii")}

            def request(users: Any) -> Any:
                return users.messages().send(userId=self._user_id, body=body)

        try:
            result: dict[str, Any] = await self._call("users.messages.send", request, retry=False)
        except RetryableGmailError as exc:
            if exc.status is not None and exc.status < 500:
                # 429 and rate-limit 403 are refusals before acceptance: the caller may send again later.
                raise
            raise SendOutcomeUnknown(
                f"messages.send failed after the request left ({exc.message}); it may have been sent",
                status=exc.status,
                reason=exc.reason,
            ) from exc
        return result

    async def watch(
        self,
        topic_name: str,
        *,
        label_ids: Sequence[str] | None = None,
        label_filter_behavior: str = "include",
    ) -> WatchStarted:
        body: dict[str, Any] = {"topicName": topic_name}
        if label_ids:
            body["labelIds"] = list(label_ids)
            body["labelFilterBehavior"] = label_filter_behavior
        answer = await self._call("users.watch", lambda users: users.watch(userId=self._user_id, body=body))
        expiration = dt.datetime.fromtimestamp(int(answer["expiration"]) / 1000, tz=dt.UTC)
        return WatchStarted(history_id=str(answer["historyId"]), expiration=expiration)

    async def stop(self) -> None:
        await self._call("users.stop", lambda users: users.stop(userId=self._user_id))

    def _get_params(
        self, message_id: str, format: str, metadata_headers: Sequence[str] | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"userId": self._user_id, "id": message_id, "format": format}
        if metadata_headers:
            params["metadataHeaders"] = list(metadata_headers)
        return params

    async def _call(self, method: str, build: Callable[[Any], Any], *, retry: bool = True) -> Any:
        """Runs one request (`method` as in the discovery document) on the pool, in a CLIENT span."""
        with self._tracer.start_as_current_span(f"Gmail {method}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("gmail.method", method)
            try:
                answer = await self._call_with_retries(method, build, retry=retry, span=span)
            except GmailError as error:
                span.set_attribute("gmail.error", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                instruments().gmail_requests.add(
                    1,
                    {
                        "gmail.method": method,
                        "gmail.outcome": _outcome_of(error),
                        "error.type": type(error).__name__,
                    },
                )
                raise
            instruments().gmail_requests.add(1, {"gmail.method": method, "gmail.outcome": "ok"})
            return answer

    async def _refetch_token(self, rejected: str) -> str:
        if self._on_token_rejected is not None:
            self._on_token_rejected(rejected)
        return await self._access_token()

    async def _call_with_retries(
        self, method: str, build: Callable[[Any], Any], *, retry: bool, span: Span
    ) -> Any:
        """Retries transient failures when `retry`, and a rejected access token once with a newly fetched one."""
        token = await self._access_token()
        token_refetched = False
        attempt = 0
        while True:
            grant = await self._paced(token, method, 1)

            def execute(current: str = token, grant: Grant | None = grant) -> Any:
                http = self._api.authorized_http(current, grant.answered if grant is not None else None)
                return build(self._api.users()).execute(http=http)

            span.set_attribute("gmail.attempts", attempt + 1)
            _QUOTA_UNITS.add(quota_units(method), {"gmail.method": method})
            try:
                return await self._api.run(execute)
            except Exception as exc:
                error = classify(exc, now=self._timing.clock.now())
                failure: Exception = exc
            finally:
                if grant is not None:
                    grant.release()
            if isinstance(error, AccessTokenRejected) and not token_refetched:
                token_refetched = True
                fresh = await self._refetch_token(token)
                if fresh != token:
                    token = fresh
                    continue
            if not retry or not isinstance(error, RetryableGmailError):
                raise _chained(error, failure)
            delay = self._timing.delay_for(self._policy, attempt, error.retry_at)
            attempt += 1
            if delay is None or attempt >= self._policy.max_attempts:
                raise _chained(error, failure)
            await self._timing.sleep(delay)

    async def _paced(self, token: str, method: str, wanted: int) -> Grant | None:
        """Waits until `wanted` calls of `method` (at least one of them) fit this user's quota budget; None when
        the process does not pace."""
        pacers = self._api.pacers
        if pacers is None:
            return None
        if self._quota_user is None:
            self._quota_user = user_key_of_token(token)
        return await pacers.pacer(self._quota_user).acquire(pacers.budget.cost(method), wanted)

    async def _run_get_batch(
        self, candidates: list[str], format: str, metadata_headers: Sequence[str] | None
    ) -> tuple[list[str], dict[str, dict[str, Any] | GmailError]]:
        """One batch request of the first candidates (all of them, or as many as the user's quota budget allows
        now); a failure of the whole batch becomes the outcome of each of its items. A rejected access token is
        fetched again once, as for single calls. Returns the ids sent and their outcomes."""
        token = await self._access_token()
        grant = await self._paced(token, "users.messages.get", len(candidates))
        message_ids = candidates[: grant.count] if grant is not None else candidates
        try:
            return message_ids, await self._send_get_batch(
                token, message_ids, format, metadata_headers, grant
            )
        finally:
            if grant is not None:
                grant.release()

    async def _send_get_batch(
        self,
        token: str,
        message_ids: list[str],
        format: str,
        metadata_headers: Sequence[str] | None,
        grant: Grant | None,
    ) -> dict[str, dict[str, Any] | GmailError]:
        now = self._timing.clock.now()

        def execute(current: str) -> dict[str, Any]:
            answers: dict[str, Any] = {}

            def collect(request_id: str, response: Any, exception: Exception | None) -> None:
                answers[request_id] = exception if exception is not None else response

            users = self._api.users()
            batch = LeanBatchHttpRequest(callback=collect, batch_uri=self._api.batch_uri)
            for message_id in message_ids:
                params = self._get_params(message_id, format, metadata_headers)
                batch.add(users.messages().get(**params), request_id=message_id)
            batch.execute(
                http=self._api.authorized_http(current, grant.answered if grant is not None else None)
            )
            return answers

        token_refetched = False
        while True:
            try:
                answers = await self._api.run(functools.partial(execute, token))
                break
            except Exception as exc:
                error = classify(exc, now=now)
                if isinstance(error, AccessTokenRejected) and not token_refetched:
                    token_refetched = True
                    fresh = await self._refetch_token(token)
                    if fresh != token:
                        token = fresh
                        continue
                if not isinstance(error, RetryableGmailError):
                    raise _chained(error, exc) from None
                return dict.fromkeys(message_ids, error)
        outcomes: dict[str, dict[str, Any] | GmailError] = {}
        for message_id in message_ids:
            answer = answers.get(message_id)
            if isinstance(answer, BaseException):
                outcomes[message_id] = classify(answer, now=now)
            elif answer is None:
                outcomes[message_id] = RetryableGmailError("the batch answer had no part for this message")
            else:
                outcomes[message_id] = answer
        return outcomes


def _chained(error: GmailError, cause: BaseException) -> GmailError:
    """`error`, caused by the library exception it classifies (unless it is that exception)."""
    if error is not cause:
        error.__cause__ = cause
    return error


def _list_history(users: Any, *, params: dict[str, Any]) -> Any:
    return users.history().list(**params)


def _list_messages(users: Any, *, params: dict[str, Any]) -> Any:
    return users.messages().list(**params)
