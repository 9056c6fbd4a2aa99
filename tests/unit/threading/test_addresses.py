"""Address and Message-ID normalization: when two spellings name the same mailbox."""

import pytest

from services.threading.domain.addresses import normalize_email, normalize_message_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  <bob@example.com> ", "bob@example.com"),
        ("J.Doe+crm@GMail.com", "jdoe@gmail.com"),
        ("j.doe@googlemail.com", "jdoe@gmail.com"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("<a@b>", "<a@b>"), (" a@b ", "<a@b>"), ("", ""), ("<a@\n b>", "<a@b>")],
)
def test_normalize_message_id(raw: str, expected: str) -> None:
    assert normalize_message_id(raw) == expected
