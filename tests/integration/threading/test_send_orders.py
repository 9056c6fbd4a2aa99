"""One CRM message per send, in every order (R6, R15), on SQLite and PostgreSQL.

A CRM send reaches threading four ways: outbound's `pending` and `sent` (or `failed`), the send's copy in the
user's Sent folder, and the copy a colleague's connected mailbox receives (Cc). Every order of those four is
delivered, one by one and all in one batch, with the waits for a send's answer and without them (as when the
wait budget ran out), each delivery through a fresh `MessageSync` (what a threading restart leaves: only the
store). Three Message-ID cases: Gmail kept ours, Gmail replaced it and outbound read the new one, Gmail replaced
it and outbound could not read it (the sandbox's `after_response` timing: only the Sent copy tells).

Whatever the order, the location shows exactly one message for the send, the one the in-order delivery gives:
the send's R6 message, known by Gmail's Message-ID, with the Sent copy (and the colleague's copy) as its mailbox
copies; every record merged into it reads as it; the conversation counts it once; and a reader of the
WatchMessages feed who applies the revisions it announces ends up showing exactly what the store shows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from services.runtime.clock import FrozenClock
from services.threading.domain.model import Direction
from services.threading.store import reads
from services.threading.store.models import ConversationRow, MailboxCopyRow, MessageRow, derived_id
from services.threading.store.operations import (
    Operation,
    PlaceMessage,
    RecordPendingSend,
    RecordSendFailed,
    RecordSent,
)
from services.threading.store.placements import BatchPlacement, is_waiting
from services.threading.store.values import CrmSendInput, MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import at, connection, message, people
from tests.integration.threading.test_store import add_contact

CONTENT = MessageContent(subject="Re: offer", text_body="the body")
USER = "user@gmail.com"
ALICE = "alice@example.com"
EVENTS = ("pending", "copy", "answer", "colleague")
# Gmail kept our Message-ID / replaced it and outbound read it / replaced it and outbound could not read it.
ID_CASES = ("kept", "replaced", "after_response")


@dataclass(frozen=True)
class Case:
    """One run, in its own location and mailboxes, so many runs share one database."""

    run: int
    reply: bool  # the send replies in a thread the location has (the colleague's copy then follows R4)
    ids: str
    failed: bool = False

    @property
    def location(self) -> str:
        return f"loc-{self.run}"

    @property
    def mailbox(self) -> str:
        return f"mbx-{self.run}"

    @property
    def colleague_mailbox(self) -> str:
        return f"mbx-c-{self.run}"

    @property
    def ours(self) -> str:
        return f"<crm-{self.run}@mailsync.invalid>"

    @property
    def gmails(self) -> str:
        """The Message-ID the email really carries in Gmail."""
        return self.ours if self.ids == "kept" else f"<gmail-{self.run}@mail.gmail.com>"

    @property
    def reported(self) -> str:
        """The Message-ID outbound's `sent` reports."""
        return self.ours if self.ids in ("kept", "after_response") else self.gmails

    @property
    def parent(self) -> str:
        return f"<p-{self.run}@example.com>"

    def connections(self):
        return (connection(self.location, start=0),)

    def colleague_connections(self):
        return (connection(self.location, user="user-2", start=0),)

    def send(self) -> CrmSendInput:
        conversation = thread = ""
        if self.reply:
            conversation = derived_id("conversation", self.location, "c-alice")
            thread = derived_id("thread", self.location, f"gmail:{self.mailbox}:gt-p")
        return CrmSendInput(
            send_id=f"s-{self.run}",
            location_id=self.location,
            mailbox_id=self.mailbox,
            user_id="user-1",
            rfc_message_id=self.ours,
            participants=people(to=ALICE, cc="colleague@example.com", **{"from": USER}),
            create_time=at(30),
            conversation_id=conversation,
            thread_id=thread,
            gmail_thread_id="gt-p" if self.reply else "",
            in_reply_to=(self.parent,) if self.reply else (),
            references=(self.parent,) if self.reply else (),
        )

    def operation(self, event: str, *, may_wait: bool) -> Operation:
        parents = (self.parent,) if self.reply else ()
        if event == "pending":
            return RecordPendingSend(self.send(), CONTENT)
        if event == "answer" and self.failed:
            return RecordSendFailed(f"s-{self.run}", "Gmail refused the message")
        if event == "answer":
            return RecordSent(self.send(), CONTENT, "g-sent", "gt-p" if self.reply else "gt-s", self.reported)
        if event == "copy":
            copy = message(
                frm=USER,
                to=ALICE,
                cc=["colleague@example.com"],
                direction=Direction.OUTBOUND,
                minute=30,
                connections=self.connections(),
                labels=frozenset({"SENT"}),
                rfc=self.gmails,
                gmail_id="g-sent",
                gmail_thread="gt-p" if self.reply else "gt-s",
                in_reply_to=parents,
                references=parents,
                mailbox=self.mailbox,
            )
            return PlaceMessage(copy, CONTENT, may_wait=may_wait)
        colleague = message(
            frm=USER,
            to=ALICE,
            cc=["colleague@example.com"],
            minute=31,
            connections=self.colleague_connections(),
            rfc=self.gmails,
            gmail_id="g-colleague",
            gmail_thread="gt-c",
            in_reply_to=parents,
            references=parents,
            mailbox=self.colleague_mailbox,
        )
        return PlaceMessage(colleague, CONTENT, may_wait=may_wait)


