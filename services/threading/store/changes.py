"""The writes of one batch, collected while its operations are applied to the view and written at the end, each
kind of row with one statement (an executemany: SQLAlchemy compiles it once and sends the rows in multi-row
VALUES pages, psycopg pipelines the UPDATEs). Nothing goes through the ORM unit of work.

Every insert is `INSERT ... ON CONFLICT DO NOTHING`. Some inserts are claims: the row the view said did not exist
(the copy's first decision, a new thread's key, a new message, a new CRM send, a contact the sync creates) must be
inserted by this transaction. Another replica may have committed the same key since the view was loaded
(PostgreSQL: the view is read in READ COMMITTED; SQLite's single writer never lets that happen); then the claim
comes back missing from RETURNING and `flush` raises `ConcurrentChange`, the transaction rolls back and the batch
is decided again on a fresh view. So no decision is ever written on top of one it did not see.

Order: tables are written in a fixed order and rows sorted by key, so two transactions take their locks in the
same order; the conversation counters and the locations' feed counters come last, so their row locks are held for
the shortest time. A location's feed counter row stays locked until commit, so feed positions commit in order.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Table, Text, bindparam, case, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from services.threading.domain.model import Direction, Source
from services.threading.store.models import (
    AttachmentRow,
    ContactEmailRow,
    ContactRow,
    ConversationRow,
    CrmSendRow,
    DecisionRow,
    LocationSequenceRow,
    MailboxCopyRow,
    MessageReferenceRow,
    MessageRfcIdRow,
    MessageRow,
    ParticipantRow,
    SeenMessageRow,
    SyncedFeedRow,
    ThreadKeyRow,
    ThreadMessageRow,
    ThreadRow,
    UtcDateTime,
    table_of,
)
from services.threading.store.values import Applied, CreatedContact, SentCopy, SyncedMessage
from services.threading.store.view import SendState

# Insert order (the lock order). Claims are checked in the tables that have them.
_TABLES: tuple[Table, ...] = tuple(
    table_of(model)
    for model in (
        SeenMessageRow,
        CrmSendRow,
        ContactRow,
        ContactEmailRow,
        ConversationRow,
        ThreadKeyRow,
        ThreadRow,
        MessageRow,
        ParticipantRow,
        MessageRfcIdRow,
        MessageReferenceRow,
        AttachmentRow,
        ThreadMessageRow,
        MailboxCopyRow,
        DecisionRow,
    )
)


class ConcurrentChange(Exception):
    """Another transaction wrote a row this batch's view said was absent: decide the batch again."""


@dataclass
class FeedDraft:
    """A message placed by this batch; its feed position is taken when the batch is written."""

    location_id: str
    message_id: str
    conversation_id: str
    thread_id: str
    contact_id: str
    rfc_message_id: str
    direction: Direction
    source: Source
    rule_id: str
    sync_time: dt.datetime
    revised: bool = False
    supersedes_message_id: str = ""


@dataclass
class _ConversationBump:
    messages: int = 0
    threads: int = 0
    last_message_time: dt.datetime | None = None


def _key(table: Table, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in _primary_key_names(table))


@functools.cache
def _primary_key_names(table: Table) -> tuple[str, ...]:
    # Walking `table.primary_key.columns` costs about 7 us a row (10% of threading's CPU under a burst).
    return tuple(c.name for c in table.primary_key.columns)


