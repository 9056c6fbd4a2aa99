"""The end-to-end scenarios of sync-rules.md, each driven through the services' public gRPC APIs, the Gmail
sandbox's admin API (the outside world and the user's own Gmail UI) and SMTP, against real processes.

Negative outcomes ("nothing synced") are observed only after the sync has decided (ExplainMessage, R16) or after a
later message of the same mailbox has synced, so they never pass just because the sync had not got there yet.
"""

from __future__ import annotations

import base64
import email.utils
import smtplib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mailsync.v1 import auth_pb2, common_pb2, ingest_pb2, outbound_pb2, threading_pb2
from tests.fixtures.stack import E2E_DAILY_SEND_LIMIT, E2EStack, eventually, only

INBOUND = common_pb2.DIRECTION_INBOUND
OUTBOUND = common_pb2.DIRECTION_OUTBOUND
SENT = outbound_pb2.SEND_STATE_SENT


def connected_user(stack: E2EStack, *location_ids: str) -> tuple[str, str]:
    """A CRM user in `location_ids` with one fresh Gmail mailbox connected in each; (user_id, address)."""
    user = stack.create_user(list(location_ids))
    address = stack.new_address("user")
    for location_id in location_ids:
        stack.connect_gmail(user.user_id, location_id, address)
    return user.user_id, address


def sent_from_gmail(stack: E2EStack, mailbox: str, **fields: Any) -> dict[str, Any]:
    """The user sends from Gmail's own UI; the answer with the Message-ID Gmail gave the SENT copy."""
    sent = stack.sandbox.user_send(mailbox, **fields)
    return stack.gmail_message(mailbox, sent["id"])


def roles(message: threading_pb2.Message) -> set[tuple[str, int]]:
    return {(p.email, p.role) for p in message.participants}


