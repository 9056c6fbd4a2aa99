"""Domain errors and the one error boundary of every gRPC server: `google.rpc.Status` with an `ErrorInfo`
detail (AIP-193), and a `BadRequest` detail listing the fields an INVALID_ARGUMENT refused.

A service raises a DomainError subclass (`class QuotaExceeded(DomainError): code = RESOURCE_EXHAUSTED`);
the server's `ErrorBoundaryInterceptor` turns it into the status, so a servicer never builds one by hand.
Anything else that escapes a servicer becomes INTERNAL with an opaque error id, and the server logs the full
exception under that id: no SQL, parameter, class name or echoed input ever reaches the client. Every message
and metadata value is bounded, so no answer can overflow gRPC's metadata limit. Clients read the details back
with `error_info(rpc_error)` and `field_violations(rpc_error)`.
"""

from __future__ import annotations

import logging
import secrets
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime.grpc_handlers import wrap_handler

log = logging.getLogger(__name__)

ERROR_DOMAIN = "mailsync"
# Bounds on what a status carries (gRPC's metadata limit is 8 KiB by default; these stay far below it).
MAX_MESSAGE_CHARS = 300
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY_CHARS = 40
MAX_METADATA_VALUE_CHARS = 128
MAX_FIELD_VIOLATIONS = 10


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
    """A request field is unusable; `field=` names it, `violations` lists (field, problem) pairs for BadRequest."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self, message: str, *, violations: Sequence[tuple[str, str]] = (), **metadata: object
    ) -> None:
        super().__init__(message, **metadata)
        field = self.metadata.get("field")
        self.violations = tuple(violations) or (((field, message),) if field else ())


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


class InternalError(DomainError):
    """Something unexpected failed; the client sees only the error id the server logged the details under."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def bounded(text: str, limit: int) -> str:
    """`text` without control characters, cut to `limit` characters (an ellipsis marks the cut)."""
    clean = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "\u2026"


def _bounded_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {
        bounded(key, MAX_METADATA_KEY_CHARS): bounded(value, MAX_METADATA_VALUE_CHARS)
        for key, value in list(metadata.items())[:MAX_METADATA_ENTRIES]
    }


def to_rpc_status(error: DomainError) -> grpc.Status:
    """The gRPC status for a domain error: canonical code, bounded message, ErrorInfo{reason, domain, metadata},
    and for INVALID_ARGUMENT a BadRequest with the fields refused."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=_bounded_metadata(error.metadata)
        )
    )
    details = [info]
    violations = getattr(error, "violations", ())
    if violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bounded(field, MAX_METADATA_VALUE_CHARS),
                        description=bounded(problem, MAX_METADATA_VALUE_CHARS),
                    )
                    for field, problem in violations[:MAX_FIELD_VIOLATIONS]
                ]
            )
        )
        details.append(bad_request)
    status = status_pb2.Status(
        code=error.code.value[0], message=bounded(error.message, MAX_MESSAGE_CHARS), details=details
    )
    return rpc_status.to_status(status)


async def abort_with(context: grpc.aio.ServicerContext, error: DomainError) -> NoReturn:
    """Ends the RPC with the error's status (raises, as grpc.aio's abort does)."""
    await context.abort_with_status(to_rpc_status(error))
    raise AssertionError("abort_with_status returned")  # grpc.aio always raises; this keeps NoReturn honest


def new_error_id() -> str:
    """An opaque id that ties a client's INTERNAL answer to the server's log entry."""
    return secrets.token_hex(8)


def unexpected_error(error: BaseException, method: str) -> DomainError:
    """What the client is told about an exception no rule expected, after logging it in full under an id."""
    error_id = new_error_id()
    log.error(
        "unexpected error in an RPC",
        exc_info=(type(error), error, error.__traceback__),
        extra={"error_id": error_id, "rpc_method": method},
    )
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _RETRYABLE_UPSTREAM:
        return DependencyUnavailable(
            f"a service this call depends on did not answer (error id {error_id}): retry shortly",
            error_id=error_id,
        )
    if _is_database_unavailable(error):
        return DependencyUnavailable(
            f"the database did not answer (error id {error_id}): retry shortly", error_id=error_id
        )
    return InternalError(
        f"internal error (error id {error_id}): the server logged the details under this id",
        error_id=error_id,
    )


_RETRYABLE_UPSTREAM = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _is_database_unavailable(error: BaseException) -> bool:
    # Imported here: the error boundary must not make every importer of this module load SQLAlchemy.
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(error, OperationalError | PoolTimeout) and bool(
        getattr(error, "connection_invalidated", False) or isinstance(error, PoolTimeout)
    )


class ErrorBoundaryInterceptor(grpc.aio.ServerInterceptor):
    """The one place errors become statuses, for every RPC of the server.

    A DomainError keeps its code and reason; an abort another interceptor already made passes through; anything
    else is logged with its traceback and answered INTERNAL (or UNAVAILABLE for a dependency that did not
    answer) with an opaque error id. Runs outside authentication, tenant scoping and validation, so their
    refusals and any failure of theirs are answered the same way.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        @asynccontextmanager
        async def boundary(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            try:
                yield
            except DomainError as error:
                await abort_with(context, error)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort_with(context, unexpected_error(error, method))

        return wrap_handler(handler, boundary)


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


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of a failed call's BadRequest detail (empty when it has none)."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return []
    status = _status_of(error)
    found: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    # grpc_status.from_call needs trailing metadata, which AioRpcError exposes as a method too.
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value if isinstance(value, bytes) else value.encode())
            return status
    return None
