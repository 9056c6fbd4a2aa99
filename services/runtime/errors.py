"""Domain errors and their one mapping to gRPC: `google.rpc.Status` with an `ErrorInfo` detail (AIP-193).

A service raises a DomainError subclass (`class QuotaExceeded(DomainError): code = RESOURCE_EXHAUSTED`);
the server's error interceptor turns it into the status, so a servicer never builds one by hand. Clients read
the detail back with `error_info(rpc_error)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime.grpc_handlers import wrap_handler

ERROR_DOMAIN = "mailsync"


class DomainError(Exception):
    """A rule of the domain refused the request.

    Subclasses set `code` (the canonical gRPC code) and `reason` (UPPER_SNAKE_CASE, stable for clients);
    `metadata` carries the request-specific facts behind the message.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION
    reason: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class DependencyUnavailable(DomainError):
    """A dependency (Gmail, the database, another service) did not answer; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


def to_rpc_status(error: DomainError) -> grpc.Status:
    """The gRPC status for a domain error: canonical code, message, and ErrorInfo{reason, domain, metadata}."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    )
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    return rpc_status.to_status(status)


async def abort_with(context: grpc.aio.ServicerContext, error: DomainError) -> NoReturn:
    """Ends the RPC with the error's status (raises, as grpc.aio's abort does)."""
    await context.abort_with_status(to_rpc_status(error))
    raise AssertionError("abort_with_status returned")  # grpc.aio always raises; this keeps NoReturn honest


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a DomainError escaping a servicer into its status: the one place that mapping happens."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, _mapping_domain_errors)


@asynccontextmanager
async def _mapping_domain_errors(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except DomainError as error:
        await abort_with(context, error)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call (None when the server sent none)."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return None
    status = _status_of(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    # grpc_status.from_call needs trailing metadata, which AioRpcError exposes as a method too.
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value if isinstance(value, bytes) else value.encode())
            return status
    return None