async def _prepare(db, case: Case) -> None:
    await add_contact(db, "c-alice", ALICE, location=case.location)
    if case.reply:
        parent = message(
            frm=ALICE,
            to=USER,
            minute=20,
            connections=case.connections(),
            rfc=case.parent,
            gmail_id="g-p",
            gmail_thread="gt-p",
            mailbox=case.mailbox,
        )
        await MessageSync(db, clock=FrozenClock(at(40))).apply_batch([PlaceMessage(parent, CONTENT)])


async def _deliver(db, case: Case, order: tuple[str, ...], *, batch: bool, waits: bool) -> None:
    """Delivers the events in this order (one by one, or all in one batch); a waiting one comes back at the end
    of the queue, as a redelivery would, until its wait budget is spent. Each delivery uses a fresh MessageSync."""
    limit = 3 if waits else 0
    queue = [(event, 0) for event in order]
    while queue:
        size = len(queue) if batch else 1
        delivered, queue = queue[:size], queue[size:]
        operations = [case.operation(event, may_wait=tries < limit) for event, tries in delivered]
        results = (await MessageSync(db, clock=FrozenClock(at(40))).apply_batch(operations)).results
        queue += [
            (event, tries + 1) for (event, tries), r in zip(delivered, results, strict=True) if is_waiting(r)
        ]


async def _outcome(db, case: Case) -> tuple:
    """What the location shows for the send, with every cross-check of one message per send."""
    async with db.read() as session:
        rows = (
            (await session.execute(select(MessageRow).where(MessageRow.location_id == case.location)))
            .scalars()
            .all()
        )
        visible = {r.message_id: r for r in rows if not r.superseded_by}
        copies = (
            (
                await session.execute(
                    select(MailboxCopyRow).where(MailboxCopyRow.message_id.in_([r.message_id for r in rows]))
                )
            )
            .scalars()
            .all()
        )
        conversations = (
            (
                await session.execute(
                    select(ConversationRow).where(ConversationRow.location_id == case.location)
                )
            )
            .scalars()
            .all()
        )
        # Every id ever handed out reads as a message the location shows.
        for row in rows:
            found = await reads.get_message(session, case.location, row.message_id)
            assert found is not None and found.message_id in visible, (
                f"{row.message_id} reads as nothing shown"
            )
        feed = await reads.feed_after(session, case.location, 0, limit=1000)
    sends = [r for r in visible.values() if r.rfc_message_id in {case.ours, case.gmails}]
    assert len(sends) == 1, (
        f"the send is shown {len(sends)} times: {[(r.rule_id, r.rfc_message_id) for r in sends]}"
    )
    sent = sends[0]
    for conversation in conversations:
        shown = sum(1 for r in visible.values() if r.conversation_id == conversation.conversation_id)
        assert conversation.message_count == shown, "the conversation counts a merged record"
    # A WatchMessages reader that applies what the feed announces shows what the store shows.
    reader: dict[str, str] = {}
    for entry in feed:
        if entry.supersedes_message_id:
            reader.pop(entry.supersedes_message_id, None)
        reader[entry.message_id] = entry.rfc_message_id
    assert reader == {m: r.rfc_message_id for m, r in visible.items()}, "the feed left a reader behind"
    copy_places = {(c.mailbox_id, c.gmail_message_id) for c in copies if c.message_id == sent.message_id}
    if not case.reply:
        # Without a known thread, a colleague's copy that comes first is not synced (R2: its sender is the user,
        # no contact); only the user's own copy is part of the send's message in every order.
        copy_places &= {(case.mailbox, "g-sent")}
    contact = next(c.contact_id for c in conversations if c.conversation_id == sent.conversation_id)
    # In run-independent words, so runs compare.
    names = {
        case.mailbox: "user",
        case.colleague_mailbox: "colleague",
        case.ours: "ours",
        case.gmails: "gmail's",
    }
    return (
        len(visible),
        sent.rule_id,
        sent.source,
        sent.direction,
        names[sent.rfc_message_id],
        sent.send_id == f"s-{case.run}",
        sent.send_pending,
        contact,
        frozenset((names[mailbox], gmail_id) for mailbox, gmail_id in copy_places),
    )


