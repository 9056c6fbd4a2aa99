"""The end-to-end scenarios of sync-rules.md, each driven through the services' public gRPC APIs, the Gmail
sandbox's admin API (the outside world and the user's own Gmail UI) and SMTP, against real processes.

Negative outcomes ("nothing synced") are observed only after the sync has decided (ExplainMessage, R16) or after a
later message of the same mailbox has synced, so they never pass just because the sync had not got there yet.
"""

from __future__ import annotations

from typing import Any

from mailsync.v1 import common_pb2, outbound_pb2, threading_pb2
from tests.fixtures.stack import E2EStack, eventually

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


def test_scenario_2_R2_R16_contact_not_assigned_to_the_user_is_not_synced_and_explained(stack: E2EStack) -> None:
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
        (stored,) = [m for m in stack.messages_of_contact(location, contact.contact_id) if m.send_id]
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
