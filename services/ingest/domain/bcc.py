"""BCC-drop admission rules (R9): the per-location address token, and who may log mail through it.

A drop is accepted only when its envelope recipient carries the location's current token, the message is
not oversized nor a stale replay, its single From address is authenticated for its domain with DMARC
alignment, and that address belongs to a user of the location. Every refusal is a `DropRefused` with a
reason code and a sentence that becomes the SMTP reply and the R16 explanation.

Alignment is a simplification of DMARC's relaxed mode that needs no Public Suffix List: the authenticated
domain must equal the From domain or one must be a subdomain of the other (mail.example.com and example.com
align; two sibling subdomains do not, which only ever refuses, never admits, more than DMARC would).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from email import policy as email_policy
from email.message import Message
from email.parser import BytesHeaderParser

import authres
import dkim

from services.ingest.domain.mime_addresses import AddressReader
from services.ingest.domain.mime_bounds import bound_raw_message
from services.ingest.domain.mime_headers import header_date, raw_values
from services.ingest.domain.mime_limits import MimeLimits

DROP_LOCAL_PART = "bcc"
_TOKEN_BYTES = 20
_TOKEN = re.compile(r"^[a-z2-7]{32}$")
_HEADER_LIMITS = MimeLimits()
_FOLD = re.compile(r"\r\n|\r|\n")
# The authserv-id is the first token of an Authentication-Results value (RFC 8601 section 2.2).
_AUTHSERV_ID = re.compile(r"\s*(?:\([^()]*\)\s*)*([^\s;()]+)")
# Two line ends in a row: where a header block ends (the body may not be needed to check a drop's author).
_BLANK_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_HEADER_WINDOW_SLACK = 64 * 1024
# Real headers are far shorter; the parser is quadratic in the words of a hostile one.
_MAX_AUTHENTICATION_RESULTS_CHARS = 8 * 1024

# Looks up the TXT record of a DNS name (a DKIM key record); None when there is none.
DnsTxtLookup = Callable[[str], str | None]


class DropRefusalReason(enum.Enum):
    UNKNOWN_RECIPIENT = "unknown_recipient"
    TOO_LARGE = "too_large"
    LINE_TOO_LONG = "line_too_long"
    MALFORMED_AUTHOR = "malformed_author"
    STALE = "stale"
    NOT_AUTHENTICATED = "not_authenticated"
    SENDER_NOT_A_USER = "sender_not_a_user"


# SMTP reply code and enhanced status (RFC 3463, RFC 7372) per reason.
_SMTP_STATUS = {
    DropRefusalReason.UNKNOWN_RECIPIENT: (550, "5.1.1"),
    DropRefusalReason.TOO_LARGE: (552, "5.3.4"),
    # RFC 5321 4.5.3.1.6: "500 Line too long".
    DropRefusalReason.LINE_TOO_LONG: (500, "5.5.2"),
    DropRefusalReason.MALFORMED_AUTHOR: (550, "5.6.0"),
    DropRefusalReason.STALE: (550, "5.7.1"),
    DropRefusalReason.NOT_AUTHENTICATED: (550, "5.7.26"),
    DropRefusalReason.SENDER_NOT_A_USER: (550, "5.7.1"),
}


class DropRefused(Exception):
    """The drop is refused; `explanation` is one sentence for the sender and for the R16 explanation."""

    def __init__(self, reason: DropRefusalReason, explanation: str) -> None:
        super().__init__(explanation)
        self.reason = reason
        self.explanation = explanation

    @property
    def smtp_code(self) -> int:
        return _SMTP_STATUS[self.reason][0]

    @property
    def smtp_reply(self) -> str:
        code, status = _SMTP_STATUS[self.reason]
        return f"{code} {status} {self.explanation}"


@dataclass(frozen=True)
class DropPolicy:
    """How drops are checked; one per deployment."""

    drop_domain: str
    # authserv-ids of the receiving hosts whose Authentication-Results are trusted (e.g. "mx.google.com");
    # empty when mail reaches the listener directly, so that only DKIM verified here counts.
    trusted_authserv_ids: tuple[str, ...] = ()
    max_message_bytes: int = 25 * 1024 * 1024
    max_age: dt.timedelta = dt.timedelta(days=3)
    max_future_skew: dt.timedelta = dt.timedelta(minutes=15)
    max_dkim_signatures: int = 5


@dataclass(frozen=True)
class AuthenticatedAuthor:
    """The From address of a drop and how it was proven."""

    email: str
    domain: str
    # "dmarc", "dkim" or "spf" from the trusted Authentication-Results, or "dkim-verified" when checked here.
    method: str
    authenticated_domain: str


def new_drop_token() -> str:
    """A fresh unguessable token (160 bits, lower-case base32: survives MTAs that lower-case local parts)."""
    return base64.b32encode(secrets.token_bytes(_TOKEN_BYTES)).decode("ascii").rstrip("=").lower()


def drop_address(token: str, drop_domain: str) -> str:
    return f"{DROP_LOCAL_PART}+{token}@{drop_domain.lower()}"


def token_digest(token: str) -> str:
    """What the store looks locations up by: no query ever compares the secret itself."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def drop_token_of(envelope_recipient: str, drop_domain: str) -> str:
    """The token in a drop address, or DropRefused(UNKNOWN_RECIPIENT) when it is not one."""
    address = envelope_recipient.strip().strip("<>").lower()
    local, _, domain = address.rpartition("@")
    prefix = DROP_LOCAL_PART + "+"
    token = local[len(prefix) :] if local.startswith(prefix) else ""
    if domain != drop_domain.lower() or not _TOKEN.match(token):
        raise _unknown_recipient()
    return token


