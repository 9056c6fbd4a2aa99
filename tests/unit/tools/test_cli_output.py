"""The CLI's output helpers: `--field` picks one value (of each listed item) for shell variables, and a CRM send
in `messages` shows its state as outbound knows it (a FAILED send is marked, with its error)."""

from __future__ import annotations

import pytest

from mailsync.v1 import common_pb2, threading_pb2
from tools.cli import CliError, Output, describe_message, pick


def test_field_prints_one_value_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    Output(as_json=False, field_name="message_id").show(
        [threading_pb2.Message(message_id="m1"), threading_pb2.Message(message_id="m2")], "ignored"
    )
    Output(as_json=False, field_name="send.state").show({"send": {"state": "SEND_STATE_SENT"}}, "ignored")
    assert capsys.readouterr().out.splitlines() == ["m1", "m2", "SEND_STATE_SENT"]


def test_an_unknown_field_names_the_fields_there_are() -> None:
    with pytest.raises(CliError, match=r"no field 'mesage_id' \(fields here: id, message_id\)"):
        pick({"id": "1", "message_id": "<a@b>"}, "mesage_id")


def test_a_crm_send_shows_its_state() -> None:
    message = threading_pb2.Message(
        message_id="m1",
        direction=common_pb2.DIRECTION_OUTBOUND,
        rule_id="R6",
        subject="Quote",
        send_id="s1",
        send_pending=True,
    )
    assert "CRM send s1 (pending)" in describe_message(message, full=False)
    failed = describe_message(message, full=False, send_state="FAILED: recipient refused")
    assert "CRM send s1 (FAILED: recipient refused)" in failed
