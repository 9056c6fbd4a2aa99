"""R9 over a real SMTP conversation: smtplib on loopback against the ingest BCC-drop listener.

The location-token store and the user directory are in-memory stand-ins for ports whose real adapters
(ingest's store, auth's ListUsers) are wired in app.py; everything from the socket to the sink is real.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from services.ingest.bcc_drop import AcceptedDrop, BccDropAdmission, DropLocation
from services.ingest.domain.bcc import DropPolicy, drop_address, new_drop_token, token_digest
from services.ingest.smtp import start_smtp_listener
from services.runtime.clock import FrozenClock
from tests.fixtures.dkim_keys import DkimSigner, drop_message

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
DROP_DOMAIN = "drop.crm.example"
TRUSTED = "mx.google.com"
SIGNER = DkimSigner(domain="example.com")
STRANGER = DkimSigner(domain="stranger.example")
PASS = (f"{TRUSTED}; dmarc=pass header.from=example.com",)


@dataclass
class Directory:
    """Current token digest per location, and the users of each location by address."""

    tokens: dict[str, str] = field(default_factory=dict)
    users: dict[tuple[str, str], str] = field(default_factory=dict)
    drops: list[AcceptedDrop] = field(default_factory=list)

    def rotate(self, location_id: str) -> str:
        token = new_drop_token()
        self.tokens[location_id] = token_digest(token)
        return drop_address(token, DROP_DOMAIN)

    async def location_for_token_digest(self, digest: str) -> DropLocation | None:
        for location_id, current in self.tokens.items():
            if current == digest:
                return DropLocation(location_id, current)
        return None

    async def user_for_address(self, location_id: str, email: str) -> str | None:
        return self.users.get((location_id, email))

    async def accept_drop(self, drop: AcceptedDrop) -> None:
        self.drops.append(drop)


@dataclass
class Listener:
    port: int
    directory: Directory
    address: str

    async def send(self, raw: bytes, *, to: str | None = None) -> dict[str, tuple[int, bytes]]:
        return await asyncio.to_thread(self._send, raw, to or self.address)

    def _send(self, raw: bytes, to: str) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            return client.sendmail("alice@example.com", [to], raw)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    directory = Directory()
    address = directory.rotate("loc-1")
    directory.users[("loc-1", "alice@example.com")] = "user-alice"
    admission = BccDropAdmission(
        policy=DropPolicy(
            drop_domain=DROP_DOMAIN, trusted_authserv_ids=(TRUSTED,), max_message_bytes=64 * 1024
        ),
        locations=directory,
        users=directory,
        sink=directory,
        dns_txt=lambda name: SIGNER.lookup(name) or STRANGER.lookup(name),
        clock=FrozenClock(NOW),
    )
    server = await start_smtp_listener(admission, host="127.0.0.1", port=0, hostname="drop.test")
    try:
        yield Listener(server.sockets[0].getsockname()[1], directory, address)
    finally:
        server.close()
        await server.wait_closed()


def fresh(**kwargs: object) -> bytes:
    return drop_message(date=NOW - dt.timedelta(minutes=2), **kwargs)  # type: ignore[arg-type]


async def test_R9_smtp_drop_from_a_user_with_dkim_verified_here_is_accepted(listener: Listener) -> None:
    raw = SIGNER.sign(fresh())

    assert await listener.send(raw) == {}

    (drop,) = listener.directory.drops
    assert (drop.location_id, drop.sender_user_id, drop.author.method) == (
        "loc-1",
        "user-alice",
        "dkim-verified",
    )
    assert drop.envelope_recipient == listener.address
    assert b"Here is the proposal." in drop.raw


async def test_R9_smtp_drop_from_a_user_with_trusted_authentication_results_is_accepted(
    listener: Listener,
) -> None:
    await listener.send(fresh(authentication_results=PASS))

    assert [d.author.method for d in listener.directory.drops] == ["dmarc"]


async def test_R9_smtp_drop_from_a_stranger_is_refused_with_a_reason(listener: Listener) -> None:
    # Properly DKIM-signed by its own domain: authenticated, but not a user of the location.
    raw = STRANGER.sign(fresh(author="someone@stranger.example"))

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(raw)

    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 The sender someone@stranger.example is not a user")
    assert listener.directory.drops == []


async def test_R9_smtp_drop_from_a_former_user_is_refused(listener: Listener) -> None:
    listener.directory.users.clear()

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(fresh(authentication_results=PASS))

    assert b"5.7.1 The sender alice@example.com is not a user of this location" in refused.value.smtp_error
    assert listener.directory.drops == []


async def test_R9_smtp_drop_with_only_a_forged_lower_authentication_results_pass_is_refused(
    listener: Listener,
) -> None:
    forged = (f"{TRUSTED}; dmarc=fail header.from=example.com", *PASS)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(fresh(authentication_results=forged))

    assert (refused.value.smtp_code, refused.value.smtp_error[:6]) == (550, b"5.7.26")
    assert listener.directory.drops == []
    # Negative control: with the pass on top (where only the trusted host writes) the same drop is accepted.
    await listener.send(fresh(authentication_results=forged[::-1]))
    assert len(listener.directory.drops) == 1


async def test_R9_smtp_wrong_or_rotated_token_is_refused_at_rcpt(listener: Listener) -> None:
    wrong = drop_address(new_drop_token(), DROP_DOMAIN)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await listener.send(fresh(authentication_results=PASS), to=wrong)
    ((code, reply),) = refused.value.recipients.values()
    assert code == 550 and reply.startswith(b"5.1.1 This BCC address is not valid")

    old = listener.address
    listener.address = listener.directory.rotate("loc-1")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await listener.send(fresh(authentication_results=PASS), to=old)
    assert listener.directory.drops == []
    await listener.send(fresh(authentication_results=PASS))
    assert len(listener.directory.drops) == 1


async def test_R9_smtp_stale_replay_is_refused(listener: Listener) -> None:
    stale = drop_message(date=NOW - dt.timedelta(days=30), authentication_results=PASS)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(stale)

    assert refused.value.smtp_code == 550 and b"replay" in refused.value.smtp_error
    assert listener.directory.drops == []


async def test_R9_smtp_size_limit_is_enforced_during_the_session(listener: Listener) -> None:
    big = fresh(authentication_results=PASS) + (b"x" * 76 + b"\r\n") * 1100

    # A client that declares the size (SIZE extension) is refused at MAIL FROM.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await listener.send(big)
    assert refused.value.smtp_code == 552

    # A client that does not is cut off while DATA streams in.
    def send_without_size() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
            client.ehlo()
            client.mail("alice@example.com")
            client.rcpt(listener.address)
            return client.data(big)

    code, reply = await asyncio.to_thread(send_without_size)
    assert (code, reply) == (552, b"Error: Too much mail data")
    assert listener.directory.drops == []


async def test_R9_smtp_a_failing_location_lookup_is_a_temporary_refusal(listener: Listener) -> None:
    async def unavailable(digest: str) -> DropLocation | None:
        raise ConnectionError("store is down")

    listener.directory.location_for_token_digest = unavailable  # type: ignore[method-assign]

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await listener.send(fresh(authentication_results=PASS))

    ((code, reply),) = refused.value.recipients.values()
    assert code == 451 and b"try again later" in reply
    assert b"store is down" not in reply
