"""Address tricks: the address the rules use is the addr-spec a receiving MTA and DMARC see (RFC 5322, RFC 2047).

An encoded word is never structure, a display name never supplies the address, groups never supply an author.
"""

from __future__ import annotations

import base64
import email.utils
from email import policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain.message import ParticipantRole
from services.ingest.domain.mime import normalize_message
from services.ingest.domain.mime_addresses import (
    ReadAddress,
    parse_address_list,
    simple_address_list,
)
from services.ingest.domain.mime_words import ENCODED_WORD_ATOM

SPECIALS = '()<>[]:;@\\,."'
SPOOF = "=?utf-8?q?x:ceo@company.test;?= <attacker@evil.test>"


def senders(raw_from: str) -> list[str]:
    raw = f"From: {raw_from}\r\nTo: me@crm.test\r\nSubject: s\r\n\r\nbody\r\n".encode()
    return [p.email for p in normalize_message(raw).participants_in(ParticipantRole.FROM)]


def test_an_encoded_word_holding_a_group_and_an_address_is_only_a_display_name() -> None:
    mail = normalize_message(f"From: {SPOOF}\r\nSubject: s\r\n\r\nbody".encode())

    [author] = mail.participants_in(ParticipantRole.FROM)
    assert author.email == "attacker@evil.test"
    assert author.display_name == "x:ceo@company.test;"


def test_negative_control_parsing_after_decoding_or_with_getaddresses_takes_the_spoofed_sender() -> None:
    # The two classic readings this header was built to fool: both make ceo@company.test the first sender.
    assert email.utils.getaddresses([SPOOF])[0][1] == "ceo@company.test"
    decoded_first = "x:ceo@company.test; <attacker@evil.test>"
    assert email.utils.getaddresses([decoded_first])[0][1] == "ceo@company.test"
    # The modern stdlib parser (which follows RFC 2047 here) agrees with ours.
    assert [a.addr_spec for a in policy.default.header_factory("from", SPOOF).addresses] == [
        "attacker@evil.test"
    ]


@pytest.mark.parametrize(
    ("raw_from", "expected"),
    [
        (SPOOF, ["attacker@evil.test"]),
        # The same trick in base64, in a quoted string, and with the structure spelled in the word's encoding.
        (
            "=?utf-8?b?" + base64.b64encode(b"ceo@company.test").decode() + "?= <attacker@evil.test>",
            ["attacker@evil.test"],
        ),
        ('"ceo@company.test" <attacker@evil.test>', ["attacker@evil.test"]),
        ('"=?utf-8?q?ceo@company.test?=" <attacker@evil.test>', ["attacker@evil.test"]),
        ("=?utf-8?q?x=3Aceo=40company=2Etest=3B?= <attacker@evil.test>", ["attacker@evil.test"]),
        # An unquoted address as the display name: the angle address is the mailbox.
        ("ceo@company.test <attacker@evil.test>", ["attacker@evil.test"]),
        # A group in From (RFC 5322 allows none there): its members are no author.
        ("Board: ceo@company.test;", []),
        ("=?utf-8?q?x?=: ceo@company.test; <attacker@evil.test>", ["attacker@evil.test"]),
        # A route, a comment and obsolete spacing: only the addr-spec.
        ("<@relay.test,@other.test:attacker@evil.test>", ["attacker@evil.test"]),
        ("attacker@evil.test (ceo@company.test)", ["attacker@evil.test"]),
        ("attacker @ evil.test", ["attacker@evil.test"]),
        ('"ceo@company.test"@evil.test', ['"ceo@company.test"@evil.test']),
    ],
)
def test_address_tricks_give_the_addr_spec_an_mta_would_deliver_to(
    raw_from: str, expected: list[str]
) -> None:
    assert senders(raw_from) == expected


@pytest.mark.parametrize(
    ("value", "emails"),
    [
        ("a@x.io, b@y.io", ["a@x.io", "b@y.io"]),
        ('"Doe, Jane" <jane@x.io>, bob@y.io', ["jane@x.io", "bob@y.io"]),
        ("bob@y.io (Bob, the builder), c@z.io", ["bob@y.io", "c@z.io"]),
        ('"a \\" b, c" <q@x.io>', ["q@x.io"]),
        ("team: a@x.io, b@y.io;, c@z.io", ["a@x.io", "b@y.io", "c@z.io"]),
        ("<@route,@relay:u@x.io>", ["u@x.io"]),
        ("undisclosed-recipients:;", []),
        (' ,, "unterminated, x@y.io', []),
        ("=?utf-8?q?Doe,_Jane?= <jane@x.io>, =?utf-8?q?a;b?= <b@y.io>", ["jane@x.io", "b@y.io"]),
        ("Ann <ANN@X.IO>", ["ann@x.io"]),
    ],
)
def test_recipient_lists_split_only_where_the_grammar_does(value: str, emails: list[str]) -> None:
    assert [address.email for address in parse_address_list(value)] == emails


@pytest.mark.parametrize(
    ("value", "clean"),
    [
        ("Alice <alice@example.com>", True),
        ('"Alice, A." <alice@example.com>', True),
        ("=?utf-8?q?Alice?= <alice@example.com>", True),
        ("alice@example.org)<bob@example.org>", False),
        ("Alice <alice@example.com> trailing", False),
        ("Alice <alice@example.com", False),
        ('"Alice <alice@example.com>', False),
        ("A <a@example.com> <b@example.com>", False),
        ("ceo@company.test <attacker@evil.test>", False),
    ],
)
def test_what_the_grammar_had_to_recover_from_marks_the_address_not_clean(value: str, clean: bool) -> None:
    addresses = parse_address_list(value, mailbox_list=True)
    assert [address.clean for address in addresses][:1] == ([clean] if addresses else [])
    assert addresses or not clean


