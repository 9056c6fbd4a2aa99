"""The account type of a connected mailbox from Google's own answer: the ID token's hd claim (R14's limits)."""

from __future__ import annotations

import base64
import json

import pytest

from services.auth.account_type import AccountType, account_type_of


def _id_token(**claims: object) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    body = {"iss": "https://accounts.google.com", "email": "x@acme.example", **claims}
    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(body)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("id_token", "email", "expected"),
    [
        (_id_token(hd="acme.example"), "sales@acme.example", AccountType.WORKSPACE),
        (_id_token(), "alice@gmail.test", AccountType.CONSUMER),
        # gmail.com and googlemail.com are consumer accounts whatever a token says.
        (_id_token(hd="gmail.com"), "bob@gmail.com", AccountType.CONSUMER),
        (None, "bob@googlemail.com", AccountType.CONSUMER),
        # Google said nothing: unknown, never guessed from the domain.
        (None, "sales@acme.example", AccountType.UNKNOWN),
        ("not-a-jwt", "sales@acme.example", AccountType.UNKNOWN),
    ],
)
def test_R14_the_account_type_is_what_googles_id_token_says(
    id_token: str | None, email: str, expected: AccountType
) -> None:
    assert account_type_of(id_token, email) is expected
