"""The threading store on real SQLite and PostgreSQL: idempotent placement, one thread per key under concurrency,
replies before parents, CRM sends and their echoes, contact versions, Gmail state, and privacy of unsynced mail."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from services.runtime.clock import FrozenClock
from services.threading.domain.model import (
    BccDrop,
    ConnectionState,
    Direction,
    Outcome,
    Source,
)
from services.threading.store.contacts import (
    ContactEmail,
    ContactRecord,
    delete_contact,
    get_contact,
    list_contacts,
    upsert_contact,
)
from services.threading.store.models import (
    ContactRow,
    ConversationRow,
    DecisionRow,
    MailboxCopyRow,
    MessageRfcIdRow,
    MessageRow,
    SeenMessageRow,
    SyncedFeedRow,
    ThreadMessageRow,
    ThreadRow,
)
from services.threading.store.reads import get_message
from services.threading.store.values import CrmSendInput, MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import T0, at, connection, message, people

CONTENT = MessageContent(subject="Hello", text_body="the body", html_body="<p>the body</p>")


async def add_contact(
    db,
    contact_id: str,
    email: str,
    *,
    location: str = "loc-a",
    assigned: str = "user-1",
    created: int = 0,
    version: int = 1,
) -> bool:
    async with db.write() as session:
        return await upsert_contact(
            session,
            ContactRecord(
                contact_id,
                location,
                contact_id,
                (ContactEmail(email, True),),
                assigned,
                at(created),
                version,
                False,
            ),
            now=T0,
        )


async def count(db, model, *where) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def sync_of(db) -> MessageSync:
    return MessageSync(db, clock=FrozenClock(at(60)))


async def test_R2_inbound_message_lands_once_however_often_it_is_delivered(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    for _ in range(3):
        decision = await sync.apply_message(message(), CONTENT)
        assert decision.outcome is Outcome.DECIDED
    assert await count(threading_db, MessageRow) == 1
    assert await count(threading_db, ConversationRow) == 1
    assert await count(threading_db, ThreadRow) == 1
    assert await count(threading_db, SyncedFeedRow) == 1
    async with threading_db.read() as session:
        conversation = (await session.execute(select(ConversationRow))).scalar_one()
        stored = (await session.execute(select(MessageRow))).scalar_one()
        feed = (await session.execute(select(SyncedFeedRow))).scalar_one()
    assert (conversation.contact_id, conversation.message_count, conversation.thread_count) == (
        "c-carol",
        1,
        1,
    )
    assert (stored.rule_id, stored.text_body) == ("R2", "the body")
    assert (feed.seq, feed.message_id) == (1, stored.message_id)


async def test_R15_same_email_in_a_second_mailbox_is_one_message_linked_to_both(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    await sync.apply_message(message(), CONTENT)
    second = message(
        mailbox="mbx-2",
        gmail_id="g-77",
        gmail_thread="gt-77",
        connections=(connection(user="user-2", connection_id="conn-2"),),
    )
    decision = await sync.apply_message(second, CONTENT)
    assert [d.rule_id for d in decision.decisions] == ["R15"]
    assert await count(threading_db, MessageRow) == 1
    assert await count(threading_db, MailboxCopyRow) == 2
    assert await count(threading_db, ThreadMessageRow) == 1


async def test_R18_unsynced_message_keeps_no_body_only_the_explanation(threading_db) -> None:
    sync = sync_of(threading_db)
    secret = MessageContent(subject="Invoice", text_body="SECRET-BODY", html_body="<b>SECRET-BODY</b>")
    await sync.apply_message(message(frm="stranger@example.com"), secret)
    assert await count(threading_db, MessageRow) == 0
    async with threading_db.read() as session:
        seen = (await session.execute(select(SeenMessageRow))).scalar_one()
        reason = (await session.execute(select(DecisionRow))).scalar_one()
    assert "SECRET-BODY" not in repr(seen.__dict__)
    assert (reason.synced, reason.rule_id) == (False, "R2")


async def test_R4_reply_processed_before_its_parent_ends_in_one_thread(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    reply = message(
        rfc="<reply@x>", gmail_id="g-2", in_reply_to=("<parent@x>",), references=("<parent@x>",), minute=20
    )
    waited = await sync.apply_message(reply, CONTENT)
    assert waited.outcome is Outcome.WAIT_FOR_PARENT
    assert await count(threading_db, MessageRow) == 0
    await sync.apply_message(reply, CONTENT, may_wait=False)
    parent = message(
        rfc="<parent@x>",
        gmail_id="g-1",
        frm="user@gmail.com",
        to="carol@example.com",
        direction=Direction.OUTBOUND,
        minute=10,
    )
    decision = await sync.apply_message(parent, CONTENT)
    assert [d.rule_id for d in decision.decisions] == ["R4"]
    assert await count(threading_db, ThreadRow) == 1
    assert await count(threading_db, ConversationRow) == 1
    assert await count(threading_db, ThreadMessageRow) == 2


async def test_R4_drop_reply_before_parent_joins_by_message_id_chain(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    drop = BccDrop("drop-2", "loc-a", "user-1", "d2")
    reply = message(
        rfc="<r@x>",
        frm="user@gmail.com",
        to="carol@example.com",
        direction=Direction.OUTBOUND,
        source=Source.BCC_DROP,
        drop=drop,
        connections=(),
        in_reply_to=("<p@x>",),
        gmail_thread="",
    )
    await sync.apply_message(reply, CONTENT, may_wait=False)
    parent = message(rfc="<p@x>", gmail_id="g-p", gmail_thread="gt-p")
    decision = await sync.apply_message(parent, CONTENT)
    assert [d.rule_id for d in decision.decisions] == ["R4"]
    assert await count(threading_db, ThreadRow) == 1
    assert await count(threading_db, ThreadMessageRow) == 2


async def test_concurrent_replicas_never_create_two_threads_or_conversations(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    await add_contact(threading_db, "c-dave", "dave@example.com", created=1)
    sync_a, sync_b = sync_of(threading_db), sync_of(threading_db)
    # Two messages of one Gmail thread with different counterparts, decided at the same time.
    inbound = message(rfc="<in@x>", gmail_id="g-1")
    outbound = message(
        rfc="<out@x>",
        gmail_id="g-2",
        frm="user@gmail.com",
        to="dave@example.com",
        direction=Direction.OUTBOUND,
    )
    for _ in range(3):
        await asyncio.gather(
            sync_a.apply_message(inbound, CONTENT, may_wait=False),
            sync_b.apply_message(outbound, CONTENT, may_wait=False),
            sync_b.apply_message(inbound, CONTENT, may_wait=False),
        )
    assert await count(threading_db, ThreadRow) == 1
    assert await count(threading_db, MessageRow) == 2
    async with threading_db.read() as session:
        conversations = set((await session.execute(select(MessageRow.conversation_id))).scalars())
        populated = await session.scalar(
            select(func.count()).select_from(ConversationRow).where(ConversationRow.message_count > 0)
        )
    assert len(conversations) == 1 and populated == 1


async def test_concurrent_deliveries_of_one_message_store_it_once(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    syncs = [sync_of(threading_db) for _ in range(4)]
    await asyncio.gather(*(s.apply_message(message(), CONTENT) for s in syncs))
    assert await count(threading_db, MessageRow) == 1
    assert await count(threading_db, SyncedFeedRow) == 1


def crm_send(**kwargs) -> CrmSendInput:
    values = dict(
        send_id="s-1",
        location_id="loc-a",
        mailbox_id="mbx-1",
        user_id="user-1",
        rfc_message_id="<ours@crm>",
        participants=people(to="carol@example.com", **{"from": "user@gmail.com"}),
        create_time=at(30),
    )
    values.update(kwargs)
    return CrmSendInput(**values)


async def test_R6_echo_before_sent_is_linked_not_stored_twice_and_replies_stay_in_location(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    await add_contact(threading_db, "c-carol-b", "carol@example.com", location="loc-b")
    sync = sync_of(threading_db)
    both = (connection("loc-a"), connection("loc-b"))
    await sync.apply_pending_send(crm_send(), CONTENT)
    assert await count(threading_db, MessageRow) == 1
    # Gmail replaced the Message-ID, and the echo overtakes the send's answer: it waits, then is recognised.
    echo = message(
        rfc="<replaced@mail.gmail.com>",
        gmail_id="g-sent",
        gmail_thread="gt-sent",
        minute=31,
        frm="user@gmail.com",
        to="carol@example.com",
        direction=Direction.OUTBOUND,
        labels=frozenset({"SENT"}),
        connections=both,
    )
    assert (await sync.apply_message(echo, CONTENT)).outcome is Outcome.WAIT_FOR_SEND
    await sync.apply_sent(
        crm_send(),
        CONTENT,
        gmail_message_id="g-sent",
        gmail_thread_id="gt-sent",
        final_rfc_message_id="<replaced@mail.gmail.com>",
    )
    decision = await sync.apply_message(echo, CONTENT)
    assert decision.echo is not None and not decision.placements
    assert await count(threading_db, MessageRow) == 1
    reply = message(
        rfc="<carol-reply@x>",
        gmail_id="g-r",
        gmail_thread="gt-sent",
        minute=40,
        connections=both,
        in_reply_to=("<replaced@mail.gmail.com>",),
    )
    decision = await sync.apply_message(reply, CONTENT)
    assert {d.location_id: (d.synced, d.rule_id) for d in decision.decisions} == {
        "loc-a": (True, "R4"),
        "loc-b": (False, "R4"),
    }
    async with threading_db.read() as session:
        locations = set((await session.execute(select(MessageRow.location_id))).scalars())
        pending = (
            await session.execute(select(MessageRow.send_pending).where(MessageRow.send_id == "s-1"))
        ).scalar()
    assert locations == {"loc-a"} and pending is False


async def test_R6_echo_arriving_after_sent_is_recognised_by_gmail_id(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    await sync.apply_sent(
        crm_send(),
        CONTENT,
        gmail_message_id="g-sent",
        gmail_thread_id="gt-sent",
        final_rfc_message_id="<other@gmail>",
    )
    echo = message(
        rfc="<other@gmail>",
        gmail_id="g-sent",
        gmail_thread="gt-sent",
        minute=31,
        frm="user@gmail.com",
        to="carol@example.com",
        direction=Direction.OUTBOUND,
    )
    decision = await sync.apply_message(echo, CONTENT)
    assert decision.echo is not None
    assert await count(threading_db, MessageRow) == 1


async def test_R15_crm_send_whose_id_gmail_replaced_is_one_message_when_a_second_mailbox_receives_it(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    # user-1 sends from the CRM to Carol with a colleague in Cc whose mailbox is connected to the same location.
    send = crm_send(
        participants=people(to="carol@example.com", cc="colleague@crm.example", **{"from": "user@gmail.com"})
    )
    await sync.apply_pending_send(send, CONTENT)
    await sync.apply_sent(
        send,
        CONTENT,
        gmail_message_id="g-sent",
        gmail_thread_id="gt-sent",
        final_rfc_message_id="<replaced@mail.gmail.com>",
    )
    received = message(
        rfc="<replaced@mail.gmail.com>",
        mailbox="mbx-2",
        gmail_id="g-colleague",
        gmail_thread="gt-colleague",
        minute=31,
        frm="user@gmail.com",
        to="carol@example.com",
        cc=["colleague@crm.example"],
        connections=(connection(user="user-2", connection_id="conn-2"),),
    )
    decision = await sync.apply_message(received, CONTENT)
    assert [d.rule_id for d in decision.decisions] == ["R15"]
    assert await count(threading_db, MessageRow) == 1
    assert await count(threading_db, ThreadMessageRow) == 1
    async with threading_db.read() as session:
        stored = (await session.execute(select(MessageRow))).scalar_one()
        keys = dict(
            (await session.execute(select(MessageRfcIdRow.rfc_message_id, MessageRfcIdRow.message_id))).all()
        )
        copies = set(
            (await session.execute(select(MailboxCopyRow.mailbox_id, MailboxCopyRow.message_id))).all()
        )
        view = await get_message(session, "loc-a", stored.message_id)
    assert keys == {"<ours@crm>": stored.message_id, "<replaced@mail.gmail.com>": stored.message_id}
    assert copies == {("mbx-1", stored.message_id), ("mbx-2", stored.message_id)}
    assert view is not None and view.rfc_message_id == "<replaced@mail.gmail.com>"


async def test_R9_drop_creates_contact_once_and_R2_then_syncs_its_reply(threading_db) -> None:
    sync = sync_of(threading_db)
    drop = message(
        rfc="<drop@x>",
        frm="user@gmail.com",
        to=["New@Example.com"],
        cc=["cc@example.com"],
        direction=Direction.OUTBOUND,
        source=Source.BCC_DROP,
        drop=BccDrop("drop-1", "loc-a", "user-1", "digest"),
        connections=(),
    )
    for _ in range(2):
        await sync.apply_message(drop, CONTENT)
    async with threading_db.read() as session:
        contacts = (await session.execute(select(ContactRow))).scalars().all()
    assert [(c.assigned_user_id, c.created_by_sync) for c in contacts] == [("user-1", True)]
    reply = message(rfc="<reply@x>", frm="new@example.com", gmail_thread="gt-9", minute=50)
    decision = await sync.apply_message(reply, CONTENT)
    assert [(d.synced, d.rule_id) for d in decision.decisions] == [(True, "R2")]


async def test_R17_trash_in_gmail_is_recorded_and_nothing_is_deleted(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    await sync.apply_message(message(labels=frozenset({"INBOX", "UNREAD"})), CONTENT)
    changed = await sync.apply_gmail_change(
        mailbox_id="mbx-1",
        gmail_message_id="g-1",
        history_id=500,
        labels_added=("TRASH",),
        labels_removed=("UNREAD", "INBOX"),
    )
    assert changed == 1
    stale = await sync.apply_gmail_change(
        mailbox_id="mbx-1",
        gmail_message_id="g-1",
        history_id=400,
        labels_added=("INBOX",),
        labels_removed=("TRASH",),
    )
    assert stale == 0
    async with threading_db.read() as session:
        copy = (await session.execute(select(MailboxCopyRow))).scalar_one()
    assert (copy.trashed, copy.unread) == (True, False)
    assert await count(threading_db, MessageRow) == 1


async def test_R10_after_replacement_nothing_new_syncs(threading_db) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    await sync.apply_message(message(minute=10), CONTENT)
    replaced = (connection(state=ConnectionState.REPLACED, changed=20),)
    reply = message(rfc="<late@x>", gmail_id="g-9", minute=30, connections=replaced)
    decision = await sync.apply_message(reply, CONTENT)
    assert [(d.synced, d.rule_id) for d in decision.decisions] == [(False, "R10")]
    assert await count(threading_db, MessageRow) == 1


async def test_contact_versions_stale_upsert_and_stale_delete_are_ignored(threading_db) -> None:
    assert await add_contact(threading_db, "c-1", "one@example.com", version=5)
    assert not await add_contact(threading_db, "c-1", "old@example.com", version=4)
    async with threading_db.write() as session:
        assert not await delete_contact(session, "loc-a", "c-1", 3, now=T0)
        assert await delete_contact(session, "loc-a", "c-1", 6, now=T0)
    assert not await add_contact(threading_db, "c-1", "stale@example.com", version=6)
    assert await add_contact(threading_db, "c-1", "back@example.com", version=7)
    async with threading_db.read() as session:
        record = await get_contact(session, "loc-a", "c-1")
        listed = await list_contacts(session, "loc-a", email="BACK@example.com", limit=10, after=None)
    assert record is not None and [e.email for e in record.emails] == ["back@example.com"]
    assert [c.contact_id for c in listed] == ["c-1"]


async def test_delete_before_first_upsert_blocks_the_stale_upsert(threading_db) -> None:
    async with threading_db.write() as session:
        assert await delete_contact(session, "loc-a", "c-9", 4, now=T0)
    assert not await add_contact(threading_db, "c-9", "x@example.com", version=3)
    async with threading_db.read() as session:
        assert await list_contacts(session, "loc-a", limit=10, after=None) == []


async def test_R15_same_email_by_sync_drop_and_second_mailbox_is_one_message_in_one_thread(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    sync = sync_of(threading_db)
    sent = dict(frm="user@gmail.com", to="carol@example.com", direction=Direction.OUTBOUND, rfc="<once@x>")
    drop = message(
        **sent, source=Source.BCC_DROP, drop=BccDrop("drop-1", "loc-a", "user-1", "dg"), connections=()
    )
    in_first = message(**sent, gmail_id="g-1", gmail_thread="gt-1")
    in_second = message(
        **sent,
        mailbox="mbx-2",
        gmail_id="g-2",
        gmail_thread="gt-2",
        connections=(connection(user="user-2", connection_id="conn-2"),),
    )
    for copy in (drop, in_first, in_second, drop):
        await sync.apply_message(copy, CONTENT)
    assert await count(threading_db, MessageRow) == 1
    assert await count(threading_db, ThreadRow) == 1
    assert await count(threading_db, MailboxCopyRow) == 2
    async with threading_db.read() as session:
        conversation = (await session.execute(select(ConversationRow))).scalar_one()
    assert (conversation.message_count, conversation.thread_count) == (1, 1)
