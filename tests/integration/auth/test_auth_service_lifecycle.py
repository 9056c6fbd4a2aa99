"""The auth service's configuration and life across restarts: a missing token key ring stops the start with one
line naming the variable, a new key re-encrypts every stored token while serving, a stale CRM upsert never wins,
and a consent the user cancels ends on a clear page."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any

import pytest
from sqlalchemy import select

from mailsync.v1 import auth_pb2
from services.auth.app import build
from services.auth.crypto import generate_key_text
from services.auth.store import MailboxRow
from services.runtime.service import RunningService, StartupError, stop_service
from tests.fixtures.auth_service import AuthWorld
from tests.fixtures.services import ServiceStarter

ALICE = "alice@example.com"


async def test_a_missing_token_key_ring_stops_the_start_naming_the_variable(auth_world: AuthWorld) -> None:
    settings = auth_world.settings.model_copy(update={"token_keys": ""})
    with pytest.raises(StartupError, match="MAILSYNC_AUTH_TOKEN_KEYS is not set"):
        await build(settings)
    broken = auth_world.settings.model_copy(update={"token_keys": "v1:tooshort"})
    with pytest.raises(StartupError, match="MAILSYNC_AUTH_TOKEN_KEYS: token key v1 must be 32 bytes"):
        await build(broken)


async def key_versions(service: RunningService) -> set[tuple[Any, ...]]:
    async with service.components.database.read() as session:
        rows = await session.execute(
            select(MailboxRow.refresh_token_key_version, MailboxRow.access_token_key_version)
        )
        return {tuple(row) for row in rows}


async def test_a_new_token_key_reseals_every_row_while_serving_then_the_old_key_retires(
    auth_world: AuthWorld, run_service_in_process: ServiceStarter
) -> None:
    world = auth_world
    world.sandbox.create_mailbox(ALICE)
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id
    assert await key_versions(world.service) == {(1, 1)}
    await stop_service(world.service)

    rotated = world.settings.model_copy(
        update={"token_keys": f"{generate_key_text(2)},{world.settings.token_keys}"}
    )
    serving = await run_service_in_process(rotated, functools.partial(build, clock=world.clock))
    world = dataclasses.replace(world, service=serving, channels=[])
    request = auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id)
    assert (await world.internal.GetAccessToken(request)).access_token  # serves during the rotation
    for _ in range(200):
        if await key_versions(serving) == {(2, 2)}:
            break
        await asyncio.sleep(0.05)
    assert await key_versions(serving) == {(2, 2)}
    await stop_service(serving)

    only_new = rotated.model_copy(update={"token_keys": rotated.token_keys.split(",")[0]})
    retired = await run_service_in_process(only_new, functools.partial(build, clock=world.clock))
    world = dataclasses.replace(world, service=retired, channels=[])
    assert (await world.internal.GetAccessToken(request)).access_token
    await world.expire_access_tokens()
    assert (await world.internal.GetAccessToken(request)).access_token  # the refresh token opens too
    for channel in world.channels:
        await channel.close()


async def test_a_stale_user_upsert_never_wins(auth_world: AuthWorld) -> None:
    def upsert(version: int, email: str) -> auth_pb2.UpsertUserRequest:
        return auth_pb2.UpsertUserRequest(
            user=auth_pb2.User(user_id="u1", crm_email=email, location_ids=["loc-1"], version=version)
        )

    assert (await auth_world.crm.UpsertUser(upsert(2, "new@crm.example.com"))).applied
    stale = await auth_world.crm.UpsertUser(upsert(1, "old@crm.example.com"))

    assert not stale.applied and stale.user.crm_email == "new@crm.example.com" and stale.user.version == 2


async def test_cancel_on_the_consent_page_ends_on_a_clear_page_and_stores_nothing(
    auth_world: AuthWorld,
) -> None:
    auth_world.sandbox.create_mailbox(ALICE)
    await auth_world.add_user("u1")
    begun = await auth_world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id="loc-1"))

    page = await auth_world.open_callback(auth_world.consent(begun.authorization_url, ALICE, decision="deny"))

    assert page.status == 400 and "access_denied" in page.page and "press Continue" in page.page
    listed = await auth_world.crm.ListConnections(auth_pb2.ListConnectionsRequest(location_id="loc-1"))
    assert list(listed.connections) == []