@dataclass
class ChangeSet:
    """What one batch writes."""

    _rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    _claims: dict[str, set[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(set))
    _echo_links: dict[str, tuple[str, str]] = field(default_factory=dict)
    _sent: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)
    _not_pending: set[str] = field(default_factory=set)
    _rfc_changes: dict[str, str] = field(default_factory=dict)
    _final_rfcs: dict[str, str] = field(default_factory=dict)
    _filled_sends: dict[str, SendState] = field(default_factory=dict)
    _became_sends: dict[str, str] = field(default_factory=dict)
    # Merges (R6): superseded message -> (survivor, its conversation, its contact, the explanation).
    _merges: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    _moved_copies: dict[tuple[str, str], str] = field(default_factory=dict)
    _copy_states: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _conversations: dict[str, _ConversationBump] = field(
        default_factory=lambda: defaultdict(_ConversationBump)
    )
    feed: list[FeedDraft] = field(default_factory=list)
    created_contacts: list[CreatedContact] = field(default_factory=list)
    attachments_to_fetch: bool = False
    sent_copies: list[SentCopy] = field(default_factory=list)

    # Collecting.

    def insert(self, table: Table, row: dict[str, Any], *, claim: bool = False) -> dict[str, Any]:
        """Adds a row to insert (kept if its key exists, unless `claim`); returns it so later changes can edit it."""
        self._rows[table.name].append(row)
        if claim:
            self._claims[table.name].add(_key(table, row))
        return row

    def link_echo(self, send_id: str, gmail_message_id: str, gmail_thread_id: str) -> None:
        """The Gmail ids of a recorded send's echo, unless the send already has them (R6)."""
        self._echo_links[send_id] = (gmail_message_id, gmail_thread_id)

    def mark_sent(self, send_id: str, gmail_message_id: str, gmail_thread_id: str, final_rfc: str) -> None:
        self._sent[send_id] = (gmail_message_id, gmail_thread_id, final_rfc)

    def mark_failed(self, send_id: str, reason: str) -> None:
        self._failed[send_id] = reason

    def clear_send_pending(self, message_id: str) -> None:
        self._not_pending.add(message_id)

    def change_rfc_message_id(self, message_id: str, rfc_message_id: str) -> None:
        self._rfc_changes[message_id] = rfc_message_id

    def set_final_rfc(self, send_id: str, final_rfc: str) -> None:
        """The Message-ID Gmail gave a recorded send, learned from its Sent copy (R6)."""
        self._final_rfcs[send_id] = final_rfc

    def fill_send(self, send: SendState) -> None:
        """A send recorded as failed before its `pending` came: its row gets the `pending` fields (as they end up)."""
        self._filled_sends[send.send_id] = send

    def become_send(self, message_id: str, send_id: str) -> None:
        """A stored message turned out to be a CRM send's (placed from its Sent copy first, R6)."""
        self._became_sends[message_id] = send_id

    def supersede(
        self, message_id: str, survivor: str, conversation_id: str, contact_id: str, reason: str
    ) -> None:
        """Merges a stored message into `survivor`: its Message-IDs and explanations point there from now on."""
        self._merges[message_id] = (survivor, conversation_id, contact_id, reason)

    def move_copy(self, message_id: str, mailbox_id: str, survivor: str) -> None:
        self._moved_copies[(message_id, mailbox_id)] = survivor

    def uncount_message(self, conversation_id: str) -> None:
        self._conversations[conversation_id].messages -= 1

    def set_copy_state(self, message_id: str, mailbox_id: str, state: dict[str, Any]) -> None:
        self._copy_states[(message_id, mailbox_id)] = state

    def count_message(self, conversation_id: str, message_time: dt.datetime) -> None:
        bump = self._conversations[conversation_id]
        bump.messages += 1
        if bump.last_message_time is None or bump.last_message_time < message_time:
            bump.last_message_time = message_time

    def count_thread(self, conversation_id: str) -> None:
        self._conversations[conversation_id].threads += 1

    # Writing.

    async def flush(self, conn: AsyncConnection) -> Applied:
        """Writes everything in the lock order; raises ConcurrentChange when a claim was taken meanwhile."""
        inserts = _Inserts.of(conn)
        # Row locks matter where writers run concurrently (PostgreSQL); SQLite's one writer needs no order.
        locking = conn.dialect.name == "postgresql"
        for table in _TABLES:
            rows = self._rows.get(table.name)
            if not rows:
                continue
            if locking:
                rows.sort(key=lambda row, t=table: _key(t, row))  # type: ignore[misc]
            claims = self._claims.get(table.name)
            if not claims:
                await inserts.insert(conn, table, rows)
                continue
            inserted = await inserts.insert_returning_keys(conn, table, rows)
            if not claims <= inserted:
                raise ConcurrentChange(f"{table.name}: {sorted(claims - inserted)[:3]} written meanwhile")
        await self._write_updates(conn)
        synced = await self._write_feed(conn, inserts)
        return Applied(
            synced=tuple(synced),
            created_contacts=tuple(self.created_contacts),
            attachments_to_fetch=self.attachments_to_fetch,
            sent_copies=tuple(self.sent_copies),
        )

    async def _write_updates(self, conn: AsyncConnection) -> None:
        if self._echo_links:
            await conn.execute(
                _ECHO_LINK,
                [{"b_id": s, "b_gmail": g, "b_thread": t} for s, (g, t) in sorted(self._echo_links.items())],
            )
        if self._sent:
            await conn.execute(
                _SENT,
                [
                    {"b_id": s, "b_gmail": g, "b_thread": t, "b_final": f}
                    for s, (g, t, f) in sorted(self._sent.items())
                ],
            )
        if self._failed:
            await conn.execute(_FAILED, [{"b_id": s, "b_reason": r} for s, r in sorted(self._failed.items())])
        if self._not_pending:
            await conn.execute(_NOT_PENDING, [{"b_id": m} for m in sorted(self._not_pending)])
        if self._rfc_changes:
            await conn.execute(
                _RFC_CHANGE, [{"b_id": m, "b_rfc": r} for m, r in sorted(self._rfc_changes.items())]
            )
        if self._final_rfcs:
            await conn.execute(
                _FINAL_RFC, [{"b_id": s, "b_final": f} for s, f in sorted(self._final_rfcs.items())]
            )
        if self._filled_sends:
            await conn.execute(
                _FILL_SEND,
                [
                    {
                        "b_id": s.send_id,
                        "b_location": s.location_id,
                        "b_mailbox": s.mailbox_id,
                        "b_message": s.message_id,
                        "b_rfc": s.rfc_message_id,
                        "b_thread": s.gmail_thread_id,
                    }
                    for _, s in sorted(self._filled_sends.items())
                ],
            )
        if self._became_sends:
            await conn.execute(
                _BECOME_SEND, [{"b_id": m, "b_send": s} for m, s in sorted(self._became_sends.items())]
            )
        if self._merges:
            merges = [
                {"b_id": m, "b_survivor": s, "b_conversation": c, "b_contact": k, "b_reason": r}
                for m, (s, c, k, r) in sorted(self._merges.items())
            ]
            for statement in (_SUPERSEDE, _REPOINT_RFC_IDS, _REPOINT_DECISIONS):
                await conn.execute(statement, merges)
        if self._copy_states:
            await conn.execute(
                _COPY_STATE,
                [
                    {"b_message": m, "b_mailbox": b, **{f"b_{k}": v for k, v in state.items()}}
                    for (m, b), state in sorted(self._copy_states.items())
                ],
            )
        if self._moved_copies:
            await conn.execute(
                _MOVE_COPY,
                [
                    {"b_message": m, "b_mailbox": b, "b_survivor": s}
                    for (m, b), s in sorted(self._moved_copies.items())
                ],
            )
        if self._conversations:
            never = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            await conn.execute(
                _CONVERSATION_BUMP,
                [
                    {
                        "b_id": conversation_id,
                        "b_messages": bump.messages,
                        "b_threads": bump.threads,
                        "b_time": bump.last_message_time or never,
                    }
                    for conversation_id, bump in sorted(self._conversations.items())
                ],
            )

    async def _write_feed(self, conn: AsyncConnection, inserts: _Inserts) -> list[SyncedMessage]:
        """Takes the feed positions (the counter rows stay locked to commit) and writes the feed entries."""
        if not self.feed:
            return []
        counts: dict[str, int] = defaultdict(int)
        for draft in self.feed:
            counts[draft.location_id] += 1
        locations = sorted(counts)
        await inserts.insert(conn, _sequences, [{"location_id": loc, "last_seq": 0} for loc in locations])
        await conn.execute(_SEQ_BUMP, [{"b_id": loc, "b_count": counts[loc]} for loc in locations])
        last = dict(list((await conn.execute(_SEQ_READ, {"values": locations})).all()))
        next_seq = {loc: int(last[loc]) - counts[loc] + 1 for loc in locations}
        synced = []
        for draft in self.feed:
            seq = next_seq[draft.location_id]
            next_seq[draft.location_id] = seq + 1
            synced.append(
                SyncedMessage(
                    draft.location_id,
                    seq,
                    draft.message_id,
                    draft.conversation_id,
                    draft.thread_id,
                    draft.contact_id,
                    draft.rfc_message_id,
                    draft.direction,
                    draft.source,
                    draft.rule_id,
                    draft.sync_time,
                    draft.revised,
                    draft.supersedes_message_id,
                )
            )
        await inserts.insert(
            conn,
            table_of(SyncedFeedRow),
            [
                {
                    "location_id": s.location_id,
                    "seq": s.seq,
                    "message_id": s.message_id,
                    "conversation_id": s.conversation_id,
                    "thread_id": s.thread_id,
                    "contact_id": s.contact_id,
                    "rfc_message_id": s.rfc_message_id,
                    "direction": s.direction.value,
                    "source": s.source.value,
                    "rule_id": s.rule_id,
                    "sync_time": s.sync_time,
                    "revised": s.revised,
                    "supersedes_message_id": s.supersedes_message_id,
                }
                for s in synced
            ],
        )
        return synced


