"""Domain errors map to one google.rpc.Status: canonical code, message and ErrorInfo{reason, domain, metadata}."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.runtime.errors import ERROR_DOMAIN, NotFound, ResourceExhausted, to_rpc_status


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
