"""The OAuth redirect target (aiohttp): Google sends the browser to GET <redirect path>?state=&code=&scope= (or
?error=); the connect completes and the browser gets a small result page, or goes to the begun flow's return URL."""

from __future__ import annotations

import asyncio
import html
import logging
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from services.auth.connections import CompletedConnect, ConnectionFlows
from services.auth.errors import as_domain_error
from services.runtime.errors import DomainError
from services.runtime.http_tracing import server_span_middleware

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;line-height:1.5">
<h1 id="result" data-outcome="{outcome}">{title}</h1>
<p id="detail">{detail}</p>
</body></html>
"""


def result_page(*, ok: bool, title: str, detail: str, status: int) -> web.Response:
    body = _PAGE.format(
        title=html.escape(title), detail=html.escape(detail), outcome="connected" if ok else "error"
    )
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def with_outcome(return_url: str, completed: CompletedConnect) -> str:
    """The return URL with the outcome appended, so the CRM page knows which connection it came back from."""
    parts = urlsplit(return_url)
    extra = urlencode({"mailsync_connect": "connected", "connection_id": completed.connection.connection_id})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class OAuthCallback:
    """The callback's request handler: one completion per request, errors shown in words the user can act on."""

    def __init__(self, flows: ConnectionFlows) -> None:
        self._flows = flows

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        state = query.get("state", "")
        if not state:
            return result_page(
                ok=False,
                title="Gmail was not connected",
                detail="This link is incomplete (no state). Start the connection again from the CRM.",
                status=400,
            )
        try:
            completed = await self._flows.complete(
                state=state,
                code=query.get("code", ""),
                error=query.get("error", ""),
                granted_scope=query.get("scope"),
            )
        except Exception as error:
            mapped = as_domain_error(error)
            if mapped is None:
                log.exception("the OAuth callback failed")
                return result_page(
                    ok=False,
                    title="Gmail was not connected",
                    detail="Something went wrong on our side. Please connect again in a minute.",
                    status=500,
                )
            return result_page(
                ok=False, title="Gmail was not connected", detail=mapped.message, status=_http_status(mapped)
            )
        if completed.return_url:
            raise web.HTTPFound(with_outcome(completed.return_url, completed))
        return result_page(
            ok=True,
            title="Gmail connected",
            detail=f"{completed.mailbox_email} is now connected. You can close this window.",
            status=200,
        )


def _http_status(error: DomainError) -> int:
    return 503 if error.code.name == "UNAVAILABLE" else 400


class OAuthCallbackServer:
    """The HTTP listener: bound by `start()` (so a taken port fails the startup), served until `stop()`."""

    def __init__(self, flows: ConnectionFlows, *, host: str, port: int, redirect_uri: str) -> None:
        self.path = urlsplit(redirect_uri).path or "/"
        self._host = host
        self._port = port
        self._app = web.Application(middlewares=[server_span_middleware("auth-oauth-callback")])
        self._app.router.add_get(self.path, OAuthCallback(flows).handle)
        self._runner = web.AppRunner(self._app, access_log=None)
        self._stopping = asyncio.Event()
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info(
            "OAuth callback listening", extra={"address": f"{self._host}:{self.port}", "path": self.path}
        )

    async def run(self) -> None:
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._runner.cleanup()
