"""The DNS TXT lookup the BCC-drop DKIM check uses in production (dnspython, blocking: call it off the loop)."""

from __future__ import annotations

import dns.exception
import dns.resolver

from services.ingest.domain.bcc import DnsTxtLookup


def dns_txt_lookup(
    *, nameservers: tuple[str, ...] = (), port: int = 53, timeout_seconds: float = 5.0
) -> DnsTxtLookup:
    """A TXT lookup through the system resolver, or through `nameservers` when given (tests, split DNS)."""
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = list(nameservers)
        resolver.port = port

    def lookup(name: str) -> str | None:
        try:
            answer = resolver.resolve(name, "TXT", lifetime=timeout_seconds, search=False)
        except (dns.exception.DNSException, OSError):
            # No record, no such name, or no answer in time: the signature simply cannot be verified.
            return None
        for record in answer:
            # A long key is split into several strings of one record; they are concatenated (RFC 6376 3.6.2.2).
            return b"".join(record.strings).decode("ascii", "replace")
        return None

    return lookup