def test_scenario_1_R2_inbound_from_assigned_contact_lands_in_its_conversation(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("carol", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)

    delivered = stack.deliver(mailbox, contact_address, "Quote request", "Can you send a quote?")

    message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    assert message.direction == INBOUND
    assert message.rule_id == "R2"
    assert "Can you send a quote?" in message.text_body
    assert len(stack.conversations(location, contact.contact_id)) == 1


def test_scenario_2_R2_R16_contact_not_assigned_to_the_user_is_not_synced_and_explained(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    colleague = stack.create_user([location], name="colleague")
    contact_address = stack.new_address("dave", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=colleague.user_id)

    delivered = stack.deliver(mailbox, contact_address, "Hello there", "Not for you")

    decision = stack.wait_for_decision(location, delivered["message_id"])
    assert not decision.synced
    assert decision.rule_id == "R2"
    assert contact.contact_id in decision.reason and colleague.user_id in decision.reason
    assert "not to" in decision.reason and user_id in decision.reason
    assert stack.conversations(location, contact.contact_id) == []


def test_scenario_3_R4_R6_reply_from_the_crm_is_in_gmail_thread_and_stored_once(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("erin", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    delivered = stack.deliver(mailbox, contact_address, "Offer", "Please send the offer")
    first = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    # The sandbox defaults are the hard case of R6: Gmail replaces our Message-ID, and the SENT copy is in
    # history and pushed before messages.send answers.
    settings = stack.sandbox.settings()
    assert settings["replace_message_id"] is True and settings["sent_copy_timing"] == "before_response"

    send = reply_from_crm(stack, location, user_id, first, contact_address, "Here is the offer")

    assert send.state == SENT and send.mailbox_email == mailbox
    gmail_copy = stack.gmail_message(mailbox, send.gmail_message_id)
    assert "SENT" in gmail_copy["labelIds"]
    assert gmail_copy["threadId"] == delivered["threadId"] == send.gmail_thread_id
    assert gmail_copy["message_id"] == send.rfc_message_id
    assert not send.rfc_message_id.endswith("@mailsync.invalid>")

    def echo_linked() -> threading_pb2.Message:
        stored = only([m for m in stack.messages_of_contact(location, contact.contact_id) if m.send_id])
        assert [c.gmail_message_id for c in stored.mailbox_copies] == [send.gmail_message_id]
        return stored

    reply = eventually(echo_linked)
    assert reply.send_id == send.send_id and reply.direction == OUTBOUND
    assert reply.thread_ids == first.thread_ids
    echo = stack.wait_for_decision(location, send.rfc_message_id)
    assert echo.synced and echo.rule_id == "R6" and send.send_id in echo.reason
    assert echo.message_id == reply.message_id
    # A later message of the mailbox has synced, so the echo was processed long ago: still one record of it.
    barrier = stack.deliver(mailbox, contact_address, "Unrelated", "later")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=barrier["message_id"])
    stored = stack.messages_of_contact(location, contact.contact_id)
    assert len(stored) == 3
    assert [m.message_id for m in stored if m.direction == OUTBOUND] == [reply.message_id]


def test_scenario_4_R4_contact_reply_to_a_crm_reply_lands_in_the_same_thread(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("fay", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    delivered = stack.deliver(mailbox, contact_address, "Visit", "When can we meet?")
    first = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    send = reply_from_crm(stack, location, user_id, first, contact_address, "Tuesday?")
    # The contact is reassigned meanwhile: R4 decides before R2's assignment check.
    stack.reassign_contact(contact, "")

    answer = stack.deliver(
        mailbox,
        contact_address,
        "Re: Visit",
        "Tuesday works",
        in_reply_to=send.rfc_message_id,
        references=f"{first.rfc_message_id} {send.rfc_message_id}",
    )

    reply = stack.wait_for_message(location, contact.contact_id, rfc_message_id=answer["message_id"])
    assert reply.rule_id == "R4"
    assert reply.thread_ids == first.thread_ids
    assert answer["threadId"] == delivered["threadId"]
    assert len(stack.conversations(location)) == 1


def test_scenario_3_4_R6_R15_R4_sent_copy_readable_only_after_the_send_answered(stack: E2EStack) -> None:
    """The sandbox's `after_response` timing: outbound cannot read the Message-ID Gmail gave the send, so the send
    is recorded under ours; a colleague's connected mailbox (in Cc) receives it under Gmail's. The CRM still shows
    the send once, under Gmail's Message-ID, with both mailbox copies; and the contact's reply that names only
    Gmail's Message-ID (the one the contact received) follows it (R4)."""
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    colleague = stack.create_user([location], name="colleague")
    colleague_mailbox = stack.new_address("colleague")
    stack.connect_gmail(colleague.user_id, location, colleague_mailbox)
    contact_address = stack.new_address("gina", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    delivered = stack.deliver(mailbox, contact_address, "Contract", "Please send the contract")
    first = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    before = stack.sandbox.settings()
    stack.sandbox.settings(sent_copy_timing="after_response", sent_copy_delay_ms=1500)
    try:
        request = outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("send"),
            location_id=location,
            user_id=user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=contact_address)],
            cc=[common_pb2.EmailAddress(email=colleague_mailbox)],
            subject="Re: Contract",
            text_body="Here it is",
            conversation_id=first.conversation_id,
            reply_gmail_thread_id=first.mailbox_copies[0].gmail_thread_id,
            reply_to_rfc_message_id=first.rfc_message_id,
            reply_references=[first.rfc_message_id],
        )
        send = stack.outbound.SendEmail(request).send
    finally:
        stack.sandbox.settings(
            sent_copy_timing=before["sent_copy_timing"], sent_copy_delay_ms=before["sent_copy_delay_ms"]
        )
    assert send.state == SENT
    gmails = eventually(lambda: stack.gmail_message(mailbox, send.gmail_message_id)["message_id"])
    colleague_copy = eventually(
        lambda: only([m for m in stack.sandbox.messages(colleague_mailbox) if m["message_id"] == gmails])
    )

    def shown_once_under_gmails_id() -> threading_pb2.Message:
        outbound = [
            m for m in stack.messages_of_contact(location, contact.contact_id) if m.direction == OUTBOUND
        ]
        stored = only(outbound)
        assert stored.send_id == send.send_id and stored.rule_id == "R6"
        assert stored.rfc_message_id == gmails
        assert {(c.mailbox_id, c.gmail_message_id) for c in stored.mailbox_copies} >= {
            (stack.connection(user_id, location).mailbox_id, send.gmail_message_id),
            (stack.connection(colleague.user_id, location).mailbox_id, colleague_copy["id"]),
        }
        return stored

    sent = eventually(shown_once_under_gmails_id)
    assert sent.thread_ids == first.thread_ids or set(first.thread_ids) <= set(sent.thread_ids)

    # The contact answers everyone; the colleague's mailbox has it, and only Gmail's id links it to the thread.
    answer = stack.deliver(
        colleague_mailbox,
        contact_address,
        "Re: Contract",
        "Signed",
        to=[colleague_mailbox],
        in_reply_to=gmails,
        references=gmails,
    )
    reply = stack.wait_for_message(location, contact.contact_id, rfc_message_id=answer["message_id"])
    assert reply.rule_id == "R4"
    assert set(reply.thread_ids) & set(sent.thread_ids)
    assert [m.message_id for m in stack.messages_of_contact(location, contact.contact_id) if m.send_id] == [
        sent.message_id
    ]


def reply_from_crm(
    stack: E2EStack,
    location: str,
    user_id: str,
    parent: threading_pb2.Message,
    contact_address: str,
    text: str,
    outbound: Any = None,
) -> Any:
    request = outbound_pb2.SendEmailRequest(
        request_id=stack.new_id("send"),
        location_id=location,
        user_id=user_id,
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        to=[common_pb2.EmailAddress(email=contact_address)],
        subject=f"Re: {parent.subject}",
        text_body=text,
        conversation_id=parent.conversation_id,
        reply_gmail_thread_id=parent.mailbox_copies[0].gmail_thread_id,
        reply_to_rfc_message_id=parent.rfc_message_id,
        reply_references=[parent.rfc_message_id],
    )
    return (outbound or stack.outbound).SendEmail(request).send


def test_scenario_5_R5_R7_sent_from_gmail_goes_to_first_to_contact_with_every_participant(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    _user_id, mailbox = connected_user(stack, location)
    first_to, second_to, in_cc = (stack.new_address(n, "outside.test") for n in ("gus", "hal", "ivy"))
    # Not assigned to the user: a sent message needs no assignment (R5).
    contacts = {a: stack.upsert_contact(location, a) for a in (first_to, second_to, in_cc)}
    stranger_cc = stack.new_address("stranger", "elsewhere.test")

    sent = sent_from_gmail(
        stack, mailbox, to=[first_to, second_to], cc=[in_cc, stranger_cc], subject="Kick-off", body="Agenda"
    )

    message = stack.wait_for_message(
        location, contacts[first_to].contact_id, rfc_message_id=sent["message_id"]
    )
    assert message.direction == OUTBOUND and message.rule_id == "R5"
    assert roles(message) >= {
        (mailbox, common_pb2.PARTICIPANT_ROLE_FROM),
        (first_to, common_pb2.PARTICIPANT_ROLE_TO),
        (second_to, common_pb2.PARTICIPANT_ROLE_TO),
        (in_cc, common_pb2.PARTICIPANT_ROLE_CC),
        (stranger_cc, common_pb2.PARTICIPANT_ROLE_CC),
    }
    assert len(stack.conversations(location)) == 1
    assert stack.conversations(location, contacts[second_to].contact_id) == []
    assert stack.conversations(location, contacts[in_cc].contact_id) == []
    assert stack.contacts(location, stranger_cc) == []
    assert len(stack.contacts(location)) == 3


def test_scenario_6_R7_contact_writing_to_a_colleague_with_the_user_in_cc_is_synced_under_the_contact(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("jon", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    colleague = stack.new_address("kim", "outside.test")

    delivered = stack.deliver(
        mailbox, contact_address, "FYI", "For your information", to=[colleague], cc=[mailbox]
    )

    message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    assert message.direction == INBOUND and message.rule_id == "R2"
    assert (colleague, common_pb2.PARTICIPANT_ROLE_TO) in roles(message)
    assert (mailbox, common_pb2.PARTICIPANT_ROLE_CC) in roles(message)
    assert stack.contacts(location, colleague) == []


def test_scenario_7_R8_two_contacts_sharing_an_address_the_older_one_gets_the_email(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    shared = stack.new_address("office", "outside.test")
    # The newer contact is upserted first, so only the creation time can make the older one win.
    newer = stack.upsert_contact(
        location, shared, assigned_user_id=user_id, name="Newer", create_time_seconds=1_700_000_500
    )
    older = stack.upsert_contact(
        location, shared, assigned_user_id=user_id, name="Older", create_time_seconds=1_700_000_000
    )

    delivered = stack.deliver(mailbox, shared, "Who gets this", "The older contact")

    message = stack.wait_for_message(location, older.contact_id, rfc_message_id=delivered["message_id"])
    assert message.rule_id == "R2"
    decision = stack.wait_for_decision(location, delivered["message_id"])
    assert decision.contact_id == older.contact_id and "R8" in decision.reason
    assert stack.conversations(location, newer.contact_id) == []


def test_scenario_8_R3_one_mailbox_in_two_locations_inbound_in_both_crm_thread_stays_home(
    stack: E2EStack,
) -> None:
    location_a, location_b = stack.new_id("loc-a"), stack.new_id("loc-b")
    user_id, mailbox = connected_user(stack, location_a, location_b)
    contact_address = stack.new_address("lea", "outside.test")
    in_a = stack.upsert_contact(location_a, contact_address, assigned_user_id=user_id)
    in_b = stack.upsert_contact(location_b, contact_address, assigned_user_id=user_id)

    delivered = stack.deliver(mailbox, contact_address, "Both of you", "Hello A and B")

    for location, contact in ((location_a, in_a), (location_b, in_b)):
        message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
        assert message.rule_id == "R3"

    send = stack.outbound.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("send"),
            location_id=location_a,
            user_id=user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=contact_address)],
            subject="Contract for A",
            text_body="Only location A does business on this",
        )
    ).send
    assert send.state == SENT
    answer = stack.deliver(
        mailbox,
        contact_address,
        "Re: Contract for A",
        "Signed",
        in_reply_to=send.rfc_message_id,
        references=send.rfc_message_id,
    )

    reply = stack.wait_for_message(location_a, in_a.contact_id, rfc_message_id=answer["message_id"])
    assert reply.rule_id == "R4"
    away = stack.wait_for_decision(location_b, answer["message_id"])
    assert not away.synced and away.rule_id == "R4"
    assert [m.rfc_message_id for m in stack.messages_of_contact(location_b, in_b.contact_id)] == [
        delivered["message_id"]
    ]


def test_scenario_11_R10_update_email_stops_the_old_mailbox_and_sends_use_the_new_one(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, old_mailbox = connected_user(stack, location)
    contact_address = stack.new_address("max", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    before = stack.deliver(old_mailbox, contact_address, "Old times", "Synced before the change")
    synced = stack.wait_for_message(location, contact.contact_id, rfc_message_id=before["message_id"])
    old_connection = stack.connection(user_id, location)

    new_mailbox = stack.new_address("user-new")
    new_connection = stack.update_email(user_id, location, new_mailbox)

    assert new_connection.connection_id != old_connection.connection_id
    assert (
        stack.auth.GetConnection(
            auth_pb2.GetConnectionRequest(location_id=location, connection_id=old_connection.connection_id)
        ).connection.state
        == common_pb2.CONNECTION_STATE_REPLACED
    )
    new_message = stack.deliver(old_mailbox, contact_address, "After the change", "Not synced")
    old_thread_reply = stack.deliver(
        old_mailbox,
        contact_address,
        "Re: Old times",
        "A reply in the old thread",
        in_reply_to=before["message_id"],
        references=before["message_id"],
    )
    # The new mailbox syncs meanwhile: by the time its message is stored, the old mailbox's would have been too.
    via_new = stack.deliver(new_mailbox, contact_address, "To the new address", "Synced")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=via_new["message_id"])
    for rfc_message_id in (new_message["message_id"], old_thread_reply["message_id"]):
        decision = stack.decision_if_any(location, rfc_message_id)
        assert decision is None or (not decision.synced and decision.rule_id == "R10"), decision
    stored = stack.messages_of_contact(location, contact.contact_id)
    # Which messages, not their order: both may carry the same Date second, and then their order is the ids'.
    assert sorted(m.rfc_message_id for m in stored) == sorted([synced.rfc_message_id, via_new["message_id"]])

    send = stack.outbound.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("send"),
            location_id=location,
            user_id=user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=contact_address)],
            subject="From my new address",
            text_body="Hello",
        )
    ).send
    assert send.state == SENT and send.mailbox_email == new_mailbox
    assert "SENT" in stack.gmail_message(new_mailbox, send.gmail_message_id)["labelIds"]
    assert not any(m["subject"] == "From my new address" for m in stack.sandbox.messages(old_mailbox))


