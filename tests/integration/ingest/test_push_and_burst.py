"""The push endpoint of a running ingest service (real HTTP, real gRPC, real JetStream): Google-signed tokens are
accepted and anything else refused with 401; a burst of pushes coalesces into a few sync passes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import grpc
import pytest

from mailsync.v1 import ingest_pb2, ingest_pb2_grpc
from sandbox.keys import SigningKey
from services.ingest import store
from services.runtime import streams, subjects
from services.runtime.grpc_auth import ServiceTokenKeys
from services.runtime.grpc_client import StaticToken, open_channel
from tests.fixtures.ingest_world import AUDIENCE, PUSH_ACCOUNT, IngestWorld, RunningIngest, push_token
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"


def envelope(address: str, history_id: Any, message_id: str = "1") -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"emailAddress": address, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": message_id}, "subscription": "projects/p/subscriptions/s"}


async def post_push(session: aiohttp.ClientSession, url: str, token: str | None, body: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.post(url, json=body, headers=headers) as response:
        return response.status


async def work_items(world: IngestWorld) -> int:
    info = await world.js.stream_info(streams.WORK.name)
    return int(info.state.messages)


async def test_push_with_google_signed_token_is_queued_and_forged_tokens_get_401(
    ingest_world: IngestWorld, ingest_service: RunningIngest
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    world.connect(ALICE)
    forger = SigningKey.generate()
    now = int(time.time())
    good = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": PUSH_ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    refused = {
        "forged signature": forger.sign(good),
        "wrong audience": push_token(world, aud="https://elsewhere.test/push"),
        "wrong service account": push_token(world, email="someone@evil.test"),
        "unverified email": push_token(world, email_verified=False),
        "expired": push_token(world, iat=now - 7200, exp=now - 3600),
        "wrong issuer": push_token(world, iss="https://evil.test"),
        "not a jwt": "abc.def",
    }
    async with aiohttp.ClientSession() as session:
        statuses = {
            name: await post_push(session, ingest_service.push_url, token, envelope(ALICE, "5"))
            for name, token in refused.items()
        }
        missing = await post_push(session, ingest_service.push_url, None, envelope(ALICE, "5"))
        assert await work_items(world) == 0
        # Negative control of the same request with a genuine token: accepted, historyId as a string or a number.
        accepted_string = await post_push(
            session, ingest_service.push_url, push_token(world), envelope(ALICE, "5")
        )
        accepted_number = await post_push(
            session, ingest_service.push_url, push_token(world), envelope(ALICE, 6)
        )
        not_a_push = await post_push(
            session, ingest_service.push_url, push_token(world), {"message": {"data": "%%"}}
        )
        stranger = await post_push(
            session, ingest_service.push_url, push_token(world), envelope("nobody@example.com", 7)
        )
    assert statuses == dict.fromkeys(refused, 401) and missing == 401
    assert (accepted_string, accepted_number) == (200, 200)
    # A genuine push that is not a Gmail notification is refused; one for a mailbox nobody connected is
    # acknowledged, since Pub/Sub would otherwise redeliver it forever.
    assert (not_a_push, stranger) == (400, 200)


async def test_handle_push_rpc_refuses_a_forged_token_and_queues_a_genuine_one(
    ingest_world: IngestWorld, ingest_service: RunningIngest, token_keys_value: str
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    token = ServiceTokenKeys.parse(token_keys_value).mint("push-gateway", ["*"])
    channel = open_channel(f"127.0.0.1:{ingest_service.running.port}", token=StaticToken(token))
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    data = json.dumps({"emailAddress": ALICE, "historyId": 9}).encode()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.HandlePush(
                ingest_pb2.HandlePushRequest(
                    message=ingest_pb2.PubSubMessage(data=data, message_id="m1"),
                    oidc_token=SigningKey.generate().sign({"aud": AUDIENCE}),
                )
            )
        answer = await stub.HandlePush(
            ingest_pb2.HandlePushRequest(
                message=ingest_pb2.PubSubMessage(data=data, message_id="m1"), oidc_token=push_token(world)
            )
        )
    finally:
        await channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (answer.mailbox_id, answer.queued) == (mailbox.mailbox_id, True)


async def test_a_push_finds_a_mailbox_ingest_knows_in_its_own_table_and_asks_auth_only_about_a_new_address(
    ingest_world: IngestWorld, ingest_service: RunningIngest
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    asked = world.directory.get_mailbox
    by_address: list[str] = []

    async def counting(*, mailbox_id: str = "", email: str = "") -> Any:
        if email:
            by_address.append(email)
        return await asked(mailbox_id=mailbox_id, email=email)

    world.directory.get_mailbox = counting  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        first = await post_push(session, ingest_service.push_url, push_token(world), envelope(ALICE, 5))
        assert by_address == [ALICE], "ingest had no row for the address yet: auth says whose it is"
        later = [
            await post_push(session, ingest_service.push_url, push_token(world), envelope(ALICE, 6 + i))
            for i in range(3)
        ]
    assert (first, later) == (200, [200] * 3)
    assert by_address == [ALICE]
    async with world.db.read() as db_session:
        row = await store.get_sync_row(db_session, mailbox.mailbox_id)
    assert row is not None and row.latest_seen_history_id >= 8


async def test_burst_of_200_messages_and_200_pushes_costs_at_most_10_history_lists(
    ingest_world: IngestWorld, ingest_service: RunningIngest
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    base_history = int(world.sandbox.admin.mailbox(ALICE)["historyId"])
    delivered: list[str] = []

    async def deliver_in_steps() -> None:
        for _ in range(10):
            delivered.extend(await asyncio.to_thread(world.deliver, ALICE, 20))

    async def push_200() -> list[int]:
        # Pub/Sub delivers a burst's pushes concurrently, not one after another.
        token = push_token(world)
        gate = asyncio.Semaphore(20)
        async with aiohttp.ClientSession() as session:

            async def one(index: int) -> int:
                async with gate:
                    return await post_push(
                        session, ingest_service.push_url, token, envelope(ALICE, base_history + index)
                    )

            return list(await asyncio.gather(*(one(index) for index in range(200))))

    _, statuses = await asyncio.gather(deliver_in_steps(), push_200())
    assert statuses == [200] * 200

    async def all_published() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

    await eventually(all_published, within=60)

    async def settled() -> bool:
        async with world.db.read() as session:
            row = await store.get_sync_row(session, mailbox.mailbox_id)
        return row is not None and row.state == "IDLE" and row.next_attempt_reason == "POLL"

    await eventually(settled, within=60)
    history_lists = world.gmail_calls(ALICE, "gmail.users.history.list")
    assert len(delivered) == 200
    assert 1 <= history_lists <= 10, history_lists
    # Every message attempted and stored once. Attempts are not counted exactly: beside a second test run at load
    # 20-25, a pass still failed after its publishes (before recording them) and a later pass published the
    # window again, which JetStream's de-duplication absorbed. A timed-out publish is sent again in place
    # (test_publish_stall.py reproduces that stall and its old outcome); what is asserted here is what a CRM sees.
    assert set(world.counter.attempts) == set(delivered)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
    assert subjects.mailbox_changed(mailbox.mailbox_id)