def check_token(token: str, current_digest: str | None) -> None:
    """Refuse unless `token` is the location's current one (a rotated-out token finds no current digest)."""
    if current_digest is None or not hmac.compare_digest(token_digest(token), current_digest):
        raise _unknown_recipient()


def check_size(size_bytes: int, policy: DropPolicy) -> None:
    if size_bytes > policy.max_message_bytes:
        raise too_large(policy)


def too_large(policy: DropPolicy) -> DropRefused:
    """The refusal of a drop over the size limit (declared at MAIL FROM, or found while DATA streams in)."""
    limit = policy.max_message_bytes
    size = f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit / 2**10:g} KB"
    return DropRefused(
        DropRefusalReason.TOO_LARGE, f"The message is larger than the {size} a BCC drop accepts."
    )


def line_too_long(max_line_bytes: int) -> DropRefused:
    return DropRefused(
        DropRefusalReason.LINE_TOO_LONG,
        f"A line of the message is longer than {max_line_bytes} bytes; mail must be wrapped (RFC 5321 allows "
        "1,000 bytes per line).",
    )


def header_too_large() -> DropRefused:
    """A header block over the caps: what was cut could hold a second author, so the drop cannot be checked."""
    return DropRefused(DropRefusalReason.MALFORMED_AUTHOR, "The message's header is too large to be checked.")


def check_author(
    raw: bytes, policy: DropPolicy, now: dt.datetime, dns_txt: DnsTxtLookup | None
) -> AuthenticatedAuthor:
    """Check size, freshness and authentication of a drop; return its authenticated author or refuse.

    `dns_txt` enables DKIM verification here (None: only trusted Authentication-Results count).
    """
    check_size(len(raw), policy)
    headers = _headers(raw)
    author_email, author_domain = _single_author(headers)
    _check_fresh(headers, policy, now)
    candidate = _trusted_results(headers, policy, author_domain)
    if candidate is None:
        candidate = _verified_dkim(raw, headers, author_domain, policy, dns_txt)
    if candidate is not None:
        method, authenticated_domain = candidate
        return AuthenticatedAuthor(author_email, author_domain, method, authenticated_domain)
    raise DropRefused(
        DropRefusalReason.NOT_AUTHENTICATED,
        f"The message is not authenticated for {author_domain}: no DMARC-aligned DKIM or SPF pass "
        "from the trusted receiving host, and no aligned DKIM signature verified.",
    )


def check_sender_is_user(author: AuthenticatedAuthor, user_id: str | None) -> str:
    """The user of the location the author is (looked up by the caller), or refuse a stranger."""
    if not user_id:
        raise DropRefused(
            DropRefusalReason.SENDER_NOT_A_USER,
            f"The sender {author.email} is not a user of this location; only its users can log mail "
            "through its BCC address.",
        )
    return user_id


def aligned(authenticated_domain: str, author_domain: str) -> bool:
    """Relaxed alignment without a Public Suffix List: equal, or one a subdomain of the other."""
    a, b = authenticated_domain.lower().strip("."), author_domain.lower().strip(".")
    if not a or not b or "." not in a or "." not in b:
        return False
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _unknown_recipient() -> DropRefused:
    return DropRefused(
        DropRefusalReason.UNKNOWN_RECIPIENT,
        "This BCC address is not valid (it may have been rotated); ask for the location's current one.",
    )


