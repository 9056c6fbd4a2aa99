"""Batches through the threading store on SQLite and PostgreSQL: a message that waits for something a later message
of the same batch brings is decided within the batch, as if in order; a Gmail change that overtook its message is
applied once the batch placed it; and two replicas applying overlapping batches at the same moment still make one
thread per Gmail thread and store each message once (the loser of a claim decides its batch again); without the
claims, PostgreSQL replicas count messages twice (the negative control)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from services.runtime.clock import FrozenClock
from services.threading import sync as sync_module
from services.threading.domain.model import Decision, Direction, Outcome
from services.threading.store import changes
from services.threading.store.models import (
    ConversationRow,
    MailboxCopyRow,
    MessageRow,
    ThreadMessageRow,
    ThreadRow,
)
from services.threading.store.operations import ChangeGmailState, GmailChangeResult, PlaceMessage
from services.threading.store.values import MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import at, message
from tests.integration.threading.test_store import add_contact, count

CONTENT = MessageContent(subject="Hello", text_body="the body")


def sync_of(db) -> MessageSync:
    return MessageSync(db, clock=FrozenClock(at(60)))


async def rules_by_message(db) -> dict[str, str]:
    async with db.read() as session:
        return dict((await session.execute(select(MessageRow.rfc_message_id, MessageRow.rule_id))).all())


async def test_R4_a_reply_ahead_of_its_parent_in_one_batch_is_decided_after_it_as_in_order(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    parent = message(
        rfc="<p@x>",
        gmail_id="g-p",
        frm="user@gmail.com",
        to="carol@example.com",
        direction=Direction.OUTBOUND,
    )
    reply = message(rfc="<r@x>", gmail_id="g-r", minute=20, in_reply_to=("<p@x>",), references=("<p@x>",))
    batch = await sync_of(threading_db).apply_batch(
        [PlaceMessage(reply, CONTENT), PlaceMessage(parent, CONTENT)]
    )
    # No wait left over for a redelivery: the reply was decided again once its parent was placed.
    assert all(isinstance(r, Decision) and r.outcome is Outcome.DECIDED for r in batch.results)
    assert await rules_by_message(threading_db) == {"<p@x>": "R5", "<r@x>": "R4"}
    assert await count(threading_db, ThreadRow) == 1
    assert [s.rfc_message_id for s in batch.applied.synced] == ["<p@x>", "<r@x>"]


async def test_R17_a_change_ahead_of_its_message_in_one_batch_is_applied_once_it_is_placed(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    change = ChangeGmailState("mbx-1", "g-1", 900, labels_added=("TRASH",), labels_removed=("UNREAD",))
    placed = message(labels=frozenset({"INBOX", "UNREAD"}))
    batch = await sync_of(threading_db).apply_batch([change, PlaceMessage(placed, CONTENT)])
    assert batch.results[0] == GmailChangeResult(changed=1, seen=True)
    async with threading_db.read() as session:
        copy = (await session.execute(select(MailboxCopyRow))).scalar_one()
    assert (copy.trashed, copy.unread, copy.state_history_id) == (True, False, 900)


def _thread_of_replies(thread: int) -> list[PlaceMessage]:
    """Carol writes, the user answers Dave, in one Gmail thread: whichever message is decided first picks the
    thread's conversation (Carol's or Dave's), and every other message must follow it."""
    result = []
    for index in range(4):
        outbound = index % 2 == 1
        result.append(
            PlaceMessage(
                message(
                    rfc=f"<t{thread}m{index}@x>",
                    gmail_id=f"g-{thread}-{index}",
                    gmail_thread=f"gt-{thread}",
                    frm="user@gmail.com" if outbound else "carol@example.com",
                    to="dave@example.com" if outbound else "user@gmail.com",
                    direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
                    minute=10 + index,
                ),
                CONTENT,
                may_wait=False,
            )
        )
    return result


async def test_two_replicas_applying_overlapping_batches_make_one_thread_per_gmail_thread(
    threading_db,
) -> None:
    await add_contact(threading_db, "c-carol", "carol@example.com")
    await add_contact(threading_db, "c-dave", "dave@example.com", created=1)
    threads = [_thread_of_replies(t) for t in range(6)]
    everything = [operation for thread in threads for operation in thread]
    # Each replica gets every message, the second in the opposite order, with no wait budget: both decide at once.
    for _ in range(2):
        await asyncio.gather(
            sync_of(threading_db).apply_batch(everything),
            sync_of(threading_db).apply_batch(list(reversed(everything))),
        )
    assert await count(threading_db, ThreadRow) == len(threads)
    assert await count(threading_db, MessageRow) == len(everything)
    async with threading_db.read() as session:
        conversations_per_thread = (
            await session.execute(
                select(func.count(func.distinct(MessageRow.conversation_id)))
                .join(ThreadMessageRow, ThreadMessageRow.message_id == MessageRow.message_id)
                .group_by(ThreadMessageRow.thread_id)
            )
        ).scalars()
        counted = await session.scalar(select(func.sum(ConversationRow.message_count)))
    assert set(conversations_per_thread) == {1}, "a thread spans two conversations"
    assert int(counted or 0) == len(everything), "a message was counted by both replicas"


async def _no_copy_locks(_conn: object, _operations: object) -> None:
    return None


async def test_negative_control_without_claims_racing_replicas_count_messages_twice_on_postgresql(
    threading_db, database_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without claims a replica writes decisions made on a view another replica has since overtaken. SQLite never
    lets that happen (a batch holds the write lock from its first read), so there the race stays harmless."""
    written = changes.ChangeSet.insert

    def without_claims(self, table, row, *, claim=False):  # type: ignore[no-untyped-def]
        return written(self, table, row, claim=False)

    monkeypatch.setattr(changes.ChangeSet, "insert", without_claims)
    # The outgoing copies' locks (copy_locks) would serialise these two batches too: the claims alone are tested.
    monkeypatch.setattr(sync_module, "lock_copies", _no_copy_locks)
    if database_target.backend == "sqlite":
        await test_two_replicas_applying_overlapping_batches_make_one_thread_per_gmail_thread(threading_db)
        return
    with pytest.raises(AssertionError, match=r"counted by both replicas|spans two conversations"):
        await test_two_replicas_applying_overlapping_batches_make_one_thread_per_gmail_thread(threading_db)
