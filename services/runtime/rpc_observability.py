"""What every served RPC reports beside its span: the call duration by method and status
(`rpc.server.call.duration`), the tenant on the span (`mailsync.location_id`), and one INFO log line per failed
call with its method, status, location and the span's trace id.

Runs inside the OpenTelemetry server interceptor (so its span is current) and outside the error boundary (so it
sees the status the caller gets, whichever interceptor or handler set it). Health checks are neither timed nor
logged: probes would drown everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry import trace

from services.runtime.grpc_handlers import wrap_handler
from services.runtime.instruments import instruments

log = logging.getLogger(__name__)

_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if error is None or isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


def _location_of(request: Any) -> str:
    location = getattr(request, "location_id", "")
    return location if isinstance(location, str) else ""


class RpcObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Times, labels and logs every RPC of the server but health checks."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method_path = handler_call_details.method
        if handler is None or method_path.startswith(_HEALTH_PREFIX):
            return handler
        service, _, method = method_path.lstrip("/").rpartition("/")

        @asynccontextmanager
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            started = time.monotonic()
            location = _location_of(request)
            if location:
                trace.get_current_span().set_attribute("mailsync.location_id", location)
            error: BaseException | None = None
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _code_of(context, error)
                instruments().rpc_duration.record(
                    time.monotonic() - started,
                    {
                        "rpc.system": "grpc",
                        "rpc.service": service,
                        "rpc.method": method,
                        "rpc.grpc.status_code": code.value[0],
                    },
                )
                if code is not grpc.StatusCode.OK:
                    log.info(
                        "rpc failed",
                        extra={
                            "rpc.method": f"{service}/{method}",
                            "rpc.grpc.status": code.name,
                            "location_id": location,
                            "detail": context.details() or "",
                        },
                    )

        return wrap_handler(handler, observed)
