"""The end-to-end scenarios of sync-rules.md, each driven through the services' public gRPC APIs, the Gmail
sandbox's admin API (the outside world and the user's own Gmail UI) and SMTP, against real processes."""

from __future__ import annotations

from mailsync.v1 import common_pb2
from tests.fixtures.stack import E2EStack, eventually


def connected_user(stack: E2EStack, *location_ids: str) -> tuple[str, str]:
    """A CRM user in `location_ids` with a fresh Gmail mailbox connected in each; (user_id, address)."""
    user = stack.create_user(list(location_ids))
    address = stack.new_address("user")
    for location_id in location_ids:
        stack.connect_gmail(user.user_id, location_id, address)
    return user.user_id, address


def test_scenario_1_R2_inbound_from_assigned_contact_lands_in_its_conversation(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    contact_address = stack.new_address("carol", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)

    delivered = stack.deliver(mailbox, contact_address, "Quote request", "Can you send a quote?")

    message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    assert message.direction == common_pb2.DIRECTION_INBOUND
    assert message.rule_id == "R2"
    assert "Can you send a quote?" in message.text_body