def test_display_names_decode_adjacent_words_together_and_keep_word_spacing() -> None:
    # One UTF-8 character split across two words, the space between words dropped (RFC 2047 6.2).
    value = "=?utf-8?b?w6k=?= =?utf-8?q?t=C3?= =?utf-8?q?=A9?= Dupont <e@x.io>"
    [address] = parse_address_list(value)
    assert address.display_name == "été Dupont"
    [quoted] = parse_address_list('"Dupont,   Jean" <j@x.io>')
    assert quoted.display_name == "Dupont, Jean"


# Display names: every special character, whitespace, the encoded-word markers, non-ASCII.
display_names = (
    st.lists(
        st.sampled_from([*SPECIALS, " ", "=?", "?=", "?", "=", "_", "a", "Z", "é", "日", "\t", SPOOF]),
        min_size=1,
        max_size=20,
    )
    .map("".join)
    .filter(lambda name: name.strip())
)
local_parts = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,10}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
domains = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){1,2}", fullmatch=True)
addr_specs = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b_word(name: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(name.encode()).decode() + "?="


def _q_word_proper(name: str) -> str:
    # RFC 2047 5(3): in a phrase only letters, digits and !*+-/ stay literal.
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
    encoded = "".join(c if c in safe else "".join(f"={b:02X}" for b in c.encode()) for c in name)
    return f"=?utf-8?q?{encoded}?="


def _q_word_hostile(name: str) -> str:
    # Specials left raw inside the word (invalid, and the spoof's trick); only what would end the word is escaped.
    escaped = "".join(
        "".join(f"={b:02X}" for b in c.encode()) if c in "?= \t_" or not c.isascii() else c for c in name
    )
    return f"=?utf-8?q?{escaped}?="


ENCODINGS = {"quoted": _quoted, "b": _b_word, "q": _q_word_proper, "q-raw-specials": _q_word_hostile}


@settings(max_examples=400, deadline=None)
@given(name=display_names, address=addr_specs, encoding=st.sampled_from(sorted(ENCODINGS)))
def test_no_display_name_changes_the_parsed_address(name: str, address: str, encoding: str) -> None:
    """The property the issue asks for: whatever the display name holds, encoded or quoted, the address stays."""
    written = f"{ENCODINGS[encoding](name)} <{address}>"

    assert [a.email for a in parse_address_list(written, mailbox_list=True)] == [address]
    assert senders(written) == [address]
    # (Encoded words inside quotes are decoded, as Outlook means them, so such a name does not round-trip.)
    if encoding != "q-raw-specials" and not (encoding == "quoted" and ENCODED_WORD_ATOM.search(name)):
        [read] = parse_address_list(written)
        assert read.display_name == " ".join(name.split()), "the name round-trips (whitespace collapsed)"


@settings(max_examples=150, deadline=None)
@given(
    recipients=st.lists(
        st.tuples(display_names, addr_specs, st.sampled_from(sorted(ENCODINGS))), min_size=1, max_size=6
    )
)
def test_no_display_name_changes_the_parsed_to_and_cc_lists(recipients: list[tuple[str, str, str]]) -> None:
    value = ", ".join(f"{ENCODINGS[encoding](name)} <{address}>" for name, address, encoding in recipients)
    raw = f"From: me@crm.test\r\nTo: {value}\r\nCc: {value}\r\n\r\nbody".encode()

    mail = normalize_message(raw)

    expected = list(dict.fromkeys(address for _, address, _ in recipients))
    assert [p.email for p in mail.participants_in(ParticipantRole.TO)] == expected
    assert [p.email for p in mail.participants_in(ParticipantRole.CC)] == expected


_address_piece = st.sampled_from(
    [
        "a",
        "Bob",
        "x.y",
        "@",
        ".",
        "<",
        ">",
        '"',
        " ",
        "-",
        "ex.org",
        "b@c.io",
        "J.",
        "=",
        "?",
        "(",
        ")",
        "\\",
        ",",
        ":",
        ";",
    ]
)
_well_formed_address = st.builds(
    lambda name, local, domain, form: [
        f"{local}@{domain}",
        f"<{local}@{domain}>",
        f"{name} <{local}@{domain}>",
        f'"{name}, jr" <{local}@{domain}>',
    ][form],
    st.text(alphabet="ab .-Z'", max_size=8),
    st.text(alphabet="abXYZ09!#$%&'*+/=?^_`{|}~-.", max_size=6),
    st.text(alphabet="ab.-9", max_size=8),
    st.integers(0, 3),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_address_piece | _well_formed_address, max_size=6).map(", ".join))
def test_the_fast_reader_of_common_shapes_agrees_with_the_grammar(value: str) -> None:
    fast = simple_address_list(value)
    if fast is not None:
        assert fast == parse_address_list(value)


def test_negative_control_the_fast_reader_declines_what_it_cannot_read() -> None:
    assert simple_address_list(SPOOF) is None
    assert simple_address_list("team: a@x.io;") is None
    assert simple_address_list("Bob <b@x.io>, c@y.io") == [
        ReadAddress("b@x.io", "Bob", True),
        ReadAddress("c@y.io", "", True),
    ]
