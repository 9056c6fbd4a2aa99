"""The threading consumers against a real nats-server and a real database: redeliveries and duplicate paths are
stored once, a reply published before its parent joins the parent's thread, a CRM send's echo is not stored twice,
and `message.synced` leaves through the outbox exactly once per placed message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from mailsync.v1 import common_pb2, events_pb2
from services.runtime import subjects
from services.runtime.clock import FrozenClock
from services.runtime.consumer import BatchConsumer
from services.runtime.jetstream import publish
from services.runtime.outbox import OutboxRelay
from services.runtime.streams import CONTACTS, SYNCED, declare_streams
from services.threading.codec import to_timestamp
from services.threading.consumers import (
    ThreadingHandlers,
    WaitPolicy,
    message_consumer_spec,
    outbox_events,
    send_consumer_spec,
)
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import DecisionRow, MailboxCopyRow, MessageRow, ThreadRow
from services.threading.sync import MessageSync
from tests.fixtures.messaging import eventually
from tests.fixtures.threading_messages import T0, at

CONNECTED = common_pb2.ConnectionSnapshot(
    connection_id="conn-a",
    user_id="user-1",
    location_id="loc-a",
    state=common_pb2.CONNECTION_STATE_CONNECTED,
    start_time=to_timestamp(T0),
)


def person(email: str, role: int, position: int = 0) -> common_pb2.Participant:
    return common_pb2.Participant(email=email, role=role, position=position)


def normalized(
    gmail_id: str,
    rfc: str,
    *,
    frm: str = "carol@example.com",
    to: str = "user@gmail.com",
    outbound: bool = False,
    in_reply_to: tuple[str, ...] = (),
    gmail_thread: str = "gt-1",
    minute: int = 10,
) -> events_pb2.NormalizedMessage:
    return events_pb2.NormalizedMessage(
        mailbox_id="mbx-1",
        mailbox_email="user@gmail.com",
        gmail_message_id=gmail_id,
        gmail_thread_id=gmail_thread,
        rfc_message_id=rfc,
        in_reply_to=list(in_reply_to),
        references=list(in_reply_to),
        direction=common_pb2.DIRECTION_OUTBOUND if outbound else common_pb2.DIRECTION_INBOUND,
        label_ids=["SENT"] if outbound else ["INBOX", "UNREAD"],
        participants=[
            person(frm, common_pb2.PARTICIPANT_ROLE_FROM),
            person(to, common_pb2.PARTICIPANT_ROLE_TO),
        ],
        subject="Hello",
        text_body="body",
        internal_time=to_timestamp(at(minute)),
        source=common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
        connections=[CONNECTED],
    )


@pytest.fixture
async def threading_consumers(threading_db, nats_client, jetstream) -> AsyncIterator[object]:
    await declare_streams(jetstream)
    async with threading_db.write() as session:
        await upsert_contact(
            session,
            ContactRecord(
                "c-carol",
                "loc-a",
                "Carol",
                (ContactEmail("carol@example.com", True),),
                "user-1",
                T0,
                1,
                False,
            ),
            now=T0,
        )
    clock = FrozenClock(at(100))
    policy = WaitPolicy(budget=3, delay_seconds=0.2)
    handlers = ThreadingHandlers(
        MessageSync(threading_db, clock=clock, events=outbox_events(clock)), policy=policy, clock=clock
    )
    runners = [
        BatchConsumer(
            nats_client,
            message_consumer_spec(policy),
            handlers.handle_message_batch,
            db=threading_db,
            fetch_timeout=0.2,
        ),
        BatchConsumer(
            nats_client,
            send_consumer_spec(policy),
            handlers.handle_send_batch,
            db=threading_db,
            fetch_timeout=0.2,
        ),
    ]
    relay = OutboxRelay(threading_db, jetstream, poll_interval=0.2)
    tasks = [asyncio.create_task(r.run()) for r in runners] + [asyncio.create_task(relay.run())]
    yield threading_db
    for runner in runners:
        runner.stop()
    relay.stop()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)


async def count(db, model, *where) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def synced_events(jetstream) -> int:
    info = await jetstream.stream_info(SYNCED.name)
    return int(info.state.messages)


async def test_R15_message_published_three_times_is_stored_once_and_announced_once(
    threading_consumers, jetstream
) -> None:
    db = threading_consumers
    event = normalized("g-1", "<m1@x>")
    for attempt in range(3):
        await publish(jetstream, subjects.normalized("mbx-1"), event, msg_id=f"mbx-1:g-1:{attempt}")

    async def announced() -> bool:
        return await synced_events(jetstream) >= 1

    await eventually(announced)
    await asyncio.sleep(1.0)
    assert await count(db, MessageRow) == 1
    assert await synced_events(jetstream) == 1


async def test_R4_reply_published_before_its_parent_joins_the_same_thread(
    threading_consumers, jetstream
) -> None:
    db = threading_consumers
    reply = normalized("g-2", "<reply@x>", in_reply_to=("<parent@x>",), minute=20)
    parent = normalized("g-1", "<parent@x>", frm="user@gmail.com", to="carol@example.com", outbound=True)
    await publish(jetstream, subjects.normalized("mbx-1"), reply, msg_id="mbx-1:g-2")
    await asyncio.sleep(0.3)
    await publish(jetstream, subjects.normalized("mbx-1"), parent, msg_id="mbx-1:g-1")

    async def both_stored() -> bool:
        return await count(db, MessageRow) == 2

    await eventually(both_stored)
    assert await count(db, ThreadRow) == 1
    async with db.read() as session:
        rules = dict((await session.execute(select(MessageRow.rfc_message_id, MessageRow.rule_id))).all())
    assert rules == {"<parent@x>": "R5", "<reply@x>": "R4"}


async def test_R6_echo_overtaking_sent_is_stored_once(threading_consumers, jetstream) -> None:
    db = threading_consumers
    pending = events_pb2.PendingSend(
        send_id="s-1",
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        location_id="loc-a",
        user_id="user-1",
        mailbox_id="mbx-1",
        rfc_message_id="<ours@crm>",
        participants=[
            person("user@gmail.com", common_pb2.PARTICIPANT_ROLE_FROM),
            person("carol@example.com", common_pb2.PARTICIPANT_ROLE_TO),
        ],
        subject="From the CRM",
        text_body="hi",
        create_time=to_timestamp(at(30)),
    )
    await publish(jetstream, subjects.send_pending("mbx-1"), pending, msg_id="pending:s-1")

    async def recorded() -> bool:
        return await count(db, MessageRow) == 1

    await eventually(recorded)
    echo = normalized(
        "g-sent",
        "<gmail-made@mail.gmail.com>",
        frm="user@gmail.com",
        to="carol@example.com",
        outbound=True,
        gmail_thread="gt-sent",
        minute=31,
    )
    await publish(jetstream, subjects.normalized("mbx-1"), echo, msg_id="mbx-1:g-sent")
    await asyncio.sleep(0.3)
    sent = events_pb2.SentMessage(
        send=pending,
        gmail_message_id="g-sent",
        gmail_thread_id="gt-sent",
        final_rfc_message_id="<gmail-made@mail.gmail.com>",
    )
    await publish(jetstream, subjects.send_sent("mbx-1"), sent, msg_id="sent:s-1")

    async def echo_decided() -> bool:
        return await count(db, DecisionRow, DecisionRow.seen_key == "gmail:mbx-1:g-sent") == 1

    await eventually(echo_decided)
    assert await count(db, MessageRow) == 1
    async with db.read() as session:
        rule = await session.scalar(
            select(DecisionRow.rule_id).where(DecisionRow.seen_key == "gmail:mbx-1:g-sent")
        )
    assert rule == "R6"


async def test_R17_label_change_overtaking_its_message_is_applied_once_the_message_is_stored(
    threading_consumers, jetstream
) -> None:
    db = threading_consumers
    change = events_pb2.MessageChanged(
        mailbox_id="mbx-1",
        gmail_message_id="g-1",
        history_id=900,
        kind=events_pb2.MESSAGE_CHANGE_KIND_LABELS_CHANGED,
        labels_added=["TRASH"],
        labels_removed=["UNREAD"],
    )
    await publish(jetstream, subjects.message_changed("mbx-1"), change, msg_id="mbx-1:g-1:change:900")
    await asyncio.sleep(0.3)
    await publish(jetstream, subjects.normalized("mbx-1"), normalized("g-1", "<m1@x>"), msg_id="mbx-1:g-1")

    async def trashed() -> bool:
        async with db.read() as session:
            return bool(await session.scalar(select(MailboxCopyRow.trashed)))

    await eventually(trashed)
    async with db.read() as session:
        copy = (await session.execute(select(MailboxCopyRow))).scalar_one()
    assert (copy.unread, copy.deleted) == (False, False)
    assert await count(db, MessageRow) == 1


async def test_R6_failed_send_is_marked_failed_and_no_longer_pending(threading_consumers, jetstream) -> None:
    db = threading_consumers
    pending = events_pb2.PendingSend(
        send_id="s-9",
        location_id="loc-a",
        user_id="user-1",
        mailbox_id="mbx-1",
        rfc_message_id="<never@crm>",
        participants=[person("carol@example.com", common_pb2.PARTICIPANT_ROLE_TO)],
        create_time=to_timestamp(at(30)),
    )
    await publish(jetstream, subjects.send_pending("mbx-1"), pending, msg_id="pending:s-9")
    await publish(
        jetstream,
        subjects.send_failed("mbx-1"),
        events_pb2.SendFailed(send_id="s-9", mailbox_id="mbx-1", location_id="loc-a", reason="quota"),
        msg_id="failed:s-9",
    )
    sent_from_gmail = normalized(
        "g-5",
        "<own@gmail>",
        frm="user@gmail.com",
        to="carol@example.com",
        outbound=True,
        gmail_thread="gt-5",
        minute=40,
    )
    await publish(jetstream, subjects.normalized("mbx-1"), sent_from_gmail, msg_id="mbx-1:g-5")

    async def placed_by_r5() -> bool:
        async with db.read() as session:
            rule = await session.scalar(
                select(MessageRow.rule_id).where(MessageRow.rfc_message_id == "<own@gmail>")
            )
        return rule == "R5"

    await eventually(placed_by_r5)

    async def no_longer_pending() -> bool:
        async with db.read() as session:
            pending_flag = await session.scalar(
                select(MessageRow.send_pending).where(MessageRow.send_id == "s-9")
            )
        # The send and its failure may still be on their way when the Gmail copy is placed.
        return pending_flag is False

    await eventually(no_longer_pending)


async def test_R9_drop_creates_the_contact_once_and_announces_it(threading_consumers, jetstream) -> None:
    db = threading_consumers
    drop = events_pb2.NormalizedMessage(
        rfc_message_id="<drop@x>",
        source=common_pb2.MESSAGE_SOURCE_BCC_DROP,
        direction=common_pb2.DIRECTION_OUTBOUND,
        participants=[
            person("user@gmail.com", common_pb2.PARTICIPANT_ROLE_FROM),
            person("New.Person@example.com", common_pb2.PARTICIPANT_ROLE_TO),
            person("cc-person@example.com", common_pb2.PARTICIPANT_ROLE_CC),
        ],
        internal_time=to_timestamp(at(40)),
        bcc_drop=events_pb2.BccDropInfo(
            drop_id="drop-1", location_id="loc-a", sender_user_id="user-1", content_digest="d1"
        ),
    )
    for attempt in range(2):
        await publish(jetstream, subjects.normalized("drop-loc-a"), drop, msg_id=f"drop-1:{attempt}")

    async def announced() -> bool:
        return int((await jetstream.stream_info(CONTACTS.name)).state.messages) >= 1

    await eventually(announced)
    await asyncio.sleep(0.5)
    stored = await jetstream.get_msg(CONTACTS.name, 1)
    created = events_pb2.ContactCreated.FromString(stored.data)
    assert (created.email, created.assigned_user_id) == ("new.person@example.com", "user-1")
    assert int((await jetstream.stream_info(CONTACTS.name)).state.messages) == 1
    assert await count(db, MessageRow) == 1
