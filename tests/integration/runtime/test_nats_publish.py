"""Publishing with Nats-Msg-Id against a real nats-server: a repeated id is stored once and reported duplicate."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.jetstream import (
    MSG_ID_HEADER,
    Outgoing,
    PublishIncomplete,
    is_duplicate,
    publish,
    publish_all,
)
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


async def test_publish_all_stores_every_message_once_and_a_repeat_is_acked_as_duplicates(
    jetstream: JetStreamContext,
) -> None:
    await declare_streams(jetstream)
    batch = [
        Outgoing(
            subjects.normalized(f"mbx-{i % 3}"), events_pb2.NormalizedMessage(subject=f"m{i}"), f"id-{i}"
        )
        for i in range(120)
    ]

    first = await publish_all(jetstream, batch)
    again = await publish_all(jetstream, batch)

    assert [is_duplicate(ack) for ack in first] == [False] * 120
    assert [is_duplicate(ack) for ack in again] == [True] * 120
    # Acks come back in the order given: each one's sequence holds that very message.
    assert [ack.seq for ack in again] == [ack.seq for ack in first]
    assert (await jetstream.stream_info(MESSAGES.name)).state.messages == 120
    stored = await jetstream.get_msg(MESSAGES.name, first[57].seq)
    assert stored.headers is not None and stored.headers[MSG_ID_HEADER] == "id-57"


async def test_publish_all_reports_only_the_unacknowledged_and_a_retry_stores_just_those(
    jetstream: JetStreamContext,
) -> None:
    await jetstream.add_stream(name="PUBLISH_ALL_A", subjects=["publish-all.a.*"])
    batch = [
        Outgoing(f"publish-all.{'a' if i % 2 == 0 else 'b'}.x", events_pb2.NormalizedMessage(), f"pa-{i}")
        for i in range(10)
    ]

    # Nothing stores subject b yet: its messages are never acknowledged, whatever the number of attempts.
    with pytest.raises(PublishIncomplete) as incomplete:
        await publish_all(jetstream, batch, ack_timeout=5, attempts=2, retry_delay=0.05)
    assert sorted(incomplete.value.unacked) == sorted(f"pa-{i}" for i in range(1, 10, 2))
    assert (await jetstream.stream_info("PUBLISH_ALL_A")).state.messages == 5

    await jetstream.add_stream(name="PUBLISH_ALL_B", subjects=["publish-all.b.*"])
    acks = await publish_all(jetstream, batch)

    assert [is_duplicate(ack) for ack in acks] == [i % 2 == 0 for i in range(10)]
    assert (await jetstream.stream_info("PUBLISH_ALL_A")).state.messages == 5
    assert (await jetstream.stream_info("PUBLISH_ALL_B")).state.messages == 5
