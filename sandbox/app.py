"""Composition root: builds the aiohttp application over one SandboxCore, and runs it in-process when asked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from multidict import MultiDict

from sandbox.admin import AdminApi, admin_errors
from sandbox.batch import run_batch
from sandbox.core import SandboxCore
from sandbox.gmail_api import ApiRequest, ApiResponse, GmailApi
from sandbox.oauth import OAuthEndpoints
from sandbox.state_file import StateFile
from sandbox.upload import UploadApi


def _to_web(response: ApiResponse) -> web.Response:
    result = web.Response(status=response.status, body=response.body, headers=response.headers)
    if response.content_type:
        result.headers["Content-Type"] = response.content_type
    return result


async def _api_request(request: web.Request) -> ApiRequest:
    return ApiRequest(
        method=request.method,
        path=request.path,
        query=MultiDict(request.query),
        headers=request.headers,
        body=await request.read(),
    )


def build_app(core: SandboxCore, state_file: Path | None = None) -> web.Application:
    """The whole sandbox as one aiohttp application; push delivery starts and stops with it."""
    gmail = GmailApi(core)
    uploads = UploadApi(gmail)
    oauth = OAuthEndpoints(core)
    admin = AdminApi(core, oauth, gmail)
    persisted = StateFile(state_file, core) if state_file else None

    async def gmail_route(request: web.Request) -> web.Response:
        core.quota.count_request("gmail")
        return _to_web(await gmail.handle(await _api_request(request)))

    async def batch_route(request: web.Request) -> web.Response:
        core.quota.count_request("batch")
        body = await request.read()
        return _to_web(await run_batch(gmail, request.headers.get("Content-Type", ""), body, request.headers))

    async def upload_route(request: web.Request) -> web.Response:
        core.quota.count_request("upload")
        api_request = await _api_request(request)
        if api_request.path.startswith("/resumable/"):
            api_request.path = api_request.path[len("/resumable") :]
            api_request.query.setdefault("uploadType", "resumable")
        return _to_web(await uploads.handle(api_request, request.headers.get("Content-Type", "")))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "mailboxes": len(core.mail.mailboxes)})

    app = web.Application(middlewares=[admin_errors], client_max_size=160 * 1024 * 1024)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.post("/batch", batch_route),
            web.post("/batch/gmail/v1", batch_route),
            web.route("*", "/gmail/v1/{tail:.*}", gmail_route),
            web.route("*", "/upload/gmail/v1/{tail:.*}", upload_route),
            web.route("*", "/resumable/upload/gmail/v1/{tail:.*}", upload_route),
            *oauth.routes(),
            *admin.routes(),
        ]
    )

    async def on_startup(_: web.Application) -> None:
        await core.push.start()
        if persisted:
            persisted.load()
            persisted.start_autosave()

    async def on_cleanup(_: web.Application) -> None:
        if persisted:
            await persisted.stop_autosave()
        await core.push.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(
    core: SandboxCore, host: str, port: int, state_file: Path | None = None
) -> Callable[[], Awaitable[None]]:
    """Start listening; returns the coroutine function that stops the server."""
    runner = web.AppRunner(build_app(core, state_file), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner.cleanup


class ThreadedSandbox:
    """The sandbox on its own event loop in a background thread, for blocking clients in tests and tools."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int | None = None) -> None:
        self.host = host
        self.port = port
        self.core = SandboxCore.create(seed=seed)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gmail-sandbox", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedSandbox:
        self._thread.start()
        runner = web.AppRunner(build_app(self.core), access_log=None)

        async def start() -> None:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=30)
        self._runner = runner
        return self

    def stop(self) -> None:
        if self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
