"""Publishing with Nats-Msg-Id against a real nats-server: a repeated id is stored once and reported duplicate."""

from __future__ import annotations

from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.jetstream import MSG_ID_HEADER, is_duplicate, publish
from services.runtime.streams import MESSAGES, declare_streams


async def test_publish_with_a_repeated_msg_id_is_stored_once_and_acked_as_duplicate(
    jetstream: JetStreamContext,
) -> None:
    await declare_streams(jetstream)
    subject = subjects.normalized("mbx-1")
    first = await publish(
        jetstream, subject, events_pb2.NormalizedMessage(subject="first"), msg_id="mbx-1:g1"
    )
    again = await publish(
        jetstream, subject, events_pb2.NormalizedMessage(subject="second"), msg_id="mbx-1:g1"
    )
    other = await publish(
        jetstream, subject, events_pb2.NormalizedMessage(subject="third"), msg_id="mbx-1:g2"
    )

    assert not is_duplicate(first)
    assert is_duplicate(again)
    assert again.seq == first.seq
    assert not is_duplicate(other)
    assert (await jetstream.stream_info(MESSAGES.name)).state.messages == 2
    stored = await jetstream.get_msg(MESSAGES.name, first.seq)
    assert stored.headers is not None and stored.headers[MSG_ID_HEADER] == "mbx-1:g1"
    kept = events_pb2.NormalizedMessage()
    kept.ParseFromString(stored.data)
    assert kept.subject == "first"
