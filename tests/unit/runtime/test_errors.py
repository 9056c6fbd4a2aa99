"""Domain errors map to one google.rpc.Status: canonical code, message and ErrorInfo{reason, domain, metadata}."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.runtime.errors import (
    ERROR_DOMAIN,
    MAX_MESSAGE_CHARS,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    to_rpc_status,
    unexpected_error,
)


class QuotaExceeded(ResourceExhausted):
    reason = "QUOTA_EXCEEDED"


def decoded(status: grpc.Status) -> status_pb2.Status:
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_a_domain_error_carries_its_code_message_and_error_info() -> None:
    status = to_rpc_status(
        QuotaExceeded("daily quota used up", limit=2000, reset_time="2026-01-02T00:00:00Z")
    )
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "daily quota used up"
    rich = decoded(status)
    assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.domain == ERROR_DOMAIN
    assert dict(info.metadata) == {"limit": "2000", "reset_time": "2026-01-02T00:00:00Z"}


def test_the_base_classes_give_the_canonical_reason() -> None:
    info = error_details_pb2.ErrorInfo()
    decoded(to_rpc_status(NotFound("no such contact"))).details[0].Unpack(info)
    assert info.reason == "NOT_FOUND"


def test_messages_and_metadata_are_bounded_and_free_of_control_characters() -> None:
    status = to_rpc_status(
        NotFound("line\r\nInjected: yes " + "x" * 10_000, **{f"k{n}": "v" * 5000 for n in range(40)})
    )
    assert (
        len(status.details) <= MAX_MESSAGE_CHARS and "\r" not in status.details and "\n" not in status.details
    )
    info = error_details_pb2.ErrorInfo()
    decoded(status).details[0].Unpack(info)
    assert len(info.metadata) <= 8 and all(len(value) <= 128 for value in info.metadata.values())
    assert len(status.trailing_metadata[0][1]) < 2048


def test_an_invalid_argument_lists_its_fields_in_a_bad_request_detail() -> None:
    status = to_rpc_status(InvalidArgument("user_id: must be 1-64 characters", field="user_id"))
    bad_request = error_details_pb2.BadRequest()
    assert decoded(status).details[1].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("user_id", "user_id: must be 1-64 characters")
    ]
    # Negative control: an error that names no field carries no BadRequest.
    assert len(decoded(to_rpc_status(InvalidArgument("something is off"))).details) == 1


def test_an_unexpected_error_is_answered_with_only_an_error_id() -> None:
    error = unexpected_error(RuntimeError("SELECT secret FROM t [parameters: ('p4ss',)]"), "/x.Y/Z")
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.metadata["error_id"] in error.message
    assert (
        "SELECT" not in error.message and "RuntimeError" not in error.message and "p4ss" not in error.message
    )
