"""What one sync pass costs ingest's database and auth, counted on the real engine: the fixed cost of a pass is
what a thousand mailboxes' re-checks and polls multiply (docs/ingest.md, One sync pass). A regression that adds a
statement, a write transaction or a GetMailbox per pass fails here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event

from services.ingest import store
from services.ingest.scheduler import SyncScheduler
from services.ingest.sync import PassOutcome
from services.ingest.sync_policy import SyncState
from services.runtime import streams
from tests.fixtures.ingest_world import IngestWorld
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"
_WRITES = ("INSERT", "UPDATE", "DELETE")
HISTORY_LIST = "gmail.users.history.list"


@dataclass
class PassCost:
    statements: list[str] = field(default_factory=list)
    # Transactions that changed something (each takes SQLite's single writer lock).
    writes: int = 0
    get_mailbox_calls: int = 0
    _writing: bool = False


@contextmanager
def counted(world: IngestWorld) -> Iterator[PassCost]:
    cost = PassCost()
    engine = world.db.engine.sync_engine

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        verb = sql.lstrip().split(None, 1)[0].upper()
        if verb in ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"):
            return
        cost.statements.append(sql)
        cost._writing = cost._writing or verb in _WRITES

    def ended(_conn: Any) -> None:
        cost.writes += cost._writing
        cost._writing = False

    asked = world.directory.get_mailbox

    async def get_mailbox(**by: str) -> Any:
        cost.get_mailbox_calls += 1
        return await asked(**by)

    world.directory.get_mailbox = get_mailbox  # type: ignore[method-assign]
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    try:
        yield cost
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", ended)
        event.remove(engine, "rollback", ended)
        world.directory.get_mailbox = asked  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("reason", "new_messages", "expected"),
    [
        pytest.param("POLL", 3, (2, 4, 1, 1), id="with new mail: 2 writes, 4 statements, one GetMailbox"),
        pytest.param("POLL", 0, (2, 2, 0, 1), id="without new mail: 2 writes, 2 statements, no call to auth"),
        # A re-check looks at Gmail before it takes the lease (one read of the row), and goes on from that listing.
        pytest.param("RECHECK", 3, (2, 5, 1, 1), id="a re-check with new mail: one listing, one read more"),
        pytest.param("RECHECK", 0, (0, 1, 0, 1), id="a re-check without new mail: no write at all"),
    ],
)
async def test_what_a_pass_costs_in_writes_statements_and_calls_to_auth(
    ingest_world: IngestWorld, reason: str, new_messages: int, expected: tuple[int, int, int, int]
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    if new_messages:
        world.deliver(ALICE, copies=new_messages)
    listings_before = world.gmail_calls(ALICE, HISTORY_LIST)

    with counted(world) as cost:
        outcome = await syncer.sync(mailbox.mailbox_id, reason)

    listings = world.gmail_calls(ALICE, HISTORY_LIST) - listings_before
    print(
        f"{reason} with {new_messages} new messages: {cost.writes} writes, {len(cost.statements)} statements, "
        f"{cost.get_mailbox_calls} GetMailbox, {listings} history.list"
    )
    assert outcome is (PassOutcome.SYNCED if new_messages or reason != "RECHECK" else PassOutcome.NOTHING_NEW)
    assert (cost.writes, len(cost.statements), cost.get_mailbox_calls, listings) == expected, cost.statements
    if new_messages:
        # The first pass published the connect's message, if any; this one adds the new ones (once each).
        async def all_published() -> bool:
            return len(world.recorder.recorded.normalized_ids()) >= new_messages

        await eventually(all_published)
        assert set(world.recorder.recorded.normalized_ids().values()) == {1}


async def test_the_scheduler_queues_many_due_mailboxes_with_one_query_and_one_update(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    due_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    mailbox_ids = [f"mb-{i}" for i in range(20)]
    async with world.db.write() as session:
        for mailbox_id in mailbox_ids:
            await store.ensure_mailbox(session, mailbox_id, f"{mailbox_id}@example.com")
            await store.set_state(session, mailbox_id, "IDLE", next_attempt_at=due_at)
    scheduler = SyncScheduler(db=world.db, js=world.js, timing=world.timing)

    with counted(world) as cost:
        queued = await scheduler.queue_due()

    assert queued == len(mailbox_ids)
    assert (cost.writes, len(cost.statements)) == (1, 2), cost.statements
    info = await world.js.stream_info(streams.WORK.name)
    assert info.state.messages == len(mailbox_ids)
    with counted(world) as idle:
        assert await scheduler.queue_due() == 0, "the checks moved to the safety poll"
    # A step with nothing due (an idle service's every second) reads once and writes nothing.
    assert (idle.writes, len(idle.statements)) == (0, 1), idle.statements


async def test_the_first_fetch_batch_is_sized_by_the_mailboxs_last_pass(ingest_world: IngestWorld) -> None:
    """A few new messages of ordinary mail come in one messages.get batch (one HTTP request) once the mailbox's
    last pass saw small mail; after a large one, the first batch is small again (bounded memory)."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    world.deliver(ALICE, subject="small")
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    before = _batch_requests(world)
    world.deliver(ALICE, copies=4, subject="small again")
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    assert _batch_requests(world) - before == 1, (
        "4 small messages in one batch (with sizes unknown: 2, then 2)"
    )

    # A pass without new mail keeps the hint.
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    before = _batch_requests(world)
    world.deliver(ALICE, copies=4, subject="small once more")
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    assert _batch_requests(world) - before == 1, "the empty pass between kept the small first batch"

    world.deliver(ALICE, subject="large", body="x" * (6 * 1024 * 1024 + 1))
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.recent_message_chars > 6 * 1024 * 1024
    before = _batch_requests(world)
    world.deliver(ALICE, copies=3, subject="after the large one")
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    assert _batch_requests(world) - before == 2, (
        "the first batch holds 2 (16 M characters / the large one), then the rest"
    )


async def test_a_pass_that_dies_while_fetching_leaves_the_next_one_the_cautious_first_batch(
    ingest_world: IngestWorld,
) -> None:
    """A pass killed mid-fetch (for memory, say) must not hand the next pass the same large first batch: taking
    the lease clears the size hint, and only a finished pass sets it again."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    world.deliver(ALICE, subject="small")
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.recent_message_chars > 0

    # The dead pass: it took the lease and never finished.
    now = dt.datetime.now(dt.UTC)
    async with world.db.write() as session:
        lease = await store.start_pass(
            session,
            mailbox.mailbox_id,
            "a-worker-that-died",
            now=now - dt.timedelta(hours=1),
            ttl=dt.timedelta(seconds=1),
            state=SyncState.SYNCING,
            safety_check_at=now,
            caused_by="",
        )
    assert lease is not None

    before = _batch_requests(world)
    world.deliver(ALICE, copies=4, subject="after the dead pass")
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    assert _batch_requests(world) - before == 2, "sizes unknown again: 2, then 2"


def _batch_requests(world: IngestWorld) -> int:
    """Batched messages.get HTTP requests the sandbox has served."""
    return int(world.sandbox.admin.quota()["http_requests"].get("batch", 0))
