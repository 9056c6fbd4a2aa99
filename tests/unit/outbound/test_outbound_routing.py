"""Where each kind of email goes (R13), what counts against Gmail's quota (R14), which connections may send."""

from __future__ import annotations

import grpc
import pytest

from services.outbound.domain.routing import (
    Channel,
    ConnectionNotActive,
    SendKind,
    channel_for,
    counts_against_gmail_quota,
    ledger_key,
    require_connection_can_send,
)


@pytest.mark.parametrize(
    ("kind", "channel", "counted"),
    [
        (SendKind.INDIVIDUAL, Channel.USER_GMAIL, True),
        (SendKind.BULK, Channel.LOCATION_SMTP, False),
        (SendKind.WORKFLOW, Channel.LOCATION_SMTP, False),
    ],
)
def test_R13_only_individual_email_goes_through_gmail_and_counts(
    kind: SendKind, channel: Channel, counted: bool
) -> None:
    assert channel_for(kind) is channel
    assert counts_against_gmail_quota(kind) is counted


def test_a_connected_connection_may_send() -> None:
    require_connection_can_send(connection_id="c1", state="CONNECTED")


@pytest.mark.parametrize(
    ("state", "rule"),
    [("REAUTH_REQUIRED", "R12"), ("REPLACED", "R10"), ("DISCONNECTED", "R11"), ("SOMETHING_NEW", "unknown")],
)
def test_inactive_connections_refuse_with_failed_precondition_and_a_reason_naming_the_address(
    state: str, rule: str
) -> None:
    with pytest.raises(ConnectionNotActive) as refused:
        require_connection_can_send(connection_id="c1", state=state, mailbox_email="alice@gmail.com")
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.metadata == {
        "connection_id": "c1",
        "state": state,
        "mailbox_email": "alice@gmail.com",
    }
    assert rule in refused.value.message
    assert refused.value.message.startswith(f"the connection of alice@gmail.com is {state}")


def test_ledger_keys_of_the_same_request_id_differ_between_locations() -> None:
    assert ledger_key("loc-a", "req-1") != ledger_key("loc-b", "req-1")
    assert ledger_key("loc-a", "req-1") == ledger_key("loc-a", "req-1")
    assert ledger_key("ab", "c") != ledger_key("a", "bc")
    assert len(ledger_key("l" * 500, "r" * 5000)) == 64