def test_scenario_12_R11_disconnect_in_one_of_two_locations(stack: E2EStack) -> None:
    location_a, location_b = stack.new_id("loc-a"), stack.new_id("loc-b")
    user_id, mailbox = connected_user(stack, location_a, location_b)
    contact_address = stack.new_address("ned", "outside.test")
    in_a = stack.upsert_contact(location_a, contact_address, assigned_user_id=user_id)
    in_b = stack.upsert_contact(location_b, contact_address, assigned_user_id=user_id)
    before = stack.deliver(mailbox, contact_address, "Before", "Synced into both")
    stack.wait_for_message(location_a, in_a.contact_id, rfc_message_id=before["message_id"])
    stack.wait_for_message(location_b, in_b.contact_id, rfc_message_id=before["message_id"])

    disconnected = stack.auth.Disconnect(
        auth_pb2.DisconnectRequest(request_id=stack.new_id("req"), location_id=location_a, user_id=user_id)
    )

    assert disconnected.connection.state == common_pb2.CONNECTION_STATE_DISCONNECTED
    assert not disconnected.grant_revoked
    after = stack.deliver(mailbox, contact_address, "After", "Only B")
    stack.wait_for_message(location_b, in_b.contact_id, rfc_message_id=after["message_id"])
    decision = stack.wait_for_decision(location_a, after["message_id"])
    assert not decision.synced and decision.rule_id == "R11"
    assert [m.rfc_message_id for m in stack.messages_of_contact(location_a, in_a.contact_id)] == [
        before["message_id"]
    ]


