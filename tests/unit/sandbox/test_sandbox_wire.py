"""Unit: the sandbox's wire parsing (batch parts with LF or CRLF, outer headers) and the search subset."""

from __future__ import annotations

import random

import pytest

from sandbox import mime
from sandbox.batch import inherited_headers, parse_inner
from sandbox.errors import GoogleApiError
from sandbox.multipart import split_parts
from sandbox.query import compile_query
from sandbox.state import MailState


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_batch_part_parses_with_either_line_ending(newline: str) -> None:
    body = newline.join(
        [
            "--b",
            "Content-Type: application/http",
            "Content-ID: <abc + 1>",
            "",
            "POST /gmail/v1/users/me/messages/m1/modify?alt=json HTTP/1.1",
            "Content-Type: application/json",
            "",
            '{"addLabelIds": ["STARRED"]}',
            "--b--",
            "",
        ]
    ).encode()
    [part] = split_parts(body, "b")
    content_id, request = parse_inner(
        part, inherited_headers({"Authorization": "Bearer outer", "Content-Type": "multipart/mixed"})
    )
    assert content_id == "<abc + 1>"
    assert (request.method, request.path, request.query["alt"]) == (
        "POST",
        "/gmail/v1/users/me/messages/m1/modify",
        "json",
    )
    assert request.body == b'{"addLabelIds": ["STARRED"]}'
    assert request.headers["authorization"] == "Bearer outer"
    assert request.headers["content-type"] == "application/json"


def test_part_header_overrides_the_outer_one() -> None:
    part = (
        b"Content-Type: application/http\n\nGET /gmail/v1/users/me/profile\nAuthorization: Bearer inner\n\n"
    )
    _, request = parse_inner(part, inherited_headers({"Authorization": "Bearer outer"}))
    assert request.headers["authorization"] == "Bearer inner"


@pytest.fixture
def mailbox_with_mail():
    now = [1_800_000_000_000]
    state = MailState(lambda: now[0], random.Random(3))
    box = state.create_mailbox("a@example.com", "pw")

    def deliver(subject: str, day: int, labels: list[str] | None = None, **extra):
        raw = mime.build_message(
            "Carol <carol@outside.test>", ["a@example.com"], subject, f"text of {subject}", **extra
        )
        return state.deliver_inbound("a@example.com", raw, labels, 1_700_000_000_000 + day * 86_400_000)

    deliver("first", 0)
    deliver("second", 2, ["INBOX", "STARRED"])
    deliver("trashed", 3, ["TRASH"])
    deliver("with id", 4, message_id="<known@outside.test>")
    return box, now[0]


@pytest.mark.parametrize(
    ("query", "subjects", "opts_in"),
    [
        ("after:1700086400", {"second", "trashed", "with id"}, False),
        ("before:1700086400", {"first"}, False),
        ("is:starred", {"second"}, False),
        ("-is:starred in:inbox", {"first", "with id"}, False),
        ("in:trash", {"trashed"}, True),
        ("from:carol subject:first", {"first"}, False),
        ("rfc822msgid:<known@outside.test>", {"with id"}, False),
        ('"text of second"', {"second"}, False),
    ],
)
def test_search_subset(mailbox_with_mail, query: str, subjects: set[str], opts_in: bool) -> None:
    box, now = mailbox_with_mail
    predicates, includes_spam_trash = compile_query(box, query, now)
    matched = {m.parsed.header("Subject") for m in box.messages.values() if all(p(m) for p in predicates)}
    assert matched == subjects and includes_spam_trash is opts_in


def test_bad_query_term_is_a_400(mailbox_with_mail) -> None:
    box, now = mailbox_with_mail
    with pytest.raises(GoogleApiError) as refused:
        compile_query(box, "is:bogus", now)
    assert refused.value.code == 400
