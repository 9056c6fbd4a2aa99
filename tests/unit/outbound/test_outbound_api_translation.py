"""The outbound servicer's translation between protos and the send use case: what is refused before any work, and
what a caller reads back about a send."""

from __future__ import annotations

import datetime as dt

import pytest

from mailsync.v1 import common_pb2, outbound_pb2
from services.outbound.api import send_proto, send_request
from services.outbound.domain.routing import SendKind
from services.outbound.store import SendRecord
from services.runtime.errors import InvalidArgument

WHEN = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def _request(**fields: object) -> outbound_pb2.SendEmailRequest:
    values: dict[str, object] = {
        "request_id": "r1",
        "location_id": "loc-1",
        "user_id": "u1",
        "kind": common_pb2.SEND_KIND_INDIVIDUAL,
        "to": [common_pb2.EmailAddress(email="bob@example.com", display_name="Bob")],
        "subject": "Hi",
        "reply_references": ["<a@x>", "<b@x>"],
    }
    values.update(fields)
    return outbound_pb2.SendEmailRequest(**values)  # type: ignore[arg-type]


def _record(**fields: object) -> SendRecord:
    values: dict[str, object] = {
        "send_id": "s1",
        "location_id": "loc-1",
        "request_id": "r1",
        "kind": "INDIVIDUAL",
        "user_id": "u1",
        "connection_id": "c1",
        "mailbox_id": "m1",
        "mailbox_email": "alice@gmail.com",
        "ledger_key": "k",
        "state": "SENT",
        "next_step": "NOTHING",
        "gmail_calls": 1,
        "reason": "",
        "error_reason": "",
        "retry_time": None,
        "rfc_message_id": "<ours@crm.example.com>",
        "final_rfc_message_id": "<kept@mail.gmail.com>",
        "gmail_message_id": "g1",
        "gmail_thread_id": "t1",
        "reply_gmail_thread_id": "",
        "subject": "Hi",
        "recipients": ("bob@example.com",),
        "message_date": WHEN,
        "raw": None,
        "pending_event": None,
        "created_at": WHEN,
        "call_started_at": WHEN,
        "call_ended_by": None,
        "sent_at": WHEN + dt.timedelta(seconds=1),
        "message_id_confirmed": True,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    values.update(fields)
    return SendRecord(**values)  # type: ignore[arg-type]


def test_a_request_becomes_the_send_command_with_every_field() -> None:
    command = send_request(_request(kind=common_pb2.SEND_KIND_WORKFLOW))

    assert command.kind is SendKind.WORKFLOW
    assert command.to[0].email == "bob@example.com" and command.to[0].display_name == "Bob"
    assert command.reply_references == ("<a@x>", "<b@x>")


@pytest.mark.parametrize("field", ["request_id", "location_id", "user_id"])
def test_a_request_without_its_ids_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        send_request(_request(**{field: "  "}))

    assert refused.value.metadata["field"] == field


def test_a_request_without_a_kind_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        send_request(_request(kind=common_pb2.SEND_KIND_UNSPECIFIED))

    assert refused.value.metadata["field"] == "kind"


def test_R6_a_sent_send_reports_the_message_id_gmail_kept() -> None:
    send = send_proto(_record())

    assert send.state == outbound_pb2.SEND_STATE_SENT
    assert send.rfc_message_id == "<kept@mail.gmail.com>"
    assert (send.gmail_message_id, send.gmail_thread_id, send.error) == ("g1", "t1", "")
    assert send.sent_time.ToDatetime(tzinfo=dt.UTC) == WHEN + dt.timedelta(seconds=1)


def test_a_failed_send_reports_its_reason_and_no_sent_time() -> None:
    send = send_proto(
        _record(state="FAILED", reason="Gmail refused it", sent_at=None, final_rfc_message_id="")
    )

    assert send.state == outbound_pb2.SEND_STATE_FAILED
    assert send.error == "Gmail refused it" and not send.HasField("sent_time")
    assert send.rfc_message_id == "<ours@crm.example.com>"
