"""R9 BCC-drop admission rules: token, size, freshness, authentication with alignment, and the sender's membership."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain.bcc import (
    AuthenticatedAuthor,
    DropPolicy,
    DropRefusalReason,
    DropRefused,
    aligned,
    check_author,
    check_sender_is_user,
    check_size,
    check_token,
    drop_address,
    drop_token_of,
    new_drop_token,
    token_digest,
)
from tests.fixtures.dkim_keys import DkimSigner, drop_message

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
FRESH = NOW - dt.timedelta(minutes=3)
TRUSTED = "mx.google.com"
POLICY = DropPolicy(drop_domain="drop.crm.example", trusted_authserv_ids=(TRUSTED,))
SIGNER = DkimSigner(domain="example.com")


def _refusal(call: object, *args: object) -> DropRefused:
    with pytest.raises(DropRefused) as refused:
        call(*args)  # type: ignore[operator]
    return refused.value


def test_R9_a_drop_address_carries_its_token_back() -> None:
    token = new_drop_token()
    address = drop_address(token, "Drop.CRM.example")

    assert address == f"bcc+{token}@drop.crm.example"
    assert drop_token_of(f"<{address.upper()}>", "drop.crm.example") == token


def test_R9_tokens_are_long_random_and_distinct() -> None:
    tokens = {new_drop_token() for _ in range(200)}

    assert len(tokens) == 200
    assert all(len(token) == 32 and token.isalnum() and token == token.lower() for token in tokens)


@pytest.mark.parametrize(
    "recipient",
    [
        "bcc+{token}@other.example",
        "bcc@drop.crm.example",
        "bcc+short@drop.crm.example",
        "sales+{token}@drop.crm.example",
        "bcc+{token}x@drop.crm.example",
        "",
    ],
)
def test_R9_a_recipient_that_is_not_a_drop_address_is_refused(recipient: str) -> None:
    refusal = _refusal(drop_token_of, recipient.format(token=new_drop_token()), "drop.crm.example")

    assert refusal.reason is DropRefusalReason.UNKNOWN_RECIPIENT
    assert refusal.smtp_reply.startswith("550 5.1.1 ")


def test_R9_the_current_token_is_accepted_and_a_rotated_or_wrong_one_refused() -> None:
    old, current = new_drop_token(), new_drop_token()
    stored = token_digest(current)

    check_token(current, stored)
    for presented, digest in ((old, stored), (new_drop_token(), stored), (current, None)):
        assert _refusal(check_token, presented, digest).reason is DropRefusalReason.UNKNOWN_RECIPIENT


def test_R9_an_oversized_drop_is_refused_with_552() -> None:
    refusal = _refusal(check_size, POLICY.max_message_bytes + 1, POLICY)

    assert refusal.reason is DropRefusalReason.TOO_LARGE
    assert refusal.smtp_reply.startswith("552 5.3.4 ")
    check_size(POLICY.max_message_bytes, POLICY)


AUTH_CASES = [
    # (case, Authentication-Results top to bottom, accepted method or refusal)
    ("dmarc pass from the trusted host", (f"{TRUSTED}; dmarc=pass header.from=example.com",), "dmarc"),
    ("aligned dkim pass (parent domain)", (f"{TRUSTED}; dkim=pass header.d=example.com",), "dkim"),
    ("aligned dkim pass (subdomain)", (f"{TRUSTED}; dkim=pass header.i=@mail.example.com",), "dkim"),
    ("aligned spf pass", (f"{TRUSTED}; spf=pass smtp.mailfrom=bounces@example.com",), "spf"),
    (
        "top trusted fails, a forged lower one passes",
        (f"{TRUSTED}; dmarc=fail header.from=example.com", f"{TRUSTED}; dmarc=pass header.from=example.com"),
        None,
    ),
    ("pass from an untrusted host", ("evil.example; dmarc=pass header.from=example.com",), None),
    (
        "untrusted host above a failing trusted one",
        (
            "relay.example; dmarc=pass header.from=example.com",
            f"{TRUSTED}; dmarc=fail header.from=example.com",
        ),
        None,
    ),
    ("dmarc fail", (f"{TRUSTED}; dmarc=fail header.from=example.com",), None),
    ("dmarc pass for another domain", (f"{TRUSTED}; dmarc=pass header.from=other.example",), None),
    ("unaligned dkim pass", (f"{TRUSTED}; dkim=pass header.d=evil.example",), None),
    ("unaligned spf pass", (f"{TRUSTED}; spf=pass smtp.mailfrom=bounce@mailer.example",), None),
    (
        "dkim pass for a subdomain of the author's domain",
        (f"{TRUSTED}; dkim=pass header.d=a.example.com",),
        "dkim",
    ),
    ("no authentication at all", (), None),
    (
        "unreadable trusted header on top of a forged readable pass",
        (
            f"{TRUSTED}; dmarc=pass (unclosed header.from=example.com",
            f"{TRUSTED}; dmarc=pass header.from=example.com",
        ),
        None,
    ),
    (
        "oversized trusted header",
        (f"{TRUSTED}; dmarc=pass header.from=example.com" + " x=y" * 3000,),
        None,
    ),
    (
        "trusted host named after a comment",
        (f"(relay) {TRUSTED}; dmarc=pass header.from=example.com",),
        "dmarc",
    ),
    ("unparseable trusted header", (f"{TRUSTED} dmarc pass",), None),
]


@pytest.mark.parametrize(("results", "outcome"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES])
def test_R9_only_the_topmost_trusted_authentication_results_with_alignment_authenticates(
    results: tuple[str, ...], outcome: str | None
) -> None:
    raw = drop_message(date=FRESH, authentication_results=results)

    if outcome is None:
        refusal = _refusal(check_author, raw, POLICY, NOW, None)
        assert refusal.reason is DropRefusalReason.NOT_AUTHENTICATED
        assert refusal.smtp_reply.startswith("550 5.7.26 ")
        assert "example.com" in refusal.explanation
    else:
        assert check_author(raw, POLICY, NOW, None).method == outcome


def test_R9_sibling_subdomains_do_not_align() -> None:
    raw = drop_message(
        author="alice@b.example.com",
        date=FRESH,
        authentication_results=(f"{TRUSTED}; dkim=pass header.d=a.example.com",),
    )

    assert _refusal(check_author, raw, POLICY, NOW, None).reason is DropRefusalReason.NOT_AUTHENTICATED


def test_R9_negative_control_a_naive_any_pass_rule_would_accept_the_forged_message() -> None:
    forged = (
        f"{TRUSTED}; dmarc=fail header.from=example.com",
        f"{TRUSTED}; dmarc=pass header.from=example.com",
    )
    raw = drop_message(date=FRESH, authentication_results=forged)

    assert b"dmarc=pass header.from=example.com" in raw
    # The same pass, moved to the top where only the trusted host can put it, is accepted.
    assert check_author(drop_message(date=FRESH, authentication_results=forged[::-1]), POLICY, NOW, None)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("example.com", "example.com", True),
        ("mail.example.com", "example.com", True),
        ("example.com", "mail.example.com", True),
        ("a.example.com", "b.example.com", False),
        ("evil-example.com", "example.com", False),
        ("com", "example.com", False),
        ("", "example.com", False),
    ],
)
def test_R9_alignment_is_equality_or_subdomain(a: str, b: str, expected: bool) -> None:
    assert aligned(a, b) is expected


def test_R9_dkim_verified_here_authenticates_without_any_authentication_results() -> None:
    raw = SIGNER.sign(drop_message(date=FRESH))

    author = check_author(raw, POLICY, NOW, SIGNER.lookup)

    assert author == AuthenticatedAuthor("alice@example.com", "example.com", "dkim-verified", "example.com")


@pytest.mark.parametrize("tamper", ["body", "subject", "key", "no_resolver", "no_record"])
def test_R9_dkim_verified_here_refuses_a_broken_signature(tamper: str) -> None:
    raw = SIGNER.sign(drop_message(date=FRESH))
    lookup = SIGNER.lookup
    if tamper == "body":
        raw = raw.replace(b"Here is the proposal.", b"Here is the invoice.")
    elif tamper == "subject":
        raw = raw.replace(b"Subject: Proposal", b"Subject: Invoice")
    elif tamper == "key":
        lookup = DkimSigner(domain="example.com").lookup
    elif tamper == "no_record":
        lookup = DkimSigner(domain="other.example").lookup

    refusal = _refusal(check_author, raw, POLICY, NOW, None if tamper == "no_resolver" else lookup)

    assert refusal.reason is DropRefusalReason.NOT_AUTHENTICATED


def test_R9_a_valid_dkim_signature_of_an_unaligned_domain_does_not_authenticate() -> None:
    evil = DkimSigner(domain="evil.example")
    raw = evil.sign(drop_message(date=FRESH))

    assert _refusal(check_author, raw, POLICY, NOW, evil.lookup).reason is DropRefusalReason.NOT_AUTHENTICATED
    # Negative control: the same signer does authenticate its own domain.
    assert check_author(
        evil.sign(drop_message(author="eve@evil.example", date=FRESH)), POLICY, NOW, evil.lookup
    )


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        (NOW - dt.timedelta(days=2, hours=23), True),
        (NOW - dt.timedelta(days=3, minutes=1), False),
        (NOW + dt.timedelta(minutes=10), True),
        (NOW + dt.timedelta(hours=1), False),
    ],
)
def test_R9_stale_or_future_dated_drops_are_refused_as_replays(sent: dt.datetime, accepted: bool) -> None:
    raw = drop_message(date=sent, authentication_results=(f"{TRUSTED}; dmarc=pass header.from=example.com",))

    if accepted:
        assert check_author(raw, POLICY, NOW, None).email == "alice@example.com"
    else:
        assert _refusal(check_author, raw, POLICY, NOW, None).reason is DropRefusalReason.STALE


def test_R9_an_undated_drop_is_refused() -> None:
    raw = drop_message(date=FRESH).replace(b"Date:", b"X-Date:")

    assert _refusal(check_author, raw, POLICY, NOW, None).reason is DropRefusalReason.STALE


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: alice@example.com, bob@example.com",
        b"From: not an address",
        b"X-No-From: x",
        # CVE-2023-27043: a lenient parser reads this as bob@example.org.
        b"From: alice@example.org)<bob@example.org>",
    ],
)
def test_R9_a_drop_without_exactly_one_author_is_refused(from_field: bytes) -> None:
    raw = drop_message(
        date=FRESH, authentication_results=(f"{TRUSTED}; dmarc=pass header.from=example.com",)
    ).replace(b"From: Alice <alice@example.com>", from_field)

    assert _refusal(check_author, raw, POLICY, NOW, None).reason is DropRefusalReason.MALFORMED_AUTHOR


@pytest.mark.parametrize(
    "padding",
    [
        b'"' + b"x" * 20_000 + b'" <alice@example.com>, eve@evil.example',
        b"alice@example.com, " * 1200 + b"eve@evil.example",
    ],
)
def test_R9_an_author_hidden_beyond_a_header_limit_is_refused(padding: bytes) -> None:
    raw = drop_message(date=FRESH, authentication_results=(f"{TRUSTED}; dmarc=pass header.from=example.com",))
    raw = raw.replace(b"From: Alice <alice@example.com>", b"From: " + padding)

    refusal = _refusal(check_author, raw, POLICY, NOW, None)

    assert refusal.reason is DropRefusalReason.MALFORMED_AUTHOR


def test_R9_the_author_is_the_address_never_the_display_name() -> None:
    raw = drop_message(date=FRESH, authentication_results=(f"{TRUSTED}; dmarc=pass header.from=example.com",))
    raw = raw.replace(b"From: Alice <alice@example.com>", b'From: "alice@example.com" <eve@evil.example>')

    refusal = _refusal(check_author, raw, POLICY, NOW, None)

    assert refusal.reason is DropRefusalReason.NOT_AUTHENTICATED
    assert "evil.example" in refusal.explanation


def test_R9_a_second_from_field_cannot_smuggle_an_author() -> None:
    raw = drop_message(date=FRESH, authentication_results=(f"{TRUSTED}; dmarc=pass header.from=example.com",))
    raw = raw.replace(b"Subject:", b"From: boss@example.com\r\nSubject:")

    assert _refusal(check_author, raw, POLICY, NOW, None).reason is DropRefusalReason.MALFORMED_AUTHOR


def test_R9_accepted_from_a_user_and_refused_from_a_stranger() -> None:
    author = AuthenticatedAuthor("alice@example.com", "example.com", "dmarc", "example.com")

    assert check_sender_is_user(author, "user-7") == "user-7"
    refusal = _refusal(check_sender_is_user, author, None)
    assert refusal.reason is DropRefusalReason.SENDER_NOT_A_USER
    assert refusal.smtp_reply == (
        "550 5.7.1 The sender alice@example.com is not a user of this location; only its users can log mail "
        "through its BCC address."
    )


_drop_noise = st.lists(
    st.sampled_from(
        [
            b"From: ",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from; bh=; b=",
            b"Authentication-Results: mx.google.com; ",
            b"dmarc=pass header.from=example.com",
            b"Date: Thu, 26 Nov 2026 11:58:00 +0000",
            b"alice@example.com",
            b'"',
            b"(",
            b"\r\n",
            b"\r\n\r\n",
            b",",
            b"=?utf-8?q?=0A?=",
        ]
    )
    | st.binary(max_size=16),
    max_size=30,
).map(b"".join)


@settings(max_examples=100, deadline=None)
@given(_drop_noise)
def test_R9_hostile_drops_are_admitted_or_refused_never_crash(raw: bytes) -> None:
    try:
        author = check_author(raw, POLICY, NOW, SIGNER.lookup)
    except DropRefused as refused:
        assert refused.smtp_reply[:3] in ("550", "552")
    else:
        assert author.domain == "example.com"
