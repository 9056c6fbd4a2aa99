"""GetAccessToken told which token Gmail refused (rejected_access_token): auth refreshes instead of handing the
same token back, so a grant that died before its access token expired (a password change, then the sandbox
expiring that mailbox's tokens as Google would after a revocation) shows as REAUTH_REQUIRED at the caller's next
call, not an hour later (R12). A token that is not the stored one changes nothing."""

from __future__ import annotations

import grpc
import pytest

from mailsync.v1 import auth_pb2, common_pb2
from services.runtime.errors import error_info
from tests.fixtures.auth_service import AuthWorld

ALICE = "alice@example.com"


@pytest.fixture
def world(auth_world: AuthWorld) -> AuthWorld:
    auth_world.sandbox.create_mailbox(ALICE)
    return auth_world


async def test_a_named_rejected_token_is_refreshed_and_a_live_grant_gets_a_new_one(world: AuthWorld) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id
    first = await world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id))
    issued = world.tokens_issued(ALICE)

    unrelated = await world.internal.GetAccessToken(
        auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id, rejected_access_token="not-the-stored-token")
    )
    assert unrelated.access_token == first.access_token and world.tokens_issued(ALICE) == issued

    assert world.sandbox.admin.expire_access_tokens(ALICE) >= 1
    fresh = await world.internal.GetAccessToken(
        auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id, rejected_access_token=first.access_token)
    )
    assert fresh.access_token != first.access_token
    assert world.tokens_issued(ALICE) == issued + 1
    assert (await world.connection_of("u1", "loc-1")).state == common_pb2.CONNECTION_STATE_CONNECTED


async def test_R12_a_rejected_token_of_a_dead_grant_turns_the_connection_reauth_required_at_once(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id
    token = (
        await world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id))
    ).access_token
    world.sandbox.admin.change_password(ALICE, "new-password")
    world.sandbox.admin.expire_access_tokens(ALICE)

    # Without the rejected token auth still holds a token it believes valid for an hour.
    assert (
        await world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id))
    ).access_token == token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.internal.GetAccessToken(
            auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id, rejected_access_token=token)
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "REAUTH_REQUIRED"
    connection = await world.connection_of("u1", "loc-1")
    assert connection.state == common_pb2.CONNECTION_STATE_REAUTH_REQUIRED
    assert "invalid_grant" in connection.last_error
