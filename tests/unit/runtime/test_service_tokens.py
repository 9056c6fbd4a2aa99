"""Service tokens: what a token grants, what makes one invalid, key rotation, and the mint CLI."""

from __future__ import annotations

import base64
import io
import time
from contextlib import redirect_stdout

import jwt
import pytest

from services.runtime.errors import PermissionDenied
from services.runtime.grpc_auth import Caller, InvalidToken, TokenKeys, _main, bearer_token

SECRET_A = base64.b64encode(b"a" * 32).decode()
SECRET_B = base64.b64encode(b"b" * 32).decode()


def test_a_minted_token_verifies_to_its_caller() -> None:
    keys = TokenKeys.parse(f"k1={SECRET_A}")
    caller = keys.verify(keys.mint("crm", ["loc-a", "loc-b"]))
    assert caller == Caller(name="crm", locations=frozenset({"loc-a", "loc-b"}), internal=False)
    assert caller.may_access("loc-a") and not caller.may_access("loc-c")


def test_the_wildcard_grants_every_location() -> None:
    caller = Caller(name="ingest", locations=frozenset({"*"}), internal=True)
    assert caller.may_access("any-location")


def test_require_location_raises_a_permission_domain_error() -> None:
    caller = Caller(name="crm", locations=frozenset({"loc-a"}), internal=False)
    caller.require_location("loc-a")
    caller.require_location("")  # no location in the request: nothing to scope
    with pytest.raises(PermissionDenied) as failure:
        caller.require_location("loc-b")
    assert failure.value.reason == "LOCATION_NOT_PERMITTED"
    assert failure.value.metadata == {"caller": "crm", "location_id": "loc-b"}


@pytest.mark.parametrize(
    ("token_of", "problem"),
    [
        (lambda keys: keys.mint("crm", ["a"], now=time.time() - 7200, ttl_seconds=60), "expired"),
        (lambda keys: TokenKeys.parse(f"k1={SECRET_B}").mint("crm", ["a"]), "signature"),
        (lambda keys: TokenKeys.parse(f"other={SECRET_A}").mint("crm", ["a"]), "unknown key"),
        (lambda keys: "not-a-jwt", "malformed"),
        (
            lambda keys: jwt.encode(
                {
                    "sub": "crm",
                    "iss": "mailsync",
                    "aud": "someone-else",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 60,
                },
                b"a" * 32,
                algorithm="HS256",
                headers={"kid": "k1"},
            ),
            "(?i)audience",
        ),
    ],
)
def test_invalid_tokens_say_what_is_wrong(token_of: object, problem: str) -> None:
    keys = TokenKeys.parse(f"k1={SECRET_A}")
    with pytest.raises(InvalidToken, match=problem):
        keys.verify(token_of(keys))  # type: ignore[operator]


def test_rotation_new_key_signs_and_the_old_still_verifies() -> None:
    before = TokenKeys.parse(f"old={SECRET_A}")
    during = TokenKeys.parse(f"new={SECRET_B},old={SECRET_A}")
    old_token = before.mint("crm", ["a"])
    assert during.verify(old_token).name == "crm"
    assert jwt.get_unverified_header(during.mint("crm", ["a"]))["kid"] == "new"
    after = TokenKeys.parse(f"new={SECRET_B}")
    with pytest.raises(InvalidToken):
        after.verify(old_token)


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ((), "missing"),
        ((("authorization", "Basic abc"),), "Bearer"),
        ((("authorization", "Bearer "),), "Bearer"),
    ],
)
def test_bearer_metadata_must_be_present_and_well_formed(
    metadata: tuple[tuple[str, str], ...], problem: str
) -> None:
    with pytest.raises(InvalidToken, match=problem):
        bearer_token(metadata)


def test_the_mint_cli_prints_a_token_the_keys_verify() -> None:
    output = io.StringIO()
    with redirect_stdout(output):
        status = _main(
            ["mint", "--sub", "crm", "--locations", "loc-a,loc-b", "--internal", "--keys", f"k1={SECRET_A}"]
        )
    assert status == 0
    caller = TokenKeys.parse(f"k1={SECRET_A}").verify(output.getvalue().strip())
    assert caller == Caller(name="crm", locations=frozenset({"loc-a", "loc-b"}), internal=True)