def test_scenario_13_R12_password_change_needs_reauth_and_mail_meanwhile_syncs_once_after(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user = stack.create_user([location])
    mailbox = stack.new_address("user")
    # Access tokens of this grant expire within auth's refresh margin, so the next Gmail call refreshes
    # (the sandbox keeps access tokens valid after a password change until they expire, as Google does).
    stack.sandbox.settings(access_token_lifetime_s=5)
    try:
        stack.connect_gmail(user.user_id, location, mailbox)
        contact_address = stack.new_address("olga", "outside.test")
        contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)
        before = stack.deliver(mailbox, contact_address, "Before", "Synced before the password change")
        stack.wait_for_message(location, contact.contact_id, rfc_message_id=before["message_id"])

        stack.sandbox.change_password(mailbox, "a-new-password")
        meanwhile = stack.deliver(mailbox, contact_address, "Meanwhile", "Arrived while the grant was dead")

        paused = stack.wait_for_connection(
            user.user_id, location, common_pb2.CONNECTION_STATE_REAUTH_REQUIRED
        )
    finally:
        stack.sandbox.settings(access_token_lifetime_s=3599)
    assert paused.reconnect_required
    assert stack.sync_state(location, paused.mailbox_id) == ingest_pb2.MAILBOX_SYNC_STATE_PAUSED_REAUTH
    assert stack.messages_of_contact(location, contact.contact_id)[-1].rfc_message_id == before["message_id"]

    stack.connect_gmail(user.user_id, location, mailbox)

    stack.wait_for_message(location, contact.contact_id, rfc_message_id=meanwhile["message_id"])
    after = stack.deliver(mailbox, contact_address, "After", "Synced after reconnecting")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=after["message_id"])
    stored = [m.rfc_message_id for m in stack.messages_of_contact(location, contact.contact_id)]
    assert sorted(stored) == sorted([before["message_id"], meanwhile["message_id"], after["message_id"]])


