"""Validation at the API edge: each kind of value, the whole-request walk, undecodable requests, page tokens,
and the table itself (every request field of every RPC is declared, and nothing else is)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from mailsync.v1 import auth_pb2, ingest_pb2, outbound_pb2, threading_pb2
from services.runtime.api_limits import CURSOR, EMAIL, FIELD_RULES, ID
from services.runtime.errors import InvalidArgument
from services.runtime.validation import (
    UndecodableRequest,
    decode_page_token,
    encode_page_token,
    invalid_argument,
    tolerant_deserializer,
    validate_message,
)

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (auth_pb2, "AuthService"),
        (ingest_pb2, "IngestService"),
        (outbound_pb2, "OutboundService"),
        (threading_pb2, "ThreadingService"),
    )
]


@pytest.mark.parametrize(
    "address",
    [
        "bob@crm.test",
        "Bob.Smith+sales@Example.COM",
        "o'neil@example.org",
        '"john doe"@example.com',
        "user@bücher.example",
        "ünïcode@example.com",
        "a@" + "b" * 63 + ".example",
    ],
)
def test_addr_specs_are_accepted(address: str) -> None:
    assert EMAIL.problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "not an email\r\nBcc: x@y",
        "not-an-email",
        "u2@crm",
        "@example.com",
        "bob@",
        "a..b@example.com",
        ".a@example.com",
        "bob@-example.com",
        "bob@exa_mple.com",
        "bob@[192.0.2.1]",
        "bob@example.123",
        "a" * 65 + "@example.com",
        "b@" + "c" * 250 + ".com",
        "bob\x00@example.com",
        '"unterminated@example.com',
    ],
)
def test_other_strings_are_not_email_addresses(address: str) -> None:
    assert EMAIL.problem(address) is not None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("loc-a", True),
        ("contact-1a2b:x@y+z=~.", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("with space", False),
        ("slash/", False),
        ("ünï", False),
        ("nul\x00", False),
    ],
)
def test_ids_are_bounded_and_use_a_fixed_character_set(value: str, ok: bool) -> None:
    assert (ID.problem(value) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("0", True),
        ("9223372036854775807", True),
        ("9223372036854775808", False),
        ("9" * 40, False),
        ("-1", False),
        ("١٢٣", False),
    ],
)
def test_cursors_fit_the_feeds_64_bit_sequence(value: str, ok: bool) -> None:
    assert (CURSOR.problem(value) is None) is ok


def violations_of(message: object) -> list[tuple[str, str]]:
    return [(v.field, v.problem) for v in validate_message(message, FIELD_RULES)]  # type: ignore[arg-type]


def test_a_request_walk_names_nested_and_repeated_fields() -> None:
    request = threading_pb2.UpsertContactRequest(
        contact=threading_pb2.Contact(
            contact_id="c" * 70,
            location_id="loc-a",
            emails=[
                threading_pb2.ContactEmail(email="ok@example.com"),
                threading_pb2.ContactEmail(email="not an email\r\nBcc: x@y"),
            ],
        )
    )
    found = violations_of(request)
    assert [field for field, _ in found] == ["contact.contact_id", "contact.emails[1].email"]
    assert "ccc" not in str(found)


def test_unknown_enum_values_and_impossible_timestamps_are_refused() -> None:
    listing = auth_pb2.ListConnectionsRequest(location_id="loc-a", state=99)  # type: ignore[arg-type]
    assert [f for f, _ in violations_of(listing)] == ["state"]
    user = auth_pb2.UpsertUserRequest(user=auth_pb2.User(user_id="u", crm_email="u@crm.test"))
    user.user.update_time.seconds = 253402300800  # year 10000
    assert [f for f, _ in violations_of(user)] == ["user.update_time"]
    # Negative control: a defined value and a representable instant pass.
    listing.state = 1  # type: ignore[assignment]
    user.user.update_time.seconds = 0
    assert violations_of(listing) == [] and violations_of(user) == []


def test_counts_maps_nul_and_integer_ranges_are_enforced() -> None:
    push = ingest_pb2.HandlePushRequest()
    for n in range(65):
        push.message.attributes[f"k{n}"] = "v"
    assert [f for f, _ in violations_of(push)] == ["message.attributes"]
    send = outbound_pb2.SendEmailRequest(text_body="a\x00b", reply_references=["<r@x>"] * 101)
    assert {f for f, _ in violations_of(send)} == {"text_body", "reply_references"}
    assert [f for f, _ in violations_of(threading_pb2.DeleteContactRequest(version=-1))] == ["version"]


def test_violations_become_one_invalid_argument_naming_the_first_and_listing_all() -> None:
    error = invalid_argument(
        validate_message(outbound_pb2.SendEmailRequest(location_id="x y", user_id="ü"), FIELD_RULES)
    )
    assert isinstance(error, InvalidArgument)
    assert (
        error.message.startswith("location_id: must use only the characters")
        and "(and 1 more)" in error.message
    )
    assert [field for field, _ in error.violations] == ["location_id", "user_id"]


def test_an_undecodable_request_names_the_field_with_bad_utf8() -> None:
    deserialize = tolerant_deserializer(threading_pb2.UpsertContactRequest.FromString)
    assert deserialize is not None
    good = threading_pb2.UpsertContactRequest(
        contact=threading_pb2.Contact(
            emails=[threading_pb2.ContactEmail(email="aa"), threading_pb2.ContactEmail(email="bb")]
        )
    ).SerializeToString()
    broken = good.replace(b"bb", b"\xff\xfe")
    decoded = deserialize(broken)
    assert decoded == UndecodableRequest("mailsync.v1.UpsertContactRequest", "contact.emails[1].email")
    assert decoded.error().message.startswith("contact.emails[1].email: is not valid UTF-8")
    # Negative control: the unmodified bytes decode to the message.
    assert isinstance(deserialize(good), threading_pb2.UpsertContactRequest)
    assert deserialize(b"\x0a\x7f").field == ""


def test_page_tokens_round_trip_and_tampered_ones_are_refused() -> None:
    token = encode_page_token(["2026-01-01T00:00:00+00:00", "c1"])
    assert decode_page_token(token, parts=2) == ("2026-01-01T00:00:00+00:00", "c1")
    assert decode_page_token("", parts=2) is None
    tampered = [
        "%%%",
        encode_page_token(["only-one"]),
        encode_page_token(["a", "nul\x00"]),
        encode_page_token(["a", "x" * 300]),
    ]
    for bad in tampered:
        with pytest.raises(InvalidArgument, match="pass next_page_token unchanged"):
            decode_page_token(bad, parts=2)


def _request_fields() -> dict[str, FieldDescriptor]:
    found: dict[str, FieldDescriptor] = {}

    def walk(message: object) -> None:
        for field in message.fields:  # type: ignore[attr-defined]
            if field.full_name in found:
                continue
            found[field.full_name] = field
            if field.message_type is not None and not field.message_type.full_name.startswith("google."):
                if field.message_type.GetOptions().map_entry:
                    continue
                walk(field.message_type)

    for service in SERVICES:
        for method in service.methods:
            walk(method.input_type)
    return found


def test_every_request_field_of_every_rpc_has_a_declared_limit() -> None:
    fields = _request_fields()
    needs_rule = [
        name
        for name, field in fields.items()
        if field.type not in (FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM)
        and (field.message_type is None or field.is_repeated)
        and name not in FIELD_RULES
    ]
    assert needs_rule == [], "declare these fields in services/runtime/api_limits.py"
    unknown = sorted(set(FIELD_RULES) - set(fields))
    assert unknown == [], "services/runtime/api_limits.py names fields no request has"
