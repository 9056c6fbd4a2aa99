"""The sync rules as a pure function, table by table: every rule and every edge sync-rules.md names."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.threading.domain.model import (
    BccDrop,
    ConnectionState,
    CrmSend,
    Direction,
    IncomingMessage,
    Knowledge,
    Outcome,
    Source,
    ThreadHome,
    message_key,
)
from services.threading.domain.rules import decide, place_crm_send
from tests.fixtures.threading_messages import at, connection, contact, message, people

CAROL = contact("c-carol", "carol@example.com")
ACME = "dave@acme.example"


@dataclass(frozen=True)
class Case:
    name: str
    message: IncomingMessage
    knowledge: Knowledge
    # location -> (synced, rule id, contact id)
    expected: dict[str, tuple[bool, str, str]]
    outcome: Outcome = Outcome.DECIDED
    reason_contains: dict[str, str] = field(default_factory=dict)


def k(*contacts, homes=(), sends=(), seen=()) -> Knowledge:
    return Knowledge(tuple(contacts), tuple(homes), tuple(sends), frozenset(seen))


CASES = [
    Case("R2_inbound_from_assigned_contact_syncs", message(), k(CAROL), {"loc-a": (True, "R2", "c-carol")}),
    Case(
        "R2_sender_matched_case_and_gmail_dots_insensitively",
        message(frm="Jo.Doe+x@GoogleMail.com"),
        k(contact("c-jo", "jodoe@gmail.com")),
        {"loc-a": (True, "R2", "c-jo")},
    ),
    Case(
        "R2_contact_assigned_to_another_user_not_synced",
        message(),
        k(contact("c-carol", "carol@example.com", assigned="user-2")),
        {"loc-a": (False, "R2", "c-carol")},
        reason_contains={"loc-a": "assigned to user user-2, not to user user-1"},
    ),
    Case(
        "R2_unassigned_contact_not_synced",
        message(),
        k(contact("c-carol", "carol@example.com", assigned="")),
        {"loc-a": (False, "R2", "c-carol")},
        reason_contains={"loc-a": "assigned to nobody"},
    ),
    Case(
        "R2_stranger_not_synced",
        message(frm="stranger@example.com"),
        k(CAROL),
        {"loc-a": (False, "R2", "")},
        reason_contains={"loc-a": "no contact of the location"},
    ),
    Case(
        "R7_cc_only_user_still_synced_under_sender",
        message(to=["colleague@example.com"], cc=["user@gmail.com"]),
        k(CAROL),
        {"loc-a": (True, "R2", "c-carol")},
    ),
    Case(
        "R8_duplicate_contacts_first_created_wins",
        message(),
        k(contact("c-new", "carol@example.com", created=5), contact("c-old", "carol@example.com", created=1)),
        {"loc-a": (True, "R2", "c-old")},
    ),
    Case(
        "R8_assignment_checked_on_the_oldest_contact",
        message(),
        k(
            contact("c-new", "carol@example.com", created=5),
            contact("c-old", "carol@example.com", created=1, assigned="user-2"),
        ),
        {"loc-a": (False, "R2", "c-old")},
    ),
    Case(
        "R3_same_mailbox_in_two_locations_both_sync",
        message(connections=(connection("loc-a"), connection("loc-b"))),
        k(CAROL, contact("c-carol-b", "carol@example.com", location="loc-b")),
        {"loc-a": (True, "R3", "c-carol"), "loc-b": (True, "R3", "c-carol-b")},
    ),
    Case(
        "R3_only_locations_where_sender_is_assigned",
        message(connections=(connection("loc-a"), connection("loc-b"))),
        k(CAROL, contact("c-carol-b", "carol@example.com", location="loc-b", assigned="user-9")),
        {"loc-a": (True, "R3", "c-carol"), "loc-b": (False, "R2", "c-carol-b")},
    ),
    Case(
        "R1_message_before_the_connection_not_synced",
        message(minute=-5),
        k(CAROL),
        {"loc-a": (False, "R1", "")},
        reason_contains={"loc-a": "before connection"},
    ),
    Case(
        "R1_second_connection_starts_later",
        message(minute=10, connections=(connection("loc-a", start=0), connection("loc-b", start=20))),
        k(CAROL, contact("c-carol-b", "carol@example.com", location="loc-b")),
        {"loc-a": (True, "R2", "c-carol"), "loc-b": (False, "R1", "")},
    ),
    *[
        Case(
            f"R1_{label.lower()}_label_not_synced",
            message(labels=frozenset({label, "INBOX"})),
            k(CAROL),
            {"loc-a": (False, "R1", "")},
            reason_contains={"loc-a": label},
        )
        for label in ("SPAM", "TRASH", "DRAFT", "CHAT")
    ],
    Case(
        "R10_replaced_connection_stops_new_messages",
        message(minute=30, connections=(connection(state=ConnectionState.REPLACED, changed=20),)),
        k(CAROL),
        {"loc-a": (False, "R10", "")},
    ),
    Case(
        "R10_message_received_before_the_replacement_still_syncs",
        message(minute=10, connections=(connection(state=ConnectionState.REPLACED, changed=20),)),
        k(CAROL),
        {"loc-a": (True, "R2", "c-carol")},
    ),
    Case(
        "R10_reply_in_old_thread_not_synced_after_replacement",
        message(minute=30, connections=(connection(state=ConnectionState.REPLACED, changed=20),)),
        k(CAROL, homes=[ThreadHome("loc-a", "conv-1", "c-carol", "thr-1", "gmail_thread")]),
        {"loc-a": (False, "R10", "c-carol")},
    ),
    Case(
        "R11_disconnected_location_gets_nothing_other_location_keeps_syncing",
        message(
            minute=30,
            connections=(
                connection("loc-a", state=ConnectionState.DISCONNECTED, changed=20),
                connection("loc-b"),
            ),
        ),
        k(CAROL, contact("c-carol-b", "carol@example.com", location="loc-b")),
        {"loc-a": (False, "R11", ""), "loc-b": (True, "R2", "c-carol-b")},
    ),
    Case(
        "R12_reauth_required_connection_still_covers_mail_after_reconnect",
        message(connections=(connection(state=ConnectionState.REAUTH_REQUIRED),)),
        k(CAROL),
        {"loc-a": (True, "R2", "c-carol")},
    ),
    Case(
        "R4_reply_in_known_gmail_thread_follows_it_whatever_the_assignment",
        message(frm="stranger@example.com"),
        k(homes=[ThreadHome("loc-a", "conv-1", "c-carol", "thr-1", "gmail_thread")]),
        {"loc-a": (True, "R4", "c-carol")},
    ),
    Case(
        "R4_in_reply_to_a_stored_message_id_follows_its_thread",
        message(in_reply_to=("<parent@x>",), gmail_thread="gt-new"),
        k(
            CAROL,
            homes=[ThreadHome("loc-a", "conv-9", "c-other", "thr-9", "message_id")],
            seen=["<parent@x>"],
        ),
        {"loc-a": (True, "R4", "c-other")},
    ),
    Case(
        "R4_thread_lives_only_in_one_location_nowhere_else",
        message(connections=(connection("loc-a"), connection("loc-b"))),
        k(
            CAROL,
            contact("c-carol-b", "carol@example.com", location="loc-b"),
            homes=[ThreadHome("loc-a", "conv-1", "c-carol", "thr-1", "gmail_thread")],
        ),
        {"loc-a": (True, "R4", "c-carol"), "loc-b": (False, "R4", "")},
    ),
    Case(
        "R3_crm_started_thread_reply_stays_in_its_location",
        message(connections=(connection("loc-a"), connection("loc-b"))),
        k(
            CAROL,
            contact("c-carol-b", "carol@example.com", location="loc-b"),
            homes=[ThreadHome("loc-a", "conv-1", "c-carol", "thr-crm", "message_id", crm_started=True)],
        ),
        {"loc-a": (True, "R4", "c-carol"), "loc-b": (False, "R4", "")},
        reason_contains={"loc-b": "started from the CRM"},
    ),
    Case(
        "R4_outbound_reply_in_known_thread_needs_no_contact",
        message(frm="user@gmail.com", to="someone@else.example", direction=Direction.OUTBOUND),
        k(homes=[ThreadHome("loc-a", "conv-1", "c-carol", "thr-1", "gmail_thread")]),
        {"loc-a": (True, "R4", "c-carol")},
    ),
    Case(
        "R4_reply_before_its_parent_waits_for_the_parent",
        message(in_reply_to=("<parent@x>",)),
        k(CAROL),
        {},
        outcome=Outcome.WAIT_FOR_PARENT,
    ),
    Case(
        "R4_R1_spam_reply_before_its_parent_also_waits",
        message(in_reply_to=("<parent@x>",), labels=frozenset({"SPAM"})),
        k(CAROL),
        {},
        outcome=Outcome.WAIT_FOR_PARENT,
    ),
    Case(
        "R4_reply_whose_parent_was_seen_but_not_synced_decides_alone",
        message(in_reply_to=("<parent@x>",)),
        k(CAROL, seen=["<parent@x>"]),
        {"loc-a": (True, "R2", "c-carol")},
    ),
    Case(
        "R5_sent_from_gmail_first_to_recipient_that_is_a_contact",
        message(
            frm="user@gmail.com",
            to=["stranger@x.example", ACME, "carol@example.com"],
            cc=["erin@example.com"],
            direction=Direction.OUTBOUND,
        ),
        k(
            CAROL,
            contact("c-dave", ACME, assigned="user-2"),
            contact("c-erin", "erin@example.com"),
        ),
        {"loc-a": (True, "R5", "c-dave")},
    ),
    Case(
        "R5_cc_contact_is_counterpart_when_no_to_recipient_is_a_contact",
        message(
            frm="user@gmail.com",
            to=["stranger@x.example"],
            cc=["erin@example.com"],
            bcc=["carol@example.com"],
            direction=Direction.OUTBOUND,
        ),
        k(CAROL, contact("c-erin", "erin@example.com")),
        {"loc-a": (True, "R5", "c-erin")},
    ),
    Case(
        "R5_sent_to_strangers_only_not_synced",
        message(frm="user@gmail.com", to=["stranger@x.example"], direction=Direction.OUTBOUND),
        k(CAROL),
        {"loc-a": (False, "R5", "")},
    ),
    Case(
        "R5_forward_from_gmail_to_a_contact_is_a_sent_message",
        message(frm="user@gmail.com", to="carol@example.com", direction=Direction.OUTBOUND, rfc="<fwd@x>"),
        k(contact("c-carol", "carol@example.com", assigned="")),
        {"loc-a": (True, "R5", "c-carol")},
    ),
    Case(
        "R6_echo_of_crm_send_recognised_by_gmail_id_is_linked_not_placed",
        message(
            frm="user@gmail.com",
            to="carol@example.com",
            direction=Direction.OUTBOUND,
            rfc="<gmail-replaced@mail.gmail.com>",
            gmail_id="g-sent",
            connections=(connection("loc-a"), connection("loc-b")),
        ),
        k(
            CAROL,
            contact("c-carol-b", "carol@example.com", location="loc-b"),
            sends=[CrmSend("s-1", "loc-a", "mbx-1", "msg-1", "<ours@crm>", "", "g-sent", unresolved=False)],
        ),
        {"loc-a": (True, "R6", ""), "loc-b": (False, "R6", "")},
    ),
    Case(
        "R6_echo_before_sent_recognised_by_our_message_id",
        message(frm="user@gmail.com", to="carol@example.com", direction=Direction.OUTBOUND, rfc="<ours@crm>"),
        k(CAROL, sends=[CrmSend("s-1", "loc-a", "mbx-1", "msg-1", "<ours@crm>")]),
        {"loc-a": (True, "R6", "")},
    ),
    Case(
        "R6_unrecognised_sent_copy_waits_while_a_send_is_unresolved",
        message(
            frm="user@gmail.com", to="carol@example.com", direction=Direction.OUTBOUND, rfc="<replaced@gmail>"
        ),
        k(CAROL, sends=[CrmSend("s-1", "loc-a", "mbx-1", "msg-1", "<ours@crm>")]),
        {},
        outcome=Outcome.WAIT_FOR_SEND,
    ),
    Case(
        "R6_pending_send_of_another_mailbox_does_not_hold_this_one",
        message(frm="user@gmail.com", to="carol@example.com", direction=Direction.OUTBOUND),
        k(CAROL, sends=[CrmSend("s-1", "loc-a", "mbx-other", "msg-1", "<ours@crm>")]),
        {"loc-a": (True, "R5", "c-carol")},
    ),
    Case(
        "R6_inbound_message_never_waits_for_a_send",
        message(),
        k(CAROL, sends=[CrmSend("s-1", "loc-a", "mbx-1", "msg-1", "<ours@crm>")]),
        {"loc-a": (True, "R2", "c-carol")},
    ),
]


def drop(**kwargs) -> BccDrop:
    return BccDrop("drop-1", "loc-a", "user-1", "digest-1", **kwargs)


DROP_CASES = [
    Case(
        "R9_bcc_drop_first_to_recipient_existing_contact",
        message(
            frm="user@gmail.com",
            to=["carol@example.com", "zed@example.com"],
            bcc=["loc-a.token@drop.example"],
            direction=Direction.OUTBOUND,
            source=Source.BCC_DROP,
            drop=drop(),
            connections=(),
        ),
        k(CAROL),
        {"loc-a": (True, "R9", "c-carol")},
    ),
    Case(
        "R9_bcc_drop_to_stranger_creates_contact_assigned_to_sender",
        message(
            frm="user@gmail.com",
            to=["New.Person@Example.com", "zed@example.com"],
            cc=["cc-person@example.com"],
            direction=Direction.OUTBOUND,
            source=Source.BCC_DROP,
            drop=drop(),
            connections=(),
        ),
        k(),
        {"loc-a": (True, "R9", "")},
    ),
    Case(
        "R9_rejected_drop_creates_nothing",
        message(
            frm="impostor@evil.example",
            to=["new@example.com"],
            direction=Direction.OUTBOUND,
            source=Source.BCC_DROP,
            drop=drop(rejection_reason="sender is not a user of the location"),
            connections=(),
        ),
        k(),
        {"loc-a": (False, "R9", "")},
        reason_contains={"loc-a": "refused"},
    ),
    Case(
        "R9_bcc_drop_without_to_recipient_creates_nothing",
        message(
            frm="user@gmail.com",
            to=[],
            cc=["someone@example.com"],
            direction=Direction.OUTBOUND,
            source=Source.BCC_DROP,
            drop=drop(),
            connections=(),
        ),
        k(),
        {"loc-a": (False, "R9", "")},
    ),
]


@pytest.mark.parametrize("case", CASES + DROP_CASES, ids=lambda c: c.name)
def test_rules_table(case: Case) -> None:
    decision = decide(case.message, case.knowledge)
    assert decision.outcome is case.outcome
    got = {d.location_id: (d.synced, d.rule_id, d.contact_id) for d in decision.decisions}
    assert got == case.expected
    for location, fragment in case.reason_contains.items():
        reason = next(d.reason for d in decision.decisions if d.location_id == location)
        assert fragment in reason
    assert all(d.reason for d in decision.decisions), "R16: every decision says why"
    placed = {p.location_id for p in decision.placements}
    assert placed == {d.location_id for d in decision.decisions if d.synced and d.placement is not None}


def test_R9_new_contact_is_only_the_first_to_recipient_and_R7_never_cc() -> None:
    case = next(
        c for c in DROP_CASES if c.name == "R9_bcc_drop_to_stranger_creates_contact_assigned_to_sender"
    )
    (placement,) = decide(case.message, case.knowledge).placements
    assert placement.new_contact is not None
    assert placement.new_contact.email == "new.person@example.com"
    assert placement.new_contact.assigned_user_id == "user-1"


@pytest.mark.parametrize("label", ["R5", "R2"])
def test_R7_no_contact_created_outside_bcc_drops(label: str) -> None:
    direction = Direction.OUTBOUND if label == "R5" else Direction.INBOUND
    msg = message(frm="x@example.com", to=["y@example.com"], cc=["z@example.com"], direction=direction)
    decision = decide(msg, k())
    assert all(p.new_contact is None for p in decision.placements)
    assert not decision.placements


def test_R6_echo_links_to_the_stored_crm_message() -> None:
    case = next(c for c in CASES if c.name.startswith("R6_echo_of_crm_send"))
    decision = decide(case.message, case.knowledge)
    assert decision.echo is not None and decision.echo.message_id == "msg-1"
    assert decision.placements == ()


def test_R6_after_waiting_long_enough_an_unrecognised_sent_copy_is_placed_by_R5() -> None:
    case = next(c for c in CASES if c.name.startswith("R6_unrecognised_sent_copy_waits"))
    decision = decide(case.message, case.knowledge, may_wait=False)
    assert [(p.location_id, p.rule_id) for p in decision.placements] == [("loc-a", "R5")]


def test_R4_reply_before_parent_decides_alone_once_it_may_not_wait() -> None:
    msg = message(in_reply_to=("<parent@x>",))
    decision = decide(msg, k(CAROL), may_wait=False)
    assert [p.rule_id for p in decision.placements] == ["R2"]
    assert decision.placements[0].thread.new_key == "gmail:mbx-1:gt-1"


def test_R4_prefers_the_gmail_thread_over_a_message_id_match() -> None:
    homes = [
        ThreadHome("loc-a", "conv-2", "c-2", "thr-2", "message_id", create_time=at(0)),
        ThreadHome("loc-a", "conv-1", "c-1", "thr-1", "gmail_thread", create_time=at(5)),
    ]
    (placement,) = decide(message(), k(homes=homes)).placements
    assert placement.thread.existing_thread_id == "thr-1"
    assert placement.thread.alias_keys == ()


def test_R15_same_email_in_a_second_mailbox_links_to_the_stored_message() -> None:
    stored = ThreadHome("loc-a", "conv-1", "c-carol", "thr-1", "same_message")
    other_user = contact("c-carol", "carol@example.com", assigned="user-2")
    decision = decide(message(mailbox="mbx-2"), k(other_user, homes=[stored]))
    (placement,) = decision.placements
    assert (placement.rule_id, placement.thread.existing_thread_id) == ("R15", "thr-1")


def test_R15_message_keys() -> None:
    assert message_key(message(rfc="<a@b>")) == "mid:<a@b>"
    assert message_key(message(rfc="", gmail_id="g-9")) == "gmail:mbx-1:g-9"
    dropped = message(rfc="", source=Source.BCC_DROP, drop=BccDrop("d", "loc-a", "u", "abc"), connections=())
    assert message_key(dropped) == "drop:abc"


def test_R6_crm_send_recorded_under_the_first_to_contact() -> None:
    decision = place_crm_send(
        send_id="s-1",
        location_id="loc-a",
        recipients=people(to=["stranger@x.example", "carol@example.com"]),
        contacts=[CAROL],
    )
    assert decision.synced and decision.contact_id == "c-carol"
    assert decision.placement is not None and decision.placement.thread.new_key == "crm:s-1"


def test_R6_crm_reply_goes_to_the_given_thread() -> None:
    decision = place_crm_send(
        send_id="s-1",
        location_id="loc-a",
        recipients=(),
        contacts=[],
        conversation_id="conv-1",
        contact_id="c-carol",
        thread_id="thr-1",
    )
    assert decision.placement is not None
    assert (decision.placement.conversation_id, decision.placement.thread.existing_thread_id) == (
        "conv-1",
        "thr-1",
    )


def test_R4_reply_found_by_message_id_attaches_its_gmail_thread_for_later_replies() -> None:
    homes = [ThreadHome("loc-a", "conv-2", "c-2", "thr-2", "message_id", create_time=at(0))]
    msg = message(in_reply_to=("<parent@x>",), gmail_thread="gt-9")
    (placement,) = decide(msg, k(homes=homes, seen=["<parent@x>"])).placements
    assert placement.thread.alias_keys == ("gmail:mbx-1:gt-9",)