def test_scenario_14_R5_forward_from_gmail_to_a_contact_is_logged_under_that_contact(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    _user_id, mailbox = connected_user(stack, location)
    stranger = stack.new_address("vendor", "elsewhere.test")
    original = stack.deliver(mailbox, stranger, "Price list", "Our prices for 2027")
    contact_address = stack.new_address("pia", "outside.test")
    contact = stack.upsert_contact(location, contact_address)
    assert not stack.wait_for_decision(location, original["message_id"]).synced

    forward = sent_from_gmail(
        stack,
        mailbox,
        to=[contact_address],
        subject="Fwd: Price list",
        body="See below\n\n---------- Forwarded message ---------\nOur prices for 2027",
    )

    message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=forward["message_id"])
    assert message.direction == OUTBOUND and message.rule_id == "R5"
    assert "Our prices for 2027" in message.text_body
    assert stack.decision_if_any(location, original["message_id"]).synced is False


def individual_send(stack: E2EStack, location: str, user_id: str, to: str, subject: str) -> Any:
    return outbound_pb2.SendEmailRequest(
        request_id=stack.new_id("send"),
        location_id=location,
        user_id=user_id,
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        to=[common_pb2.EmailAddress(email=to)],
        subject=subject,
        text_body="Hello",
    )


def test_scenario_15_R13_R14_send_over_the_limit_fails_across_replicas_and_bulk_still_goes_out(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user = stack.create_user([location])
    # A consumer account (gmail.com), whose limit is the default one, not Google Workspace's.
    mailbox = stack.new_address("user", "gmail.com")
    stack.connect_gmail(user.user_id, location, mailbox)
    user_id = user.user_id
    contact_address = stack.new_address("quinn", "outside.test")
    stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    limit = E2E_DAILY_SEND_LIMIT
    replicas = [stack.outbound, stack.outbound_replica]

    for number in range(limit):
        sent = replicas[number % 2].SendEmail(
            individual_send(stack, location, user_id, contact_address, f"#{number}")
        )
        assert sent.send.state == SENT

    for replica in replicas:
        with pytest.raises(grpc.RpcError) as refused:
            replica.SendEmail(individual_send(stack, location, user_id, contact_address, "one too many"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "may not send until" in refused.value.details()
    assert stack.sandbox.mailbox(mailbox)["sent_last_24h"] == limit
    assert not any(m["subject"] == "one too many" for m in stack.sandbox.messages(mailbox))
    quota = stack.outbound.GetQuota(outbound_pb2.GetQuotaRequest(location_id=location, user_id=user_id))
    assert (quota.daily_limit, quota.used, quota.remaining) == (limit, limit, 0)

    subject = stack.new_id("newsletter")
    bulk = stack.outbound_replica.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("send"),
            location_id=location,
            user_id=user_id,
            kind=common_pb2.SEND_KIND_BULK,
            to=[common_pb2.EmailAddress(email=contact_address)],
            subject=subject,
            text_body="Our spring offers",
        )
    ).send
    assert bulk.state == SENT
    delivered = eventually(lambda: [m for m in stack.smtp.received if subject.encode() in m.content])
    assert delivered[0].rcpt_tos == (contact_address,)
    assert stack.sandbox.mailbox(mailbox)["sent_last_24h"] == limit


def test_scenario_16_R14_a_26_mb_attachment_is_refused_before_anything_is_sent(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("rita", "outside.test")
    stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    chunk = b"\x00" * (1024 * 1024)

    def upload() -> Iterator[outbound_pb2.UploadAttachmentRequest]:
        yield outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                request_id=stack.new_id("upload"), location_id=location, filename="big.bin"
            )
        )
        for _ in range(26):
            yield outbound_pb2.UploadAttachmentRequest(chunk=chunk)

    with pytest.raises(grpc.RpcError) as refused:
        stack.outbound.UploadAttachment(upload())

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in refused.value.details()
    assert stack.sandbox.mailbox(mailbox)["sent_last_24h"] == 0
    assert stack.sandbox.outbox(contact_address) == []
    quota = stack.outbound.GetQuota(outbound_pb2.GetQuotaRequest(location_id=location, user_id=user_id))
    assert quota.used == 0


