"""The process-wide Gmail API handle: the discovery-built client pointed at Google or a sandbox, a bounded pool
of worker threads for its blocking calls, and one httplib2 connection per worker thread."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import google.auth.credentials
import google_auth_httplib2
import httplib2
from googleapiclient.discovery import build_from_document

from services.runtime.gmail.errors import AccessTokenRejected
from services.runtime.gmail.pacing import QuotaBudget, UserPacers

GOOGLE_ROOT_URL = "https://gmail.googleapis.com/"
T = TypeVar("T")


@dataclass(frozen=True)
class GmailEndpoint:
    """Where Gmail is and how hard to use it: Google unless `root_url` names a sandbox."""

    root_url: str | None = None
    timeout_seconds: float = 60.0
    max_workers: int = 8
    batch_size: int = 25
    # Larger messages go through the /upload media path instead of a base64 JSON body.
    media_upload_threshold: int = 5 * 1024 * 1024
    # Each user's requests paced to this budget (QuotaBudget.for_table("legacy") or "2026"); None: not paced.
    quota_pacing: QuotaBudget | None = None


def load_discovery_document(root_url: str | None = None) -> dict[str, Any]:
    """The bundled gmail.v1 discovery document, with every root rewritten when a sandbox root is given.

    Rewriting the document (rather than client_options api_endpoint) is what sends batches and media uploads to
    the same server as plain calls (reference/gmail_api.md section 6.2).
    """
    text = (
        resources.files("googleapiclient")
        .joinpath("discovery_cache/documents/gmail.v1.json")
        .read_text(encoding="utf-8")
    )
    document: dict[str, Any] = json.loads(text)
    if root_url:
        root = root_url if root_url.endswith("/") else root_url + "/"
        document["rootUrl"] = document["baseUrl"] = document["mtlsRootUrl"] = root
    return document


class GivenAccessToken(google.auth.credentials.Credentials):  # type: ignore[misc]
    """Credentials made of an access token handed to us; refreshing is the auth service's job, never ours."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request: Any) -> None:
        # google-auth-httplib2 and the batch runner call this on a 401: the token we were given is no good.
        raise AccessTokenRejected(
            "Gmail refused the access token it was given", status=401, reason="authError"
        )

    def __repr__(self) -> str:
        return "GivenAccessToken(<hidden>)"


class AnswerNotifyingHttp:
    """An http (as google-api-python-client uses one) that calls `on_answer` when each answer has arrived: the
    quota pacer's clock for "Google has charged this request", without the client's parsing time."""

    def __init__(self, http: Any, on_answer: Callable[[], None]) -> None:
        self._http = http
        self._on_answer = on_answer

    def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._http.request(*args, **kwargs)
        finally:
            self._on_answer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._http, name)


class BuiltResources:
    """A discovery-built resource whose child resources (`users()`, `users().messages()`, ...) are built once.

    The client library builds a child resource anew on every access, and with it every method of that part of
    the discovery document: about a millisecond of CPU per request, more than the rest of building it. A resource
    holds no per-request state (each method call returns a new HttpRequest), so one tree serves every thread.
    """

    def __init__(self, resource: Any) -> None:
        self._resource = resource
        # The discovery document's child resources of this one (googleapiclient keeps its part as _resourceDesc).
        self._child_names = frozenset(getattr(resource, "_resourceDesc", {}).get("resources", {}))
        self._children: dict[str, BuiltResources] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._child_names:
            return getattr(self._resource, name)
        return functools.partial(self._child, name)

    def _child(self, name: str) -> BuiltResources:
        child = self._children.get(name)
        if child is None:
            # Two threads may both build it the first time; either result is the same resource.
            child = self._children[name] = BuiltResources(getattr(self._resource, name)())
        return child


class GmailApi:
    """Builds requests with google-api-python-client and runs them on a bounded thread pool."""

    def __init__(self, endpoint: GmailEndpoint | None = None) -> None:
        self.endpoint = endpoint or GmailEndpoint()
        self.root_url = self.endpoint.root_url or GOOGLE_ROOT_URL
        self._executor = ThreadPoolExecutor(max_workers=self.endpoint.max_workers, thread_name_prefix="gmail")
        # One moving window of quota units per user, shared by every client this process builds.
        self.pacers = UserPacers(self.endpoint.quota_pacing) if self.endpoint.quota_pacing else None
        self._local = threading.local()
        # Passing an http object keeps the client from looking for application default credentials; every
        # request runs with its own authorised http (see `authorized_http`).
        document = load_discovery_document(self.endpoint.root_url)
        self.resource: Any = build_from_document(document, http=httplib2.Http())
        # Where batches go, as the client library works it out for its own batch requests.
        self.batch_uri = f"{document['rootUrl']}{document.get('batchPath', 'batch')}"
        self._built = BuiltResources(self.resource)

    def users(self) -> Any:
        """The `users` resource, its children built once (BuiltResources)."""
        return self._built.users()

    def thread_http(self) -> httplib2.Http:
        """This worker thread's connection (httplib2.Http is not thread-safe, so never shared)."""
        http = getattr(self._local, "http", None)
        if http is None:
            http = httplib2.Http(timeout=self.endpoint.timeout_seconds)
            self._local.http = http
        return http

    def authorized_http(
        self, access_token: str, on_answer: Callable[[], None] | None = None
    ) -> google_auth_httplib2.AuthorizedHttp | AnswerNotifyingHttp:
        """An http that sends the bearer token, on this thread's connection; `on_answer` runs (on this worker
        thread) as each HTTP answer has arrived, before the client library parses it."""
        http = google_auth_httplib2.AuthorizedHttp(GivenAccessToken(access_token), http=self.thread_http())
        return http if on_answer is None else AnswerNotifyingHttp(http, on_answer)

    async def run(self, call: Callable[[], T]) -> T:
        """Runs a blocking client call on the pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """`close` from async code: waits for running calls off the event loop."""
        await asyncio.to_thread(self.close)
