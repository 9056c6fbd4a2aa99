"""A SERVER span and a duration measurement for every request an aiohttp application serves (Gmail pushes, the
OAuth callback), as an aiohttp middleware.

The span continues a W3C trace context the caller sent (Pub/Sub sends none, so a push starts the email's trace)
and is named by method and route (`POST /gmail/push`), never by the raw path, so names stay low-cardinality. The
OpenTelemetry aiohttp-server instrumentation would do the same by patching aiohttp globally; its released wheels
pin an older opentelemetry-instrumentation than the gRPC instrumentation the services use, so this is the small,
explicit equivalent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime.instruments import instruments

INSTRUMENTATION_NAME = "mailsync.runtime.http"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def server_span_middleware(service: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware; `service` names the server in the span (`mailsync.http.server`)."""
    tracer = trace.get_tracer(INSTRUMENTATION_NAME)

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route_of(request)
        started = time.monotonic()
        status = 500
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=propagate.extract(dict(request.headers)),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
                "mailsync.http.server": service,
            },
        ) as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as answer:
                # aiohttp answers redirects and errors by raising them.
                status = answer.status
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, str(status)))
                instruments().http_duration.record(
                    time.monotonic() - started,
                    {
                        "http.request.method": request.method,
                        "http.route": route,
                        "http.response.status_code": status,
                    },
                )

    return traced