def test_scenario_17_R1_mail_from_before_the_connection_is_never_imported_even_after_a_history_gap(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user = stack.create_user([location])
    mailbox = stack.new_address("user")
    stack.ensure_mailbox(mailbox)
    contact_address = stack.new_address("sam", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)
    past = stack.deliver(mailbox, contact_address, "From the past", "Arrived before the connection")
    connection = stack.connect_gmail(user.user_id, location, mailbox)
    first = stack.deliver(mailbox, contact_address, "First", "After the connection")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=first["message_id"])

    # Gmail forgets the history the sync's cursor points into: the next pass gets a 404 and must resync.
    stack.sandbox.expire_history(mailbox, int(stack.sandbox.mailbox(mailbox)["historyId"]) + 1)
    assert int(stack.sandbox.mailbox(mailbox)["history_floor"]) > connection.start_history_id
    after_gap = stack.deliver(mailbox, contact_address, "After the gap", "Found by the resync")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=after_gap["message_id"])
    resync = stack.ingest.ResyncMailbox(
        ingest_pb2.ResyncMailboxRequest(
            request_id=stack.new_id("req"), location_id=location, mailbox_id=connection.mailbox_id
        )
    )
    assert resync.queued
    after_resync = stack.deliver(mailbox, contact_address, "After the resync", "Still synced")
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=after_resync["message_id"])

    stored = [m.rfc_message_id for m in stack.messages_of_contact(location, contact.contact_id)]
    assert sorted(stored) == sorted(
        [first["message_id"], after_gap["message_id"], after_resync["message_id"]]
    )
    decision = stack.decision_if_any(location, past["message_id"])
    assert decision is None or (not decision.synced and decision.rule_id == "R1"), decision


