"""Email address and Message-ID normalization, the one place that decides when two addresses are the same.

Decision (documented here and in docs): an address is trimmed and lower-cased as a whole (the local part is
case-sensitive in theory, never in practice). For the consumer Gmail domains (gmail.com, googlemail.com) the
local part also loses its dots and everything from the first `+`, and googlemail.com becomes gmail.com, because
Gmail delivers all those spellings to one mailbox. Other domains keep their local part as written (a company's
server may treat dots and `+` as significant), only lower-cased.
"""

from __future__ import annotations

from functools import lru_cache

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


# Both are pure functions of a string that a batch asks about the same strings many times: remembered.
@lru_cache(maxsize=65536)
def normalize_email(address: str) -> str:
    """The comparison form of an address; an unparseable one is only trimmed and lower-cased."""
    cleaned = address.strip().strip("<>").strip().lower()
    local, at, domain = cleaned.rpartition("@")
    if not at or not local or not domain:
        return cleaned
    if domain in _GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


@lru_cache(maxsize=65536)
def normalize_message_id(message_id: str) -> str:
    """A Message-ID in its header form `<...>` without surrounding space; empty stays empty."""
    cleaned = "".join(message_id.split())
    if not cleaned:
        return ""
    if not cleaned.startswith("<"):
        cleaned = "<" + cleaned
    if not cleaned.endswith(">"):
        cleaned = cleaned + ">"
    return cleaned
