"""The stream declarations against a real nats-server: idempotent, and the work stream coalesces per mailbox."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.jetstream import publish
from services.runtime.streams import ALL_STREAMS, WORK, declare_streams


async def test_declaring_streams_twice_keeps_one_stream_each_with_the_declared_config(
    jetstream: JetStreamContext,
) -> None:
    await declare_streams(jetstream)
    await declare_streams(jetstream)

    names = sorted(info.config.name for info in await jetstream.streams_info())
    assert names == sorted(spec.name for spec in ALL_STREAMS)
    for spec in ALL_STREAMS:
        config = (await jetstream.stream_info(spec.name)).config
        assert config.storage == StorageType.FILE
        assert config.discard == DiscardPolicy.NEW
        assert config.duplicate_window == 600
        expected = RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS
        assert config.retention == expected, spec.name


async def test_work_stream_keeps_only_the_latest_item_per_mailbox(jetstream: JetStreamContext) -> None:
    await declare_streams(jetstream)
    for history_id in (10, 11, 12):
        item = events_pb2.MailboxChanged(mailbox_id="mbx-a", history_id=history_id)
        await publish(jetstream, subjects.mailbox_changed("mbx-a"), item, msg_id=f"mbx-a:{history_id}")
    other = events_pb2.MailboxChanged(mailbox_id="mbx-b", history_id=5)
    await publish(jetstream, subjects.mailbox_changed("mbx-b"), other, msg_id="mbx-b:5")

    info = await jetstream.stream_info(WORK.name)
    assert info.state.messages == 2
    latest = await jetstream.get_last_msg(WORK.name, subjects.mailbox_changed("mbx-a"))
    parsed = events_pb2.MailboxChanged()
    parsed.ParseFromString(latest.data)
    assert parsed.history_id == 12
