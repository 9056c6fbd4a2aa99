"""The HTTP endpoint Pub/Sub pushes Gmail notifications to (aiohttp): 2xx only once the sync pass is queued on
JetStream, 401 for a missing or bad token, 400 for a body that is not a Gmail push, 503 when a dependency is down
(Pub/Sub then retries)."""

from __future__ import annotations

import datetime as dt
import json
import logging

from aiohttp import web

from services.ingest.push import PushRejected
from services.ingest.push_intake import PushIntake
from services.runtime.http_tracing import server_span_middleware
from services.runtime.push_time import push_received

log = logging.getLogger(__name__)

PUSH_PATH = "/gmail/push"
_TOKEN_REASONS = frozenset(
    {
        "missing_token",
        "malformed_token",
        "unknown_key",
        "invalid_token",
        "wrong_issuer",
        "wrong_service_account",
        "email_not_verified",
    }
)


def push_application(intake: PushIntake) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        try:
            envelope = json.loads(await request.read())
        except ValueError:
            envelope = None
        message = envelope.get("message") if isinstance(envelope, dict) else None
        if not isinstance(message, dict):
            message = {}
        try:
            # The token is checked before the body, so an unauthenticated caller learns nothing about bodies.
            with push_received(dt.datetime.now(dt.UTC)):
                outcome = await intake.accept(
                    bearer,
                    message.get("data"),
                    str(message.get("messageId") or message.get("message_id") or ""),
                )
        except PushRejected as rejected:
            status = 401 if rejected.reason in _TOKEN_REASONS else 400
            log.warning("push refused", extra={"reason": rejected.reason, "status": status})
            return web.json_response({"error": rejected.reason}, status=status)
        except Exception as error:
            log.warning("push not queued", extra={"error": repr(error)})
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"mailbox_id": outcome.mailbox_id, "queued": outcome.queued}, status=200)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 * 1024, middlewares=[server_span_middleware("ingest-push")])
    app.router.add_post(PUSH_PATH, receive)
    app.router.add_get("/healthz", healthz)
    return app


class PushHttpServer:
    """The aiohttp site on the ingest HTTP port; `port` is known after start (0 picks a free one)."""

    def __init__(self, intake: PushIntake, host: str, port: int) -> None:
        self._runner = web.AppRunner(push_application(intake), access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
