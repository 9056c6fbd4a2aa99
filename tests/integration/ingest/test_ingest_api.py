"""GetSyncStatus and ResyncMailbox over real gRPC on a running ingest service: scoped to the caller's locations
and to mailboxes connected there."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import update

from mailsync.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest import store
from services.ingest.work import queue_sync
from services.runtime.grpc_client import StaticToken, open_channel
from tests.fixtures.ingest_world import IngestWorld, RunningIngest
from tests.fixtures.messaging import eventually
from tests.fixtures.services import session_crm_signer

ALICE = "alice@example.com"


@pytest.fixture
async def crm_for_loc1(
    ingest_service: RunningIngest, token_keys_value: str
) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    token = session_crm_signer().mint("crm", ["loc-1"])
    channel = open_channel(f"127.0.0.1:{ingest_service.running.port}", token=StaticToken(token))
    yield ingest_pb2_grpc.IngestServiceStub(channel)
    await channel.close()


@pytest.fixture
async def crm_for_loc2(
    ingest_service: RunningIngest, token_keys_value: str
) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    token = session_crm_signer().mint("crm", ["loc-2"])
    channel = open_channel(f"127.0.0.1:{ingest_service.running.port}", token=StaticToken(token))
    yield ingest_pb2_grpc.IngestServiceStub(channel)
    await channel.close()


async def synced(world: IngestWorld, gmail_ids: list[str]) -> None:
    async def published() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(gmail_ids)

    await eventually(published, within=30)


async def test_sync_status_reports_state_cursor_and_counts_to_the_mailboxs_location(
    ingest_world: IngestWorld,
    crm_for_loc1: ingest_pb2_grpc.IngestServiceStub,
    crm_for_loc2: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE, location_id="loc-1")
    delivered = world.deliver(ALICE, copies=3)
    await queue_sync(
        world.js, mailbox.mailbox_id, ALICE, reason="PUSH", msg_id="p1", now=dt.datetime.now(dt.UTC)
    )
    await synced(world, delivered)

    async def idle() -> bool:
        answer = await crm_for_loc1.GetSyncStatus(
            ingest_pb2.GetSyncStatusRequest(location_id="loc-1", mailbox_id=mailbox.mailbox_id)
        )
        return (
            answer.status.state == ingest_pb2.MAILBOX_SYNC_STATE_IDLE
            and answer.status.messages_published == 3
        )

    await eventually(idle, within=60)
    status = (
        await crm_for_loc1.GetSyncStatus(
            ingest_pb2.GetSyncStatusRequest(location_id="loc-1", mailbox_id=mailbox.mailbox_id)
        )
    ).status
    assert status.mailbox_email == ALICE and status.history_cursor > 0 and status.last_error == ""
    assert status.HasField("last_sync_time") and status.HasField("next_attempt_time")

    with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
        await crm_for_loc2.GetSyncStatus(
            ingest_pb2.GetSyncStatusRequest(location_id="loc-1", mailbox_id=mailbox.mailbox_id)
        )
    with pytest.raises(grpc.aio.AioRpcError) as not_connected_there:
        await crm_for_loc2.GetSyncStatus(
            ingest_pb2.GetSyncStatusRequest(location_id="loc-2", mailbox_id=mailbox.mailbox_id)
        )
    assert other_tenant.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not_connected_there.value.code() == grpc.StatusCode.NOT_FOUND


async def test_resync_mailbox_on_demand_publishes_what_the_cursor_skipped(
    ingest_world: IngestWorld, crm_for_loc1: ingest_pb2_grpc.IngestServiceStub
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE, location_id="loc-1")
    first = world.deliver(ALICE, copies=2)
    await queue_sync(
        world.js, mailbox.mailbox_id, ALICE, reason="PUSH", msg_id="p1", now=dt.datetime.now(dt.UTC)
    )
    await synced(world, first)
    (skipped,) = world.deliver(ALICE, subject="history never showed this")
    # As if Gmail's history had dropped the record: the cursor moves past the message without it.
    async with world.db.write() as session:
        await session.execute(
            update(store.MailboxSyncRow)
            .where(store.MailboxSyncRow.mailbox_id == mailbox.mailbox_id)
            .values(history_cursor=int(world.sandbox.admin.mailbox(ALICE)["historyId"]))
        )

    answer = await crm_for_loc1.ResyncMailbox(
        ingest_pb2.ResyncMailboxRequest(request_id="r1", location_id="loc-1", mailbox_id=mailbox.mailbox_id)
    )

    assert answer.queued
    await synced(world, [skipped])
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys([*first, skipped], 1)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await crm_for_loc1.ResyncMailbox(
            ingest_pb2.ResyncMailboxRequest(request_id="r2", location_id="loc-1", mailbox_id="mb-nobody")
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
