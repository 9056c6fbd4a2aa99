"""The production TXT lookup against a real DNS server on loopback, and DKIM verified through it (R9)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from services.ingest.dns_txt import dns_txt_lookup
from services.ingest.domain.bcc import DropPolicy, DropRefusalReason, DropRefused, check_author
from tests.fixtures.dkim_keys import DkimSigner, drop_message

SIGNER = DkimSigner(domain="example.com")
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


class _Zone(asyncio.DatagramProtocol):
    """Answers TXT queries from a dict; long records are served as several strings, as real zones do."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        record = self.records.get(question.name.to_text().rstrip("."))
        if record is None or question.rdtype != dns.rdatatype.TXT:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            chunks = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", chunks))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def zone_port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Zone(SIGNER.records), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_txt_lookup_joins_a_split_key_record(zone_port: int) -> None:
    lookup = dns_txt_lookup(nameservers=("127.0.0.1",), port=zone_port, timeout_seconds=3)

    record = await asyncio.to_thread(lookup, "s1._domainkey.example.com")

    assert record == SIGNER.records["s1._domainkey.example.com"]
    assert len(record) > 200
    assert await asyncio.to_thread(lookup, "missing._domainkey.example.com") is None


async def test_R9_dkim_verified_through_real_dns_authenticates_and_a_tampered_drop_does_not(
    zone_port: int,
) -> None:
    lookup = dns_txt_lookup(nameservers=("127.0.0.1",), port=zone_port, timeout_seconds=3)
    policy = DropPolicy(drop_domain="drop.crm.example")
    raw = SIGNER.sign(drop_message(date=NOW - dt.timedelta(minutes=1)))

    author = await asyncio.to_thread(check_author, raw, policy, NOW, lookup)
    assert (author.email, author.method) == ("alice@example.com", "dkim-verified")

    tampered = raw.replace(b"proposal.", b"invoice.")
    with pytest.raises(DropRefused) as refused:
        await asyncio.to_thread(check_author, tampered, policy, NOW, lookup)
    assert refused.value.reason is DropRefusalReason.NOT_AUTHENTICATED
