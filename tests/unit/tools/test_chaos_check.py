"""The chaos tier's checker on hand-made worlds: a clean one passes, and each way to lose or duplicate a message
or a send is reported (the checker's own negative controls, without starting the product)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tools.chaos_check import (
    DUPLICATE_QUIET_SECONDS,
    SETTLED_QUIET_SECONDS,
    Delivery,
    GmailCopy,
    SendOutcome,
    StoredMessage,
    Verdict,
    check_inbound,
    check_sends,
    count_settled,
    table,
)

DELIVERIES = [Delivery(f"t{i}", f"g{i}", f"<m{i}@x>", f"c{i % 2}") for i in range(4)]


def stored_for(delivery: Delivery, **changes: object) -> StoredMessage:
    message = StoredMessage(
        message_id=f"crm-{delivery.token}",
        token=delivery.token,
        rfc_message_id=delivery.rfc_message_id,
        contact_id=delivery.contact_id,
        gmail_ids=(delivery.gmail_id,),
        rule_id="R2",
    )
    return replace(message, **changes)


CLEAN = [stored_for(d) for d in DELIVERIES]


def test_every_delivery_stored_once_in_its_conversation_passes() -> None:
    verdict = check_inbound("inbound", DELIVERIES, CLEAN, kills=3)
    assert verdict.ok, verdict.problems
    assert (verdict.delivered, verdict.stored, verdict.lost, verdict.duplicated) == (4, 4, 0, 0)
    assert verdict.row()[-1] == "ok"


@pytest.mark.parametrize(
    ("stored", "lost", "duplicated", "problem"),
    [
        (CLEAN[1:], 1, 0, "never stored"),
        # The same email again under a new Message-ID (as the inbound negative control injects it).
        (
            [*CLEAN, stored_for(DELIVERIES[0], message_id="x", rfc_message_id="<new@x>", gmail_ids=("g9",))],
            0,
            1,
            "more than once",
        ),
        # The same Gmail message stored as two CRM messages.
        ([*CLEAN, stored_for(DELIVERIES[2], message_id="x")], 0, 1, "more than once"),
        ([*CLEAN[:3], stored_for(DELIVERIES[3], contact_id="c0")], 0, 0, "wrong conversation"),
        ([*CLEAN[:3], stored_for(DELIVERIES[3], gmail_ids=())], 0, 0, "without their Gmail copy"),
        ([*CLEAN, StoredMessage("x", "stranger", "<s@x>", "c0", ("g8",))], 0, 0, "nobody delivered"),
    ],
)
def test_inbound_checker_reports_what_went_wrong(
    stored: list[StoredMessage], lost: int, duplicated: int, problem: str
) -> None:
    verdict = check_inbound("inbound", DELIVERIES, stored)
    assert not verdict.ok
    assert (verdict.lost, verdict.duplicated) == (lost, duplicated)
    assert any(problem in p for p in verdict.problems), verdict.problems


SENDS = [SendOutcome(f"s{i}", f"send-{i}", True, f"g{i}") for i in range(3)]
SENT = [GmailCopy(f"g{i}", f"<gmail-{i}@mail.gmail.com>") for i in range(3)]
INBOX = [GmailCopy(f"r{i}", f"<gmail-{i}@mail.gmail.com>") for i in range(3)]
CRM = [
    StoredMessage(f"crm{i}", f"s{i}", f"<gmail-{i}@mail.gmail.com>", "c", (f"g{i}",), f"send-{i}", "R6")
    for i in range(3)
]


def test_every_send_once_in_gmail_and_once_in_the_crm_passes() -> None:
    verdict = check_sends("sends", SENDS, SENT, INBOX, CRM, quota_used=3, kills=2)
    assert verdict.ok, verdict.problems
    assert (verdict.sends, verdict.gmail_copies, verdict.duplicated, verdict.lost) == (3, 3, 0, 0)


@pytest.mark.parametrize(
    ("changes", "lost", "duplicated", "problem"),
    [
        # A second copy in Sent and in the recipient's inbox (the sends negative control).
        (
            {"sent": [*SENT, GmailCopy("g9", "<x@y>")], "inbox": [*INBOX, GmailCopy("r9", "<x@y>")]},
            0,
            1,
            "claimed by no send",
        ),
        ({"sent": SENT[:2]}, 1, 0, "not in Sent"),
        ({"inbox": INBOX[:2]}, 0, 0, "the recipient got 2"),
        (
            {"sends": [*SENDS[:2], replace(SENDS[2], gmail_id="g1")], "sent": SENT[:2]},
            1,
            1,
            "another send claims",
        ),
        # A send never final whose copy Gmail has: lost to its caller, and a copy that belongs to no send.
        ({"sends": [*SENDS[:2], replace(SENDS[2], sent=False)]}, 1, 1, "never SENT"),
        (
            {"crm": [*CRM, replace(CRM[0], message_id="x", send_id="", rule_id="R5")]},
            0,
            1,
            "by rule {'R5': 1, 'R6': 1}",
        ),
        ({"crm": CRM[:2]}, 1, 0, "not in the CRM"),
        ({"quota": 4}, 0, 0, "GetQuota.used is 4"),
    ],
)
def test_send_checker_reports_what_went_wrong(
    changes: dict[str, object], lost: int, duplicated: int, problem: str
) -> None:
    world: dict[str, object] = {"sends": SENDS, "sent": SENT, "inbox": INBOX, "crm": CRM, "quota": 3}
    world.update(changes)
    verdict = check_sends(
        "sends",
        world["sends"],  # type: ignore[arg-type]
        world["sent"],  # type: ignore[arg-type]
        world["inbox"],  # type: ignore[arg-type]
        world["crm"],  # type: ignore[arg-type]
        world["quota"],  # type: ignore[arg-type]
    )
    assert not verdict.ok
    assert (verdict.lost, verdict.duplicated) == (lost, duplicated)
    assert any(problem in p for p in verdict.problems), verdict.problems


def test_table_has_the_issue_columns_and_a_control_row_says_whether_it_was_caught() -> None:
    caught = Verdict("sends (control)", duplicated=1, problems=["x"], control=True)
    missed = Verdict("inbound (control)", control=True)
    text = table([Verdict("sends", kills=10, sends=200, gmail_copies=200), caught, missed])
    header, *rows = text.splitlines()
    assert header.split() == [
        "case",
        "kills",
        "delivered",
        "stored",
        "lost",
        "duplicated",
        "sends",
        "gmail",
        "copies",
        "result",
    ]
    assert rows[0].split()[-1] == "ok" and rows[1].split()[-1] == "caught" and rows[2].split()[-1] == "MISSED"


@pytest.mark.parametrize(
    ("count", "unchanged_for", "settled"),
    [
        (9, 600.0, False),  # short of the expected count: keep waiting
        (10, SETTLED_QUIET_SECONDS - 0.5, False),
        (10, SETTLED_QUIET_SECONDS, True),
        # One above: an R5 record its send's `sent` merges after threading's 30 s ack wait, not yet a duplicate.
        (11, SETTLED_QUIET_SECONDS, False),
        (11, 30.0, False),
        (11, DUPLICATE_QUIET_SECONDS, True),
    ],
)
def test_a_count_above_the_expected_one_is_read_only_once_it_outlasted_the_ack_wait(
    count: int, unchanged_for: float, settled: bool
) -> None:
    assert count_settled(count, 10, unchanged_for) is settled
    assert DUPLICATE_QUIET_SECONDS > 30.0, (
        "longer than threading's ack wait, after which a transient R5 merges"
    )
