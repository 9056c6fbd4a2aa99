"""R9 over a real SMTP conversation: smtplib (and raw sockets) on loopback against the ingest BCC-drop listener.

The location-token store, the user directory and the refusal log are in-memory stand-ins for ports whose real
adapters (ingest's store, auth's ListUsers, the drop log) are wired in drop_pipeline; everything from the socket to
the sink is real. Also: refusals at every SMTP stage reach the refusal log, the session and drop caps, STARTTLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.ingest.bcc_drop import AcceptedDrop, BccDropAdmission, DropLocation
from services.ingest.domain.bcc import DropPolicy, DropRefused, drop_address, new_drop_token, token_digest
from services.ingest.smtp import CertificateFiles, ListenerLimits, start_smtp_listener
from services.runtime.clock import FrozenClock
from tests.fixtures.dkim_keys import DkimSigner, drop_message
from tests.fixtures.smtp_server import self_signed_certificate

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
    # (location, reason, size) of every refusal logged.
    refusals: list[tuple[str, str, int]] = field(default_factory=list)
    # Drops being checked right now, and the most ever at once.
    checking: int = 0
    most_at_once: int = 0

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
        self.checking += 1
        self.most_at_once = max(self.most_at_once, self.checking)
        await asyncio.sleep(0.2)  # widens the window in which drops would overlap (no assertion on time)
        self.checking -= 1
        self.drops.append(drop)

    async def log_refusal(
        self,
        location_id: str,
        head: bytes,
        envelope_sender: str,
        refused: DropRefused,
        *,
        size: int,
        content_digest: str,
    ) -> None:
        self.refusals.append((location_id, refused.reason.value, size))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.refusals]


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
async def start_listener() -> AsyncIterator[Callable[..., object]]:
    """`await start_listener(limits=..., tls=..., require_starttls=...)` -> Listener; closed at teardown."""
    servers: list[asyncio.Server] = []

    async def start(**options: object) -> Listener:
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
            refusals=directory,
        )
        server = await start_smtp_listener(
            admission, host="127.0.0.1", port=0, hostname="drop.test", **options
        )  # type: ignore[arg-type]
        servers.append(server)
        return Listener(server.sockets[0].getsockname()[1], directory, address)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def listener(start_listener: Callable[..., object]) -> Listener:
    return await start_listener()  # type: ignore[no-any-return,misc]


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


async def test_R16_smtp_size_limit_is_enforced_during_the_session_and_every_refusal_logged(
    listener: Listener,
) -> None:
    big = fresh(authentication_results=PASS) + (b"x" * 76 + b"\r\n") * 1100

    # A client that declares the size (SIZE extension) is refused at RCPT, where the location is known.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await listener.send(big)
    ((code, reply),) = refused.value.recipients.values()
    assert code == 552 and reply.startswith(b"5.3.4 The message is larger than the 64 KB")

    # A client that does not is cut off while DATA streams in, and told so after the final dot.
    def send_without_size() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
            client.ehlo()
            client.mail("alice@example.com")
            client.rcpt(listener.address)
            return client.data(big)

    code, reply = await asyncio.to_thread(send_without_size)
    assert code == 552 and reply.startswith(b"5.3.4 The message is larger than the 64 KB")
    assert listener.directory.drops == []
    assert [(location, reason) for location, reason, _ in listener.directory.refusals] == [
        ("loc-1", "too_large"),
        ("loc-1", "too_large"),
    ]
    # Negative control: the same drop within the limit is accepted and logs no refusal.
    await listener.send(fresh(authentication_results=PASS))
    assert len(listener.directory.drops) == 1 and len(listener.directory.refusals) == 2


async def test_R16_a_line_too_long_is_refused_after_the_data_and_logged(listener: Listener) -> None:
    raw = fresh(authentication_results=PASS).replace(b"Here is the proposal.", b"y" * 9000)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(raw)

    assert refused.value.smtp_code == 500 and refused.value.smtp_error.startswith(
        b"5.5.2 A line of the message"
    )
    assert listener.directory.reasons() == ["line_too_long"]
    assert listener.directory.drops == []


async def test_R16_a_header_flood_is_refused_while_it_is_read_and_logged(listener: Listener) -> None:
    flood = b"".join(b"X-Flood-%d: v\r\n" % i for i in range(1500))
    raw = flood + fresh(authentication_results=PASS)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(raw)

    assert refused.value.smtp_code == 550 and b"header is too large" in refused.value.smtp_error
    assert listener.directory.reasons() == ["malformed_author"]


async def test_R16_a_date_out_of_range_is_a_refusal_with_a_log_line_not_a_temporary_failure(
    listener: Listener,
) -> None:
    raw = fresh(authentication_results=PASS)
    dated = raw.replace(
        raw[raw.index(b"Date: ") : raw.index(b"\r\n", raw.index(b"Date: "))],
        b"Date: Fri, 31 Dec 9999 23:59:59 -1200",
    )

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await listener.send(dated)

    assert refused.value.smtp_code == 550 and b"no readable Date" in refused.value.smtp_error
    assert listener.directory.reasons() == ["stale"]


async def test_pipelined_commands_after_the_final_dot_are_answered(listener: Listener) -> None:
    """The listener reads DATA in large chunks; what the client sent after the dot is the next command."""
    raw = fresh(authentication_results=PASS)

    def conversation() -> bytes:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            stream = sock.makefile("rwb")
            stream.readline()
            for command in (
                b"EHLO client.test",
                b"MAIL FROM:<alice@example.com>",
                f"RCPT TO:<{listener.address}>".encode(),
                b"DATA",
            ):
                stream.write(command + b"\r\n")
                stream.flush()
                while stream.readline()[3:4] == b"-":
                    pass  # the continuation lines of a multi-line reply
            # The content, the end of data and two more commands in one write.
            stream.write(raw + b".\r\nRSET\r\nQUIT\r\n")
            stream.flush()
            return b"".join(stream.readline() for _ in range(3))

    replies = await asyncio.to_thread(conversation)

    assert replies.splitlines() == [b"250 2.0.0 Logged into the CRM", b"250 OK", b"221 Bye"]
    assert len(listener.directory.drops) == 1
    assert listener.directory.drops[0].raw == raw.replace(b"\r\n..", b"\r\n.")


async def test_a_dot_stuffed_drop_arrives_unstuffed(listener: Listener) -> None:
    raw = fresh(authentication_results=PASS).replace(b"Here is the proposal.", b".leading dot\r\n..two\r\n.")

    await listener.send(raw)

    assert listener.directory.drops[0].raw == raw


async def test_sessions_beyond_the_cap_are_told_to_retry(start_listener: Callable[..., object]) -> None:
    listener: Listener = await start_listener(limits=ListenerLimits(max_sessions=1))  # type: ignore[misc]

    def two_sessions() -> int:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as first:
            greeting = first.makefile("rb").readline()
            assert greeting.startswith(b"220")
            with smtplib.SMTP(timeout=10) as second:
                code, _ = second.connect("127.0.0.1", listener.port)
                return int(code)

    second_code = await asyncio.to_thread(two_sessions)

    assert second_code == 421
    # Control: once the first session ended, a new one is served and its drop accepted.
    await listener.send(fresh(authentication_results=PASS))
    assert len(listener.directory.drops) == 1


async def test_drops_are_checked_at_most_n_at_once_and_all_accepted(
    start_listener: Callable[..., object],
) -> None:
    listener: Listener = await start_listener(limits=ListenerLimits(max_concurrent_drops=1))  # type: ignore[misc]
    drops = [fresh(authentication_results=PASS).replace(b"Proposal", b"Proposal %d" % i) for i in range(4)]

    await asyncio.gather(*(listener.send(raw) for raw in drops))

    assert len(listener.directory.drops) == 4
    assert listener.directory.most_at_once == 1


async def test_starttls_with_a_certificate_from_files_and_required_before_mail(
    start_listener: Callable[..., object], tmp_path: Path
) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    listener: Listener = await start_listener(  # type: ignore[misc]
        tls=CertificateFiles(certificate, key), require_starttls=True
    )
    client_context = ssl.create_default_context(cafile=str(certificate))

    def over_tls() -> bool:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
            client.starttls(context=client_context)
            client.sendmail("alice@example.com", [listener.address], fresh(authentication_results=PASS))
            return client.sock is not None and isinstance(client.sock, ssl.SSLSocket)

    def in_clear() -> None:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
            client.sendmail("alice@example.com", [listener.address], fresh(authentication_results=PASS))

    assert await asyncio.to_thread(over_tls)
    assert len(listener.directory.drops) == 1
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await asyncio.to_thread(in_clear)
    assert refused.value.smtp_code == 530
    assert len(listener.directory.drops) == 1


async def test_R9_smtp_a_failing_location_lookup_is_a_temporary_refusal(listener: Listener) -> None:
    async def unavailable(digest: str) -> DropLocation | None:
        raise ConnectionError("store is down")

    listener.directory.location_for_token_digest = unavailable  # type: ignore[method-assign]

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await listener.send(fresh(authentication_results=PASS))

    ((code, reply),) = refused.value.recipients.values()
    assert code == 451 and b"try again later" in reply
    assert b"store is down" not in reply