MODES = [(False, True), (False, False), (True, True), (True, False)]  # (all in one batch, waits)


@pytest.mark.parametrize("reply", [False, True], ids=["new-thread", "reply"])
@pytest.mark.parametrize("ids", ID_CASES)
async def test_R6_R15_a_send_is_one_message_in_every_order_of_its_answer_and_copies(
    threading_db, reply, ids
) -> None:
    run = itertools.count()
    reference_case = Case(next(run), reply, ids)
    await _prepare(threading_db, reference_case)
    await _deliver(
        threading_db, reference_case, ("pending", "answer", "copy", "colleague"), batch=False, waits=True
    )
    expected = await _outcome(threading_db, reference_case)
    visible, rule, source, direction, rfc, is_the_send, pending, contact, places = expected
    assert (rule, source, direction, rfc, is_the_send, pending, contact) == (
        "R6",
        "CRM_SEND",
        "OUTBOUND",
        "gmail's",
        True,
        False,
        "c-alice",
    )
    assert ("user", "g-sent") in places
    assert visible == (2 if reply else 1)
    differences = []
    for order in itertools.permutations(EVENTS):
        for batch, waits in MODES:
            case = Case(next(run), reply, ids)
            await _prepare(threading_db, case)
            await _deliver(threading_db, case, order, batch=batch, waits=waits)
            got = await _outcome(threading_db, case)
            if got != expected:
                differences.append((order, batch, waits, got))
    assert differences == [], f"{len(differences)} orders differ from in order {expected}: {differences[:3]}"


@pytest.mark.parametrize("reply", [False, True], ids=["new-thread", "reply"])
async def test_R6_a_failed_send_is_one_message_in_either_order(threading_db, reply) -> None:
    """`failed` before `pending` (a redelivered `pending`) still records the attempt once, not pending forever."""
    outcomes = []
    for run, order in enumerate((("pending", "answer"), ("answer", "pending"))):
        case = Case(run, reply, "kept", failed=True)
        await _prepare(threading_db, case)
        await _deliver(threading_db, case, order, batch=False, waits=True)
        async with threading_db.read() as session:
            rows = (
                (await session.execute(select(MessageRow).where(MessageRow.send_id == f"s-{run}")))
                .scalars()
                .all()
            )
        outcomes.append([(r.rule_id, r.send_pending, r.superseded_by) for r in rows])
    assert outcomes == [[("R6", False, "")], [("R6", False, "")]]


async def test_negative_control_without_the_merge_an_early_sent_copy_shows_the_send_twice(
    threading_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks above catch what issue 11 saw: the Sent copy placed by R5 before the answer, then the send's
    R6 message beside it."""
    monkeypatch.setattr(BatchPlacement, "_merge_into", lambda self, survivor, candidates, send_id: 0)
    case = Case(0, False, "replaced")
    await _prepare(threading_db, case)
    await _deliver(threading_db, case, ("pending", "copy", "answer", "colleague"), batch=False, waits=False)
    with pytest.raises(AssertionError, match="the send is shown 2 times"):
        await _outcome(threading_db, case)