def test_scenario_18_R17_trashed_and_read_in_gmail_is_recorded_and_never_deleted(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("tom", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    delivered = stack.deliver(mailbox, contact_address, "Trash me", "Read, then trashed")
    synced = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    assert synced.mailbox_copies[0].gmail_state.unread

    stack.sandbox.user_modify(mailbox, delivered["id"], remove=["UNREAD"])
    stack.sandbox.user_trash(mailbox, delivered["id"])

    def trashed_in_gmail() -> threading_pb2.Message:
        message = only(stack.messages_of_contact(location, contact.contact_id))
        copy = only(list(message.mailbox_copies))
        assert copy.gmail_message_id == delivered["id"]
        assert copy.gmail_state.trashed and not copy.gmail_state.unread, copy.gmail_state
        return message

    message = eventually(trashed_in_gmail)
    assert message.message_id == synced.message_id
    assert "Read, then trashed" in message.text_body


def files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]


def test_scenario_19_R18_R16_stranger_mail_with_attachment_leaves_only_its_explanation(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    stranger = stack.new_address("spammer", "elsewhere.test")
    body_marker = f"private-body-{uuid.uuid4().hex}"
    attachment_marker = f"private-attachment-{uuid.uuid4().hex}".encode()
    contact_address = stack.new_address("uma", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)
    control_marker = f"synced-body-{uuid.uuid4().hex}"
    subject_marker = f"Invoice attached {uuid.uuid4().hex}"

    delivered = stack.deliver(
        mailbox,
        stranger,
        subject_marker,
        body_marker,
        attachments=[
            {
                "filename": "invoice.pdf",
                "content_type": "application/pdf",
                "data_base64": base64.b64encode(attachment_marker).decode(),
            }
        ],
    )
    control = stack.deliver(mailbox, contact_address, "Synced", control_marker)

    decision = stack.wait_for_decision(location, delivered["message_id"])
    assert not decision.synced and decision.rule_id == "R2" and stranger in decision.reason
    explanation = stack.explain(location, delivered["message_id"])
    # R18: a subject is content; only ids, addresses and the reason are kept for mail that synced nowhere.
    assert explanation.subject == ""
    assert (stranger, common_pb2.PARTICIPANT_ROLE_FROM) in {
        (p.email, p.role) for p in explanation.participants
    }
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=control["message_id"])
    state = stack.runner.var_dir
    # Negative control: the scan does find the body of a message that was synced.
    assert files_containing(state, control_marker.encode())
    for needle in (
        subject_marker.encode(),
        body_marker.encode(),
        attachment_marker,
        base64.b64encode(attachment_marker),
        base64.urlsafe_b64encode(attachment_marker).rstrip(b"="),
    ):
        assert files_containing(state, needle) == [], needle


def test_scenario_9_R9_R2_bcc_drop_creates_an_assigned_contact_whose_reply_then_syncs(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    bcc_address = stack.bcc_address(location)
    stranger = stack.new_address("newlead", "elsewhere.test")
    colleague = stack.new_address("colleague", "elsewhere.test")
    assert stack.contacts(location) == []

    sent = sent_from_gmail(
        stack,
        mailbox,
        to=[stranger],
        cc=[colleague],
        bcc=[bcc_address],
        subject="Our offer",
        body="Offer inside",
    )
    stack.drop_over_smtp(
        mailbox, bcc_address, stack.stamped_by_mx(stack.outbox_raw(bcc_address), "gmail.test")
    )

    def contact_created() -> threading_pb2.Contact:
        return only(stack.contacts(location, stranger))

    contact = eventually(contact_created)
    assert contact.created_by_sync and contact.assigned_user_id == user_id
    assert stack.contacts(location, colleague) == []
    logged = stack.wait_for_message(location, contact.contact_id, rfc_message_id=sent["message_id"])
    assert logged.direction == OUTBOUND
    reply = stack.deliver(
        mailbox,
        stranger,
        "Re: Our offer",
        "Interested",
        in_reply_to=sent["message_id"],
        references=sent["message_id"],
    )
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=reply["message_id"])
    # The SENT copy also came through mailbox sync: the email is still one record (R15).
    later = stack.deliver(mailbox, stranger, "Another question", "Fresh thread, assigned contact")
    fresh = stack.wait_for_message(location, contact.contact_id, rfc_message_id=later["message_id"])
    assert fresh.rule_id == "R2"
    stored = [m.rfc_message_id for m in stack.messages_of_contact(location, contact.contact_id)]
    assert sorted(stored) == sorted([sent["message_id"], reply["message_id"], later["message_id"]])


def test_scenario_10_R9_drop_from_someone_who_is_not_a_user_creates_nothing(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    _user_id, mailbox = connected_user(stack, location)
    bcc_address = stack.bcc_address(location)
    outsider = stack.new_address("outsider", "elsewhere.test")
    target = stack.new_address("target", "elsewhere.test")
    message_id = f"<{uuid.uuid4().hex}@elsewhere.test>"
    raw = (
        f"From: {outsider}\r\nTo: {target}\r\nBcc: {bcc_address}\r\nSubject: Log me\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n\r\nHello\r\n"
    ).encode()
    # The same text claiming to come from the user, without the trusted host's authentication.
    forged = raw.replace(f"From: {outsider}".encode(), f"From: {mailbox}".encode())

    with pytest.raises(smtplib.SMTPException) as not_a_user:
        stack.drop_over_smtp(outsider, bcc_address, stack.stamped_by_mx(raw, "elsewhere.test"))
    with pytest.raises(smtplib.SMTPException) as not_authenticated:
        stack.drop_over_smtp(mailbox, bcc_address, forged)

    assert "not a user" in str(not_a_user.value)
    assert "not authenticated" in str(not_authenticated.value)

    # R16: the location sees both refusals, with ingest's reason, in ListRefusedDrops and ExplainMessage.
    def both_refusals_listed() -> list[threading_pb2.RefusedDrop]:
        listed = stack.threading.ListRefusedDrops(
            threading_pb2.ListRefusedDropsRequest(location_id=location, page_size=10)
        ).refused_drops
        assert len(listed) == 2, listed
        return list(listed)

    refused = eventually(both_refusals_listed)
    assert {drop.rfc_message_id for drop in refused} == {message_id}
    reasons = sorted(drop.reason for drop in refused)
    assert "sender_not_a_user" in reasons[0] + reasons[1] and "not_authenticated" in reasons[0] + reasons[1]
    assert all(drop.reason.startswith("BCC drop refused: ") for drop in refused), reasons
    [from_outsider] = [drop for drop in refused if "sender_not_a_user" in drop.reason]
    assert outsider in {p.email for p in from_outsider.participants}
    explained = stack.explain(location, message_id)
    assert explained.subject == ""
    assert {(d.synced, d.rule_id) for d in explained.decisions} == {(False, "R9")}
    # Nothing of it is stored as a message: no contact, no conversation, no message.
    assert stack.contacts(location) == []
    assert stack.conversations(location) == []
    assert stack.all_messages(location) == []
