"""The auth service as it runs: gRPC on loopback, the OAuth callback over real HTTP, events on a real NATS, the
Gmail sandbox as Google, on SQLite and PostgreSQL (R1, R10, R11, R12)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from sqlalchemy import func, select

from mailsync.v1 import auth_pb2, common_pb2, events_pb2
from services.auth.crypto import KeyRing, TokenCipher
from services.auth.domain import GMAIL_READONLY
from services.auth.store import ConnectionRow, MailboxRow, find_mailbox_by_email, load_refresh_token
from services.runtime.errors import error_info
from tests.fixtures.auth_service import AuthWorld, auth_settings, start_auth_process
from tools.ports import free_port

ALICE = "alice@example.com"
BOB = "bob@example.com"
CONNECTED = common_pb2.CONNECTION_STATE_CONNECTED


@pytest.fixture
def world(auth_world: AuthWorld) -> AuthWorld:
    for address in (ALICE, BOB):
        auth_world.sandbox.create_mailbox(address)
    return auth_world


async def rejected(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stored_rows(world: AuthWorld) -> tuple[int, int]:
    async with world.service.components.database.read() as session:
        mailboxes = await session.scalar(select(func.count()).select_from(MailboxRow))
        connections = await session.scalar(select(func.count()).select_from(ConnectionRow))
    return int(mailboxes or 0), int(connections or 0)


async def test_R1_connect_through_the_callback_ends_connected_at_the_current_history_with_an_event(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    history_id = int(world.sandbox.gmail(ALICE).users().getProfile(userId="me").execute()["historyId"])

    page = await world.connect("u1", "loc-1", ALICE)

    assert page.status == 200 and 'data-outcome="connected"' in page.page and ALICE in page.page
    connection = await world.connection_of("u1", "loc-1")
    assert connection.state == CONNECTED and connection.mailbox_email == ALICE
    assert connection.start_history_id == history_id and connection.start_time.seconds > 0
    assert connection.watch_expire_time.seconds > 0 and not connection.reconnect_required
    received = await world.events.wait_for(1)
    ((subject, event),) = received
    assert subject == f"mailsync.v1.connection.connected.{connection.mailbox_id}"
    assert event.kind == events_pb2.CONNECTION_EVENT_KIND_CONNECTED
    assert event.connection.connection_id == connection.connection_id
    assert event.connection.start_history_id == history_id and event.mailbox_email == ALICE
    assert AUTH_WATCHED(world) == {ALICE}


def AUTH_WATCHED(world: AuthWorld) -> set[str]:
    return set(world.sandbox.admin.push_report()["watches"])


async def test_the_callback_sends_the_browser_to_an_allowed_return_url(world: AuthWorld) -> None:
    await world.add_user("u1")
    page = await world.connect("u1", "loc-1", ALICE, return_url="https://crm.example.com/settings?tab=mail")

    assert page.status == 302 and page.location is not None
    target = urlsplit(page.location)
    assert (target.scheme, target.netloc, target.path) == ("https", "crm.example.com", "/settings")
    query = parse_qs(target.query)
    assert query["tab"] == ["mail"] and query["mailsync_connect"] == ["connected"]
    assert query["connection_id"] == [(await world.connection_of("u1", "loc-1")).connection_id]


async def test_a_return_url_outside_the_allowed_origins_is_refused(world: AuthWorld) -> None:
    await world.add_user("u1")
    error = await rejected(
        world.crm.BeginConnect(
            auth_pb2.BeginConnectRequest(
                user_id="u1", location_id="loc-1", return_url="https://evil.example/x"
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "RETURN_URL_NOT_ALLOWED"


async def test_an_unticked_scope_is_refused_with_a_clear_page_and_nothing_is_stored(world: AuthWorld) -> None:
    await world.add_user("u1")
    page = await world.connect("u1", "loc-1", ALICE, scopes=["openid", "email", GMAIL_READONLY])

    assert page.status == 400 and 'data-outcome="error"' in page.page
    assert "you unticked: gmail.send - please connect again and allow every permission" in page.page
    assert await stored_rows(world) == (0, 0)
    error = await rejected(
        world.crm.GetConnection(auth_pb2.GetConnectionRequest(location_id="loc-1", user_id="u1"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_forged_reused_and_expired_states_are_refused_and_nothing_is_stored(world: AuthWorld) -> None:
    await world.add_user("u1")
    begun = await world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id="loc-1"))
    callback = world.consent(begun.authorization_url, ALICE)
    forged = callback.replace(f"state={begun.state}", "state=forged-state-value")

    forged_page = await world.open_callback(forged)
    assert forged_page.status == 400 and "start the connection again" in forged_page.page
    assert await stored_rows(world) == (0, 0)

    assert (await world.open_callback(callback)).status == 200
    reused = await world.open_callback(callback)
    assert reused.status == 400 and "state already used" in reused.page

    late = await world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id="loc-2"))
    late_callback = world.consent(late.authorization_url, ALICE)
    world.clock.advance(dt.timedelta(minutes=11))
    expired = await world.open_callback(late_callback)
    assert expired.status == 400 and "state expired" in expired.page
    assert await stored_rows(world) == (1, 1)

    error = await rejected(
        world.crm.CompleteConnect(auth_pb2.CompleteConnectRequest(state="forged", code="whatever"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "OAUTH_STATE_REJECTED"


async def test_complete_connect_over_grpc_and_missing_fields_say_how_to_fix_them(world: AuthWorld) -> None:
    await world.add_user("u1")
    begun = await world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id="loc-1"))
    query = {
        k: v[0] for k, v in parse_qs(urlsplit(world.consent(begun.authorization_url, ALICE)).query).items()
    }

    done = await world.crm.CompleteConnect(
        auth_pb2.CompleteConnectRequest(state=query["state"], code=query["code"], scope=query["scope"])
    )
    assert done.connection.state == CONNECTED and done.connection.mailbox_email == ALICE

    missing = await rejected(world.crm.BeginConnect(auth_pb2.BeginConnectRequest(location_id="loc-1")))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id is required" in missing.details()
    unknown = await rejected(
        world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="nobody", location_id="loc-1"))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "UpsertUser" in unknown.details()


async def test_other_locations_are_permission_denied(world: AuthWorld) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    outsider = world.stub(locations=("loc-9",))

    for call in (
        outsider.GetConnection(auth_pb2.GetConnectionRequest(location_id="loc-1", user_id="u1")),
        outsider.ListUsers(auth_pb2.ListUsersRequest(location_id="loc-1")),
        outsider.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id="loc-1")),
        outsider.UpsertUser(
            auth_pb2.UpsertUserRequest(
                user=auth_pb2.User(
                    user_id="u2", crm_email="u2@crm.example.com", location_ids=["loc-1"], version=1
                )
            )
        ),
    ):
        error = await rejected(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # A connection id from another location is reported missing, not shown.
    connection = await world.connection_of("u1", "loc-1")
    other_location = await rejected(
        world.crm.GetConnection(
            auth_pb2.GetConnectionRequest(location_id="loc-2", connection_id=connection.connection_id)
        )
    )
    assert other_location.code() == grpc.StatusCode.NOT_FOUND


async def test_list_users_finds_users_by_crm_or_connected_address_and_pages(world: AuthWorld) -> None:
    for n in range(5):
        await world.add_user(f"u{n}")
    await world.connect("u3", "loc-1", ALICE)

    by_mailbox = await world.crm.ListUsers(
        auth_pb2.ListUsersRequest(location_id="loc-1", email="ALICE@example.com")
    )
    assert [u.user_id for u in by_mailbox.users] == ["u3"]
    by_crm = await world.crm.ListUsers(
        auth_pb2.ListUsersRequest(location_id="loc-1", email="u1@crm.example.com")
    )
    assert [u.user_id for u in by_crm.users] == ["u1"]
    elsewhere = await world.crm.ListUsers(auth_pb2.ListUsersRequest(location_id="loc-2", email=ALICE))
    assert list(elsewhere.users) == []

    seen, token = [], ""
    while True:
        page = await world.crm.ListUsers(
            auth_pb2.ListUsersRequest(location_id="loc-1", page_size=2, page_token=token)
        )
        seen += [u.user_id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"u{n}" for n in range(5)]


async def test_get_access_token_and_get_mailbox_are_for_internal_callers_only(world: AuthWorld) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id

    for call in (
        world.crm.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id)),
        world.crm.GetMailbox(auth_pb2.GetMailboxRequest(mailbox_id=mailbox_id)),
    ):
        error = await rejected(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(error).reason == "INTERNAL_ONLY_METHOD"

    issued = await world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id))
    assert issued.mailbox_email == ALICE and "https://www.googleapis.com/auth/gmail.send" in issued.scopes
    async with world.http.get(
        world.sandbox.url + "/gmail/v1/users/me/profile",
        headers={"Authorization": f"Bearer {issued.access_token}"},
    ) as response:
        assert response.status == 200 and (await response.json())["emailAddress"] == ALICE
    mailbox = await world.internal.GetMailbox(auth_pb2.GetMailboxRequest(email=ALICE))
    assert mailbox.mailbox.mailbox_id == mailbox_id
    assert [c.user_id for c in mailbox.mailbox.connections] == ["u1"]


async def test_concurrent_get_access_token_from_two_auth_processes_cause_one_refresh_and_log_no_token(
    world: AuthWorld,
    nats_server: Any,
    token_keys_value: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id
    replica_settings = auth_settings(
        nats_url=nats_server.url,
        database=world.database,
        token_keys_value=token_keys_value,
        data_dir=tmp_path / "replica",
        sandbox=world.sandbox,
        http_port=free_port(),
        grpc_port=free_port(),
        token_keys=world.settings.token_keys,
        redirect_port=world.settings.http_port,
        log_level="DEBUG",
    )
    replica = await start_auth_process(replica_settings, tmp_path / "replica.log")
    try:
        replica_stub = world.stub(locations=("*",), internal=True, port=replica.port)
        await world.expire_access_tokens()
        before = world.tokens_issued(ALICE)

        request = auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id)
        answers = await asyncio.gather(
            *(stub.GetAccessToken(request) for stub in [world.internal, replica_stub] * 4)
        )

        assert world.tokens_issued(ALICE) == before + 1
        assert len({answer.access_token for answer in answers}) == 1
    finally:
        await replica.stop()
    secrets = [answers[0].access_token, await refresh_token_of(world, ALICE)]
    logs = caplog.text + replica.log_text()
    assert "service started" in replica.log_text()  # the replica's own log was written, and is searched
    assert not [secret for secret in secrets if secret in logs]


async def refresh_token_of(world: AuthWorld, address: str) -> str:
    async with world.service.components.database.read() as session:
        mailbox = await find_mailbox_by_email(session, address)
        assert mailbox is not None
        cipher = TokenCipher(KeyRing.parse(world.settings.token_keys))
        token = await load_refresh_token(session, cipher, mailbox.mailbox_id)
    assert token is not None
    return token.reveal()


async def test_R12_password_change_requires_reauth_once_then_reconnect_keeps_the_cursor(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    first = await world.connection_of("u1", "loc-1")
    await world.events.wait_for(1)
    world.sandbox.admin.change_password(ALICE, "new-password")
    await world.expire_access_tokens()
    request = auth_pb2.GetAccessTokenRequest(mailbox_id=first.mailbox_id)

    error = await rejected(world.internal.GetAccessToken(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "REAUTH_REQUIRED"
    issued_before_retry = world.tokens_issued(ALICE)
    again = await rejected(world.internal.GetAccessToken(request))
    assert error_info(again).reason == "REAUTH_REQUIRED"
    assert world.tokens_issued(ALICE) == issued_before_retry
    waiting = await world.connection_of("u1", "loc-1")
    assert waiting.state == common_pb2.CONNECTION_STATE_REAUTH_REQUIRED and waiting.reconnect_required
    assert "invalid_grant" in waiting.last_error

    page = await world.connect("u1", "loc-1", ALICE)
    assert page.status == 200
    back = await world.connection_of("u1", "loc-1")
    assert back.state == CONNECTED and back.connection_id == first.connection_id
    assert back.start_history_id == first.start_history_id
    assert (await world.internal.GetAccessToken(request)).access_token
    await world.events.wait_for(3)
    assert world.events.kinds() == ["connected", "reauth_required", "reauthorized"]
    reauth_event = world.events.received[1][1]
    assert (
        reauth_event.reason and reauth_event.connection.state == common_pb2.CONNECTION_STATE_REAUTH_REQUIRED
    )


async def test_R10_update_email_replaces_the_connection_and_revokes_the_unused_old_grant(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    old = await world.connection_of("u1", "loc-1")

    begun = await world.crm.UpdateEmail(auth_pb2.UpdateEmailRequest(user_id="u1", location_id="loc-1"))
    page = await world.open_callback(world.consent(begun.authorization_url, BOB))

    assert page.status == 200
    new = await world.connection_of("u1", "loc-1")
    assert new.mailbox_email == BOB and new.connection_id != old.connection_id
    replaced = await world.crm.GetConnection(
        auth_pb2.GetConnectionRequest(location_id="loc-1", connection_id=old.connection_id)
    )
    assert replaced.connection.state == common_pb2.CONNECTION_STATE_REPLACED
    assert replaced.connection.replaced_by_connection_id == new.connection_id
    received = await world.events.wait_for(3)
    assert sorted(world.events.kinds()) == ["connected", "connected", "replaced"]
    replaced_event = next(e for s, e in received if ".replaced." in s)
    assert (
        replaced_event.mailbox_id == old.mailbox_id
        and replaced_event.replaced_by_connection_id == new.connection_id
    )
    assert AUTH_WATCHED(world) == {BOB}
    error = await rejected(
        world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=old.mailbox_id))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    nothing = await rejected(
        world.crm.UpdateEmail(auth_pb2.UpdateEmailRequest(user_id="u1", location_id="loc-2"))
    )
    assert nothing.code() == grpc.StatusCode.FAILED_PRECONDITION and "use BeginConnect" in nothing.details()


async def test_R3_R10_update_email_keeps_the_old_grant_that_another_location_still_uses(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    await world.connect("u1", "loc-2", ALICE)
    in_l1, in_l2 = await world.connection_of("u1", "loc-1"), await world.connection_of("u1", "loc-2")
    assert in_l1.mailbox_id == in_l2.mailbox_id and in_l1.connection_id != in_l2.connection_id

    begun = await world.crm.UpdateEmail(auth_pb2.UpdateEmailRequest(user_id="u1", location_id="loc-1"))
    assert (await world.open_callback(world.consent(begun.authorization_url, BOB))).status == 200

    assert (await world.connection_of("u1", "loc-1")).mailbox_email == BOB
    assert (await world.connection_of("u1", "loc-2")).connection_id == in_l2.connection_id
    assert AUTH_WATCHED(world) == {ALICE, BOB}
    request = auth_pb2.GetAccessTokenRequest(mailbox_id=in_l1.mailbox_id)
    assert (await world.internal.GetAccessToken(request)).mailbox_email == ALICE


async def test_R3_R11_disconnect_revokes_only_when_no_other_connection_uses_the_mailbox(
    world: AuthWorld,
) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    await world.connect("u1", "loc-2", ALICE)
    mailbox_id = (await world.connection_of("u1", "loc-1")).mailbox_id

    first = await world.crm.Disconnect(auth_pb2.DisconnectRequest(location_id="loc-1", user_id="u1"))
    assert first.connection.state == common_pb2.CONNECTION_STATE_DISCONNECTED and not first.grant_revoked
    assert AUTH_WATCHED(world) == {ALICE}
    assert (
        await world.internal.GetAccessToken(auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id))
    ).access_token

    second = await world.crm.Disconnect(auth_pb2.DisconnectRequest(location_id="loc-2", user_id="u1"))
    assert second.connection.state == common_pb2.CONNECTION_STATE_DISCONNECTED and second.grant_revoked
    assert AUTH_WATCHED(world) == set()
    await world.events.wait_for(4)
    assert world.events.kinds() == ["connected", "connected", "disconnected", "disconnected"]
    last = world.events.received[-1][1]
    assert [c.state for c in last.mailbox_connections] == [common_pb2.CONNECTION_STATE_DISCONNECTED] * 2

    listed = await world.crm.ListConnections(
        auth_pb2.ListConnectionsRequest(location_id="loc-1", state=common_pb2.CONNECTION_STATE_DISCONNECTED)
    )
    assert [c.connection_id for c in listed.connections] == [first.connection.connection_id]


async def test_renew_watches_reports_a_status_per_mailbox(world: AuthWorld) -> None:
    await world.add_user("u1")
    await world.connect("u1", "loc-1", ALICE)
    await world.connect("u1", "loc-2", BOB)

    not_due = await world.internal.RenewWatches(auth_pb2.RenewWatchesRequest())
    assert list(not_due.statuses) == []
    alice_mailbox = (await world.connection_of("u1", "loc-1")).mailbox_id
    forced = await world.internal.RenewWatches(
        auth_pb2.RenewWatchesRequest(force=True, mailbox_ids=[alice_mailbox])
    )
    assert [(s.mailbox_email, s.outcome) for s in forced.statuses] == [
        (ALICE, auth_pb2.WATCH_RENEWAL_OUTCOME_RENEWED)
    ]

    world.clock.advance(dt.timedelta(days=1, minutes=1))
    renewed = await world.internal.RenewWatches(auth_pb2.RenewWatchesRequest())
    assert {(s.mailbox_email, s.outcome) for s in renewed.statuses} == {
        (ALICE, auth_pb2.WATCH_RENEWAL_OUTCOME_RENEWED),
        (BOB, auth_pb2.WATCH_RENEWAL_OUTCOME_RENEWED),
    }
    denied = await rejected(world.crm.RenewWatches(auth_pb2.RenewWatchesRequest()))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
