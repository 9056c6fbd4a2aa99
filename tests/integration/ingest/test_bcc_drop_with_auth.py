"""R9 against the real auth service: the sender of a drop must be a user of the location (CRM address or
connected mailbox), asked through ListUsers; the whole drop goes over SMTP on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
from dataclasses import dataclass, field

import pytest

from services.ingest.bcc_drop import AcceptedDrop, BccDropAdmission, DropLocation
from services.ingest.domain.bcc import DropPolicy, drop_address, new_drop_token, token_digest
from services.ingest.location_users import AuthLocationUsers
from services.ingest.smtp import start_smtp_listener
from services.runtime.clock import FrozenClock
from services.runtime.grpc_client import StaticToken, open_channel
from tests.fixtures.auth_service import AuthWorld
from tests.fixtures.dkim_keys import DkimSigner, drop_message

ALICE = "alice@example.com"
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
SIGNER = DkimSigner(domain="example.com")
STRANGER = DkimSigner(domain="stranger.example")


@dataclass
class OneLocation:
    """The token store and the sink (ingest's own, in-memory here); users come from the real auth service."""

    location_id: str
    token: str = field(default_factory=new_drop_token)
    drops: list[AcceptedDrop] = field(default_factory=list)

    async def location_for_token_digest(self, digest: str) -> DropLocation | None:
        current = token_digest(self.token)
        return DropLocation(self.location_id, current) if digest == current else None

    async def accept_drop(self, drop: AcceptedDrop) -> None:
        self.drops.append(drop)


@pytest.fixture
def users(auth_world: AuthWorld) -> AuthLocationUsers:
    token = auth_world.keys.mint("ingest", ("*",), internal=True)
    channel = open_channel(f"127.0.0.1:{auth_world.service.port}", token=StaticToken(token))
    auth_world.channels.append(channel)
    return AuthLocationUsers(channel)


async def test_R9_auth_knows_crm_addresses_and_connected_mailboxes_per_location(
    auth_world: AuthWorld, users: AuthLocationUsers
) -> None:
    auth_world.sandbox.create_mailbox(ALICE)
    await auth_world.add_user("u1", locations=("loc-1",))
    await auth_world.add_user("u2", locations=("loc-2",))
    assert (await auth_world.connect("u1", "loc-1", ALICE)).status == 200

    assert await users.user_for_address("loc-1", "u1@crm.example.com") == "u1"
    assert await users.user_for_address("loc-1", ALICE) == "u1"
    assert await users.user_for_address("loc-1", "u2@crm.example.com") is None
    assert await users.user_for_address("loc-2", ALICE) is None
    assert await users.user_for_address("loc-1", "someone@stranger.example") is None


async def test_R9_smtp_drop_accepted_from_a_connected_mailbox_and_refused_from_a_stranger(
    auth_world: AuthWorld, users: AuthLocationUsers
) -> None:
    auth_world.sandbox.create_mailbox(ALICE)
    await auth_world.add_user("u1", locations=("loc-1",))
    assert (await auth_world.connect("u1", "loc-1", ALICE)).status == 200
    location = OneLocation("loc-1")
    admission = BccDropAdmission(
        policy=DropPolicy(drop_domain="drop.crm.example"),
        locations=location,
        users=users,
        sink=location,
        dns_txt=lambda name: SIGNER.lookup(name) or STRANGER.lookup(name),
        clock=FrozenClock(NOW),
    )
    server = await start_smtp_listener(admission, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    address = drop_address(location.token, "drop.crm.example")

    def send(raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("sender@example.org", [address], raw)

    try:
        sent = NOW - dt.timedelta(minutes=1)
        await asyncio.to_thread(send, SIGNER.sign(drop_message(author=ALICE, date=sent)))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await asyncio.to_thread(
                send, STRANGER.sign(drop_message(author="someone@stranger.example", date=sent))
            )
    finally:
        server.close()
        await server.wait_closed()

    assert [(d.location_id, d.sender_user_id, d.author.email) for d in location.drops] == [
        ("loc-1", "u1", ALICE)
    ]
    assert refused.value.smtp_code == 550
    assert b"someone@stranger.example is not a user of this location" in refused.value.smtp_error
