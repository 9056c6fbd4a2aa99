"""Whole generated histories (contacts, two connected locations, threads of replies, CRM sends with their Gmail
echoes, BCC drops, replays and reordering) run through the rules and the real store (SQLite), checking invariants
on what is stored: no message twice in a location, CRM threads stay home, no contact from Cc/Bcc, and the same
result whatever the order of arrival."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from services.runtime.clock import FrozenClock
from services.runtime.db import migrate, open_database
from services.threading.app import MIGRATIONS_DIR
from services.threading.domain.addresses import normalize_email
from services.threading.domain.model import BccDrop, Direction, IncomingMessage, Outcome, Role, Source
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import ContactEmailRow, ContactRow, MessageRow, ThreadMessageRow
from services.threading.store.placements import CrmSendInput, MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import T0, at, connection, message, people

KNOWN = ["alice@example.com", "bob@example.com", "carol@example.com"]
STRANGERS = ["stranger@elsewhere.example"]
USER_ADDRESS = "user@gmail.com"
CONNECTIONS = (connection("loc-a", start=0), connection("loc-b", start=5))
CONTENT = MessageContent(subject="s", text_body="b")


@dataclass(frozen=True)
class Event:
    """One delivery to the threading service."""

    kind: str  # "message", "pending", "sent"
    name: str
    message: IncomingMessage | None = None
    send: CrmSendInput | None = None
    gmail_id: str = ""
    gmail_thread: str = ""
    final_rfc: str = ""


contact_specs = st.lists(
    st.tuples(
        st.sampled_from(KNOWN),
        st.sampled_from(["loc-a", "loc-b"]),
        st.sampled_from(["user-1", "user-2", ""]),
        st.integers(0, 3),
    ),
    max_size=6,
)

message_specs = st.lists(
    st.tuples(
        st.booleans(),  # outbound (sent by the user) or inbound
        st.sampled_from(KNOWN + STRANGERS),  # the counterpart address
        st.lists(st.sampled_from(KNOWN + STRANGERS), max_size=2),  # cc
        st.sampled_from(["INBOX", "INBOX", "INBOX", "SPAM"]),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[str, str, str, int]], list[Event]]:
    contacts = draw(contact_specs)
    events: list[Event] = []
    minute = 1
    for thread_no in range(draw(st.integers(1, 3))):
        previous: list[str] = []
        for index, (outbound, counterpart, cc, label) in enumerate(draw(message_specs)):
            minute += draw(st.integers(1, 4))
            rfc = f"<t{thread_no}m{index}@x>"
            events.append(
                Event(
                    "message",
                    rfc,
                    message(
                        frm=USER_ADDRESS if outbound else counterpart,
                        to=counterpart if outbound else USER_ADDRESS,
                        cc=cc,
                        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
                        minute=minute,
                        connections=CONNECTIONS,
                        labels=frozenset({"SENT" if outbound else label}),
                        rfc=rfc,
                        gmail_id=f"g-{thread_no}-{index}",
                        gmail_thread=f"gt-{thread_no}",
                        in_reply_to=(previous[-1],) if previous else (),
                        references=tuple(previous),
                    ),
                )
            )
            previous.append(rfc)
    if draw(st.booleans()):
        # The CRM writes from a contact's conversation: the contact exists in the sending location.
        contacts.append(("alice@example.com", "loc-a", draw(st.sampled_from(["user-1", "user-2", ""])), 0))
        events += _crm_thread(draw(st.booleans()), minute + 1)
    if draw(st.booleans()):
        events += _drop_thread(draw(st.lists(st.sampled_from(KNOWN), max_size=2)), minute + 1)
    return contacts, events


def _crm_thread(gmail_replaces_id: bool, minute: int) -> list[Event]:
    send = CrmSendInput(
        send_id="s-1",
        location_id="loc-a",
        mailbox_id="mbx-1",
        user_id="user-1",
        rfc_message_id="<crm-1@crm>",
        participants=people(to="alice@example.com", **{"from": USER_ADDRESS}),
        create_time=at(minute),
    )
    final = "<crm-1-gmail@mail.gmail.com>" if gmail_replaces_id else "<crm-1@crm>"
    echo = message(
        frm=USER_ADDRESS,
        to="alice@example.com",
        direction=Direction.OUTBOUND,
        minute=minute,
        connections=CONNECTIONS,
        labels=frozenset({"SENT"}),
        rfc=final,
        gmail_id="g-crm",
        gmail_thread="gt-crm",
    )
    reply = message(
        frm="alice@example.com",
        minute=minute + 2,
        connections=CONNECTIONS,
        rfc="<crm-reply@x>",
        gmail_id="g-crm-r",
        gmail_thread="gt-crm",
        in_reply_to=(final,),
        references=(final,),
    )
    return [
        Event("pending", "pending", send=send),
        Event("sent", "sent", send=send, gmail_id="g-crm", gmail_thread="gt-crm", final_rfc=final),
        Event("message", "echo", message=echo),
        Event("message", "crm-reply", message=reply),
    ]


def _drop_thread(cc: list[str], minute: int) -> list[Event]:
    drop = message(
        frm=USER_ADDRESS,
        to=["new.person@example.com"],
        cc=cc,
        bcc=["loc-a.t@drop.example"],
        direction=Direction.OUTBOUND,
        source=Source.BCC_DROP,
        minute=minute,
        connections=(),
        rfc="<drop-1@x>",
        gmail_thread="",
        drop=BccDrop("drop-1", "loc-a", "user-1", "digest-1"),
    )
    reply = message(
        frm="new.person@example.com",
        minute=minute + 3,
        connections=CONNECTIONS,
        rfc="<drop-r@x>",
        gmail_id="g-dr",
        gmail_thread="gt-dr",
        in_reply_to=("<drop-1@x>",),
    )
    return [Event("message", "drop", message=drop), Event("message", "drop-reply", message=reply)]


def arrival_order(events: list[Event], seed: int) -> list[Event]:
    """A shuffled order with some replays; `pending` stays before the echo (outbound publishes it before Gmail
    is called, so ingest cannot see the echo earlier) and `sent` after `pending`."""
    rng = random.Random(seed)
    order = events + [rng.choice(events) for _ in range(len(events) // 3)]
    rng.shuffle(order)
    names = [e.name for e in order]
    if "pending" in names:
        pending = order.pop(names.index("pending"))
        first_dependent = min(i for i, e in enumerate(order) if e.name in {"echo", "sent"})
        order.insert(first_dependent, pending)
    return order


_TEMPLATE: dict[str, Path] = {}


async def _template_db() -> Path:
    if "path" not in _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="threading-template-"))
        db = open_database(f"sqlite:///{folder / 'template.db'}")
        await migrate(db, MIGRATIONS_DIR)
        await db.dispose()
        _TEMPLATE["path"] = folder / "template.db"
    return _TEMPLATE["path"]


async def run_history(contacts, events: list[Event], folder: Path) -> dict[str, object]:
    path = folder / "run.db"
    shutil.copy(await _template_db(), path)
    db = open_database(f"sqlite:///{path}")
    try:
        async with db.write() as session:
            for index, (email, location, assigned, created) in enumerate(contacts):
                record = ContactRecord(
                    f"c-{index}", location, "", (ContactEmail(email, True),), assigned, at(created), 1, False
                )
                await upsert_contact(session, record, now=T0)
        sync = MessageSync(db, clock=FrozenClock(at(500)))
        queue = [(event, 0) for event in events]
        limit = 2 * len(events) + 2
        while queue:
            event, attempts = queue.pop(0)
            if event.kind == "pending":
                await sync.apply_pending_send(event.send, CONTENT)
            elif event.kind == "sent":
                await sync.apply_sent(
                    event.send,
                    CONTENT,
                    gmail_message_id=event.gmail_id,
                    gmail_thread_id=event.gmail_thread,
                    final_rfc_message_id=event.final_rfc,
                )
            else:
                decision = await sync.apply_message(event.message, CONTENT, may_wait=attempts < limit)
                if decision.outcome is not Outcome.DECIDED:
                    queue.append((event, attempts + 1))
        return await snapshot(db)
    finally:
        await db.dispose()


async def snapshot(db) -> dict[str, object]:
    async with db.read() as session:
        messages = (await session.execute(select(MessageRow))).scalars().all()
        links = (await session.execute(select(ThreadMessageRow))).scalars().all()
        contacts = (await session.execute(select(ContactRow))).scalars().all()
        emails = (await session.execute(select(ContactEmailRow))).scalars().all()
    by_id = {m.message_id: m for m in messages}
    threads: dict[str, set[str]] = {}
    for link in links:
        threads.setdefault(link.thread_id, set()).add(by_id[link.message_id].rfc_message_id)
    thread_conversations: dict[str, set[str]] = {}
    for link in links:
        thread_conversations.setdefault(link.thread_id, set()).add(by_id[link.message_id].conversation_id)
    thread_of = {}
    for link in links:
        thread_of.setdefault(link.message_id, set()).add(frozenset(threads[link.thread_id]))
    return {
        "messages": messages,
        "thread_conversations": thread_conversations,
        "created_contact_emails": {
            e.normalized_email
            for e in emails
            for c in contacts
            if c.created_by_sync and c.contact_id == e.contact_id
        },
        "placements": frozenset(
            (m.location_id, m.rfc_message_id, m.contact_id, frozenset(thread_of.get(m.message_id, ())))
            for m in messages
        ),
    }


def check_invariants(result: dict[str, object], events: list[Event]) -> None:
    messages = result["messages"]
    keys = [(m.location_id, m.rfc_message_id) for m in messages]
    assert len(keys) == len(set(keys)), "a message landed twice in one location"
    assert all(len(c) == 1 for c in result["thread_conversations"].values()), (
        "a thread spans two conversations"
    )
    crm_thread = {"<crm-1@crm>", "<crm-1-gmail@mail.gmail.com>", "<crm-reply@x>"}
    assert {m.location_id for m in messages if m.rfc_message_id in crm_thread} <= {"loc-a"}, (
        "CRM thread leaked"
    )
    cc_and_bcc = {
        normalize_email(p.email)
        for e in events
        if e.message
        for p in e.message.participants
        if p.role in {Role.CC, Role.BCC}
    }
    first_to_of_drops = {
        normalize_email(e.message.with_role(Role.TO)[0].email)
        for e in events
        if e.message and e.message.source is Source.BCC_DROP
    }
    created = result["created_contact_emails"]
    assert created <= first_to_of_drops, "a contact was created for an address that is not a drop's first To"
    assert not (created & (cc_and_bcc - first_to_of_drops)), "a contact was created from a Cc/Bcc address"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), seed=st.integers(0, 2**16))
def test_R15_R3_R7_R4_histories_keep_invariants_and_do_not_depend_on_arrival_order(history, seed) -> None:
    contacts, events = history
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        in_order = asyncio.run(run_history(contacts, events, Path(first)))
        shuffled = asyncio.run(run_history(contacts, arrival_order(events, seed), Path(second)))
    check_invariants(in_order, events)
    check_invariants(shuffled, events)
    difference = in_order["placements"] ^ shuffled["placements"]
    assert not difference, f"in order only: {sorted(difference & in_order['placements'])}; " + (
        f"shuffled only: {sorted(difference & shuffled['placements'])}"
    )