class _Inserts:
    """`INSERT ... ON CONFLICT DO NOTHING` of many rows in one statement, built once per table.

    SQLite: an executemany, which SQLAlchemy sends as multi-row VALUES pages. PostgreSQL: the rows go as one array
    per column into `INSERT ... SELECT * FROM unnest(...)`, so the SQL text is short and the same for any number of
    rows (psycopg parses and caches it once; a multi-row VALUES of thousands of parameters is parsed every time).
    """

    _built: dict[tuple[str, str, bool], Any] = {}

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    @classmethod
    def of(cls, conn: AsyncConnection) -> _Inserts:
        return cls(conn.dialect.name)

    async def insert(self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
        if self._dialect == "postgresql":
            await conn.execute(self._statement(table, returning=False), _as_columns(table, rows))
        else:
            await conn.execute(self._statement(table, returning=False), rows)

    async def insert_returning_keys(
        self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
    ) -> set[tuple[Any, ...]]:
        """Inserts the rows; returns the keys of those this statement inserted (not those that existed)."""
        values: Any = _as_columns(table, rows) if self._dialect == "postgresql" else rows
        return {tuple(r) for r in await conn.execute(self._statement(table, returning=True), values)}

    def _statement(self, table: Table, *, returning: bool) -> Any:
        key = (self._dialect, table.name, returning)
        statement = self._built.get(key)
        if statement is None:
            statement = self._build(table)
            if returning:
                statement = statement.returning(*table.primary_key.columns)
            self._built[key] = statement
        return statement

    def _build(self, table: Table) -> Any:
        if self._dialect != "postgresql":
            return sqlite.insert(table).on_conflict_do_nothing()
        arrays = [
            bindparam(c.name, type_=ARRAY(Text() if isinstance(c.type, JSON) else c.type))
            for c in table.columns
        ]
        rows = func.unnest(*arrays).table_valued(*[c.name for c in table.columns]).render_derived(name="rows")
        values = select(
            *[
                cast(rows.c[c.name], c.type) if isinstance(c.type, JSON) else rows.c[c.name]
                for c in table.columns
            ]
        )
        return (
            postgresql.insert(table)
            .from_select([c.name for c in table.columns], values)
            .on_conflict_do_nothing()
        )


def _as_columns(table: Table, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as one list per column (JSON values serialized here: they travel as text and are cast in SQL)."""
    columns: dict[str, list[Any]] = {}
    for column in table.columns:
        name = column.name
        if isinstance(column.type, JSON):
            columns[name] = [json.dumps(row[name]) for row in rows]
        else:
            columns[name] = [row[name] for row in rows]
    return columns


_sends = table_of(CrmSendRow)
_messages = table_of(MessageRow)
_copies = table_of(MailboxCopyRow)
_conversations = table_of(ConversationRow)
_sequences = table_of(LocationSequenceRow)

_ECHO_LINK = (
    update(_sends)
    .where(_sends.c.send_id == bindparam("b_id"), _sends.c.gmail_message_id == "")
    .values(gmail_message_id=bindparam("b_gmail"), gmail_thread_id=bindparam("b_thread"))
)
_SENT = (
    update(_sends)
    .where(_sends.c.send_id == bindparam("b_id"))
    .values(
        state="sent",
        gmail_message_id=bindparam("b_gmail"),
        gmail_thread_id=bindparam("b_thread"),
        final_rfc_message_id=bindparam("b_final"),
    )
)
_FAILED = (
    update(_sends)
    .where(_sends.c.send_id == bindparam("b_id"), _sends.c.state != "sent")
    .values(state="failed", failure_reason=bindparam("b_reason"))
)
_NOT_PENDING = update(_messages).where(_messages.c.message_id == bindparam("b_id")).values(send_pending=False)
_RFC_CHANGE = (
    update(_messages)
    .where(_messages.c.message_id == bindparam("b_id"))
    .values(rfc_message_id=bindparam("b_rfc"))
)
_FINAL_RFC = (
    update(_sends)
    .where(_sends.c.send_id == bindparam("b_id"))
    .values(final_rfc_message_id=bindparam("b_final"))
)
_FILL_SEND = (
    update(_sends)
    .where(_sends.c.send_id == bindparam("b_id"), _sends.c.location_id == "")
    .values(
        location_id=bindparam("b_location"),
        mailbox_id=bindparam("b_mailbox"),
        message_id=bindparam("b_message"),
        rfc_message_id=bindparam("b_rfc"),
        gmail_thread_id=bindparam("b_thread"),
    )
)
_BECOME_SEND = (
    update(_messages)
    .where(_messages.c.message_id == bindparam("b_id"))
    .values(
        rule_id="R6",
        source=Source.CRM_SEND.value,
        direction=Direction.OUTBOUND.value,
        send_id=bindparam("b_send"),
    )
)
_SUPERSEDE = (
    update(_messages)
    .where(_messages.c.message_id == bindparam("b_id"))
    .values(superseded_by=bindparam("b_survivor"))
)
_rfc_ids = table_of(MessageRfcIdRow)
_REPOINT_RFC_IDS = (
    update(_rfc_ids)
    .where(_rfc_ids.c.message_id == bindparam("b_id"))
    .values(message_id=bindparam("b_survivor"))
)
_decisions = table_of(DecisionRow)
_REPOINT_DECISIONS = (
    update(_decisions)
    .where(_decisions.c.message_id == bindparam("b_id"))
    .values(
        message_id=bindparam("b_survivor"),
        conversation_id=bindparam("b_conversation"),
        contact_id=bindparam("b_contact"),
        rule_id="R6",
        reason=bindparam("b_reason"),
    )
)
_MOVE_COPY = (
    update(_copies)
    .where(_copies.c.message_id == bindparam("b_message"), _copies.c.mailbox_id == bindparam("b_mailbox"))
    .values(message_id=bindparam("b_survivor"))
)
_COPY_STATE = (
    update(_copies)
    .where(_copies.c.message_id == bindparam("b_message"), _copies.c.mailbox_id == bindparam("b_mailbox"))
    .values(
        {
            column: bindparam(f"b_{column}", type_=_copies.c[column].type)
            for column in ("labels", "unread", "trashed", "deleted", "state_history_id", "update_time")
        }
    )
)
_TIME = bindparam("b_time", type_=UtcDateTime())
_CONVERSATION_BUMP = (
    update(_conversations)
    .where(_conversations.c.conversation_id == bindparam("b_id"))
    .values(
        message_count=_conversations.c.message_count + bindparam("b_messages"),
        thread_count=_conversations.c.thread_count + bindparam("b_threads"),
        last_message_time=case(
            (_conversations.c.last_message_time < _TIME, _TIME), else_=_conversations.c.last_message_time
        ),
    )
)
_SEQ_BUMP = (
    update(_sequences)
    .where(_sequences.c.location_id == bindparam("b_id"))
    .values(last_seq=_sequences.c.last_seq + bindparam("b_count"))
)
_SEQ_READ = select(_sequences.c.location_id, _sequences.c.last_seq).where(
    _sequences.c.location_id.in_(bindparam("values", expanding=True))
)
