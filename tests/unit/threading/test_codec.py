"""Protobuf events to the rules' values and back: what the consumers and the servicer rely on."""

from __future__ import annotations

import pytest

from mailsync.v1 import common_pb2, events_pb2
from services.threading import codec
from services.threading.domain.model import ConnectionState, Direction, Role, Source
from tests.fixtures.threading_messages import at


def test_normalized_message_becomes_the_rules_view() -> None:
    event = events_pb2.NormalizedMessage(
        mailbox_id="mbx-1",
        gmail_message_id="g-1",
        gmail_thread_id="gt-1",
        rfc_message_id=" <a@b> ",
        direction=common_pb2.DIRECTION_OUTBOUND,
        label_ids=["SENT"],
        participants=[
            common_pb2.Participant(email="u@gmail.com", role=common_pb2.PARTICIPANT_ROLE_FROM),
            common_pb2.Participant(email="x@y.z", role=common_pb2.PARTICIPANT_ROLE_BCC, position=2),
        ],
        internal_time=codec.to_timestamp(at(5)),
        connections=[
            common_pb2.ConnectionSnapshot(
                connection_id="c1",
                user_id="u1",
                location_id="loc-a",
                state=common_pb2.CONNECTION_STATE_REPLACED,
                start_time=codec.to_timestamp(at(0)),
                state_change_time=codec.to_timestamp(at(3)),
            )
        ],
    )
    message = codec.incoming_message(event)
    assert (message.direction, message.source, message.message_id) == (
        Direction.OUTBOUND,
        Source.GMAIL_SYNC,
        "<a@b>",
    )
    assert message.internal_time == at(5)
    assert [(p.role, p.position) for p in message.participants] == [(Role.FROM, 0), (Role.BCC, 2)]
    (connection,) = message.connections
    assert (connection.state, connection.state_change_time) == (ConnectionState.REPLACED, at(3))


def test_R9_drop_is_outbound_from_the_drop_location() -> None:
    event = events_pb2.NormalizedMessage(
        source=common_pb2.MESSAGE_SOURCE_BCC_DROP,
        direction=common_pb2.DIRECTION_INBOUND,
        internal_time=codec.to_timestamp(at(1)),
        bcc_drop=events_pb2.BccDropInfo(
            drop_id="d1", location_id="loc-a", sender_user_id="u1", content_digest="ab"
        ),
    )
    message = codec.incoming_message(event)
    assert message.source is Source.BCC_DROP and message.direction is Direction.OUTBOUND
    assert message.bcc_drop is not None and message.bcc_drop.location_id == "loc-a"


@pytest.mark.parametrize(
    "event",
    [
        events_pb2.NormalizedMessage(gmail_message_id="g-1", internal_time=codec.to_timestamp(at(1))),
        events_pb2.NormalizedMessage(mailbox_id="mbx-1", gmail_message_id="g-1"),
    ],
    ids=["no mailbox nor drop", "no time"],
)
def test_events_the_rules_cannot_use_are_refused(event: events_pb2.NormalizedMessage) -> None:
    with pytest.raises(codec.UndecodableEvent):
        codec.incoming_message(event)


def test_timestamps_round_trip_and_unset_stays_unset() -> None:
    assert codec.to_datetime(codec.to_timestamp(at(7))) == at(7)
    assert codec.to_datetime(codec.to_timestamp(None)) is None
