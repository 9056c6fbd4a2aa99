"""NATS span names carry the kind of event only; the partition key goes into an attribute (bounded names)."""

from __future__ import annotations

import pytest

from services.runtime import subjects


@pytest.mark.parametrize(
    ("subject", "kind", "attributes"),
    [
        (subjects.mailbox_changed("mbx-1"), "mailbox.changed", {"mailsync.mailbox_id": "mbx-1"}),
        (subjects.normalized("drop-loc-9"), "message.normalized", {"mailsync.mailbox_id": "drop-loc-9"}),
        (subjects.connection("connected", "mbx-2"), "connection.connected", {"mailsync.mailbox_id": "mbx-2"}),
        (subjects.contact_created("loc-3"), "contact.created", {"mailsync.location_id": "loc-3"}),
        (subjects.message_synced("loc-4"), "message.synced", {"mailsync.location_id": "loc-4"}),
        ("other.subject", "other.subject", {}),
    ],
)
def test_kind_and_key_of_a_subject(subject: str, kind: str, attributes: dict[str, str]) -> None:
    assert subjects.kind_of(subject) == kind
    assert subjects.key_attributes(subject) == attributes