def _headers(raw: bytes) -> Message:
    """The header block, refused when a limit had to trim it: what was cut could hold a second author.

    Only the bytes up to the first blank line are parsed (a drop of 25 MB is not read whole for its header);
    a longer header block than the cap allows is cut there too, and refused as too large."""
    window = raw[: _HEADER_LIMITS.max_header_block_bytes + _HEADER_WINDOW_SLACK]
    blank = _BLANK_LINE.search(window)
    bounded = bound_raw_message(window if blank is None else window[: blank.end()], _HEADER_LIMITS)
    if any(defect.startswith("limit:header") or defect == "limit:addresses" for defect in bounded.defects):
        raise header_too_large()
    return BytesHeaderParser(policy=email_policy.compat32).parsebytes(bounded.data)


def _single_author(headers: Message) -> tuple[str, str]:
    """The one From address, read strictly: anything the parser found odd in it could hide another author."""
    defects: list[str] = []
    authors = AddressReader(_HEADER_LIMITS).read(headers, "from", defects)
    if len(raw_values(headers, "from")) != 1 or len(authors) != 1 or not authors[0].clean or defects:
        raise DropRefused(
            DropRefusalReason.MALFORMED_AUTHOR, "The message must have exactly one readable From address."
        )
    email_address = authors[0].email
    return email_address, email_address.rpartition("@")[2]


def _check_fresh(headers: Message, policy: DropPolicy, now: dt.datetime) -> None:
    defects: list[str] = []
    sent = header_date(headers, defects)
    if sent is None:
        raise DropRefused(
            DropRefusalReason.STALE, "The message has no readable Date, so a replay cannot be ruled out."
        )
    if sent < now - policy.max_age:
        hours = int(policy.max_age.total_seconds() // 3600)
        raise DropRefused(
            DropRefusalReason.STALE,
            f"The message is dated more than {hours} hours ago; old messages are refused as possible replays.",
        )
    if sent > now + policy.max_future_skew:
        raise DropRefused(DropRefusalReason.STALE, "The message is dated in the future; it is refused.")


def _trusted_results(headers: Message, policy: DropPolicy, author_domain: str) -> tuple[str, str] | None:
    """An aligned pass in the topmost Authentication-Results of a trusted host (lower ones are forgeable)."""
    trusted = {host.lower() for host in policy.trusted_authserv_ids}
    for value in raw_values(headers, "authentication-results"):
        value = _FOLD.sub("", value)
        authserv_id = _AUTHSERV_ID.match(value)
        if authserv_id is None or authserv_id.group(1).lower() not in trusted:
            continue
        # This is the topmost header of the trusted host: it alone decides, even when it cannot be read.
        if len(value) > _MAX_AUTHENTICATION_RESULTS_CHARS:
            return None
        try:
            results = authres.parse_value(value)
        except Exception:
            return None
        return _aligned_pass(results.results, author_domain) if results.authserv_id in trusted else None
    return None


def _aligned_pass(results: list[object], author_domain: str) -> tuple[str, str] | None:
    passes: dict[str, list[str]] = {"dmarc": [], "dkim": [], "spf": []}
    for result in results:
        method = getattr(result, "method", "")
        if method not in passes or getattr(result, "result", "") != "pass":
            continue
        for prop in getattr(result, "properties", []):
            domain = _property_domain(method, prop.type, prop.name, str(prop.value or ""))
            if domain:
                passes[method].append(domain)
    for domain in passes["dmarc"]:
        if domain == author_domain:
            return "dmarc", domain
    for method in ("dkim", "spf"):
        for domain in passes[method]:
            if aligned(domain, author_domain):
                return method, domain
    return None


def _property_domain(method: str, ptype: str, name: str, value: str) -> str:
    wanted = {
        "dmarc": {("header", "from")},
        "dkim": {("header", "d"), ("header", "i")},
        "spf": {("smtp", "mailfrom")},
    }[method]
    if (ptype, name) not in wanted:
        return ""
    return value.strip().lower().rpartition("@")[2]


def _verified_dkim(
    raw: bytes, headers: Message, author_domain: str, policy: DropPolicy, dns_txt: DnsTxtLookup | None
) -> tuple[str, str] | None:
    """Verify the message's DKIM signatures here; the first valid one aligned with the author counts."""
    if dns_txt is None:
        return None
    signatures = len(raw_values(headers, "dkim-signature"))

    def dkimpy_lookup(name: bytes, timeout: int = 5) -> bytes | None:
        record = dns_txt(name.decode("ascii", "replace").rstrip("."))
        return record.encode("ascii", "replace") if record is not None else None

    for index in range(min(signatures, policy.max_dkim_signatures)):
        verifier = dkim.DKIM(raw)
        try:
            valid = verifier.verify(idx=index, dnsfunc=dkimpy_lookup)
        except Exception:  # a malformed signature or key record is simply not a pass
            continue
        signer = (verifier.domain or b"").decode("ascii", "replace").lower()
        if valid and aligned(signer, author_domain):
            return "dkim-verified", signer
    return None
