"""Tokens at two trust levels: what each grants, what makes one invalid, key rotation, and the CLI."""

from __future__ import annotations

import base64
import io
import time
from contextlib import redirect_stdout

import jwt
import pytest

from services.runtime.errors import PermissionDenied
from services.runtime.grpc_auth import (
    Caller,
    CrmTokenKeys,
    CrmTokenSigner,
    InvalidToken,
    ServiceTokenKeys,
    TokenVerifier,
    _main,
    bearer_token,
)
from services.runtime.settings import ConfigurationError

SECRET_A = base64.b64encode(b"a" * 32).decode()
SECRET_B = base64.b64encode(b"b" * 32).decode()
CRM = CrmTokenSigner.generate("crm1")


def verifier(internal: str = f"k1={SECRET_A}", crm: CrmTokenSigner = CRM) -> TokenVerifier:
    return TokenVerifier.parse(internal, crm.public_keys_text())


def test_a_crm_token_verifies_to_a_crm_caller_of_its_locations() -> None:
    caller = verifier().verify(CRM.mint("crm", ["loc-a", "loc-b"]))
    assert caller == Caller(name="crm", locations=frozenset({"loc-a", "loc-b"}), internal=False)
    assert caller.may_access("loc-a") and not caller.may_access("loc-c")
    assert caller.scope == frozenset({"loc-a", "loc-b"})


def test_an_internal_token_verifies_to_an_internal_caller() -> None:
    keys = ServiceTokenKeys.parse(f"k1={SECRET_A}")
    caller = verifier().verify(keys.mint("ingest"))
    assert caller == Caller(name="ingest", locations=frozenset({"*"}), internal=True)
    assert caller.scope is None


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


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "crm", "iss": "mailsync", "aud": "mailsync", "iat": now, "exp": now + 60, **overrides}


@pytest.mark.parametrize(
    ("token_of", "problem"),
    [
        (lambda: CRM.mint("crm", ["a"], now=time.time() - 7200, ttl_seconds=60), "expired"),
        (lambda: ServiceTokenKeys.parse(f"k1={SECRET_B}").mint("x"), "signature"),
        (lambda: CrmTokenSigner.generate("crm1").mint("crm", ["a"]), "signature"),
        (lambda: ServiceTokenKeys.parse(f"other={SECRET_A}").mint("x"), "unknown key"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: jwt.encode(_claims(aud="someone-else"), b"a" * 32, "HS256", {"kid": "k1"}), "(?i)audience"),
        # An internal-ring token must say it is internal, and carry the internal audience.
        (
            lambda: jwt.encode(_claims(aud="mailsync-internal"), b"a" * 32, "HS256", {"kid": "k1"}),
            "not internal",
        ),
        (lambda: jwt.encode(_claims(internal=True), b"a" * 32, "HS256", {"kid": "k1"}), "(?i)audience"),
        # The CRM's key never makes an internal caller, under either audience.
        (
            lambda: jwt.encode(_claims(internal=True), CRM._keys["crm1"], "EdDSA", {"kid": "crm1"}),
            "cannot be internal",
        ),
        # Algorithm confusion: the public key as an HMAC secret, and each ring's algorithm under the other's id.
        (
            lambda: jwt.encode(
                _claims(),
                base64.b64decode(CRM.public_keys_text().split("=", 1)[1]),
                "HS256",
                {"kid": "crm1"},
            ),
            "EdDSA",
        ),
        (
            lambda: jwt.encode(
                _claims(aud="mailsync-internal", internal=True), CRM._keys["crm1"], "EdDSA", {"kid": "k1"}
            ),
            "HS256",
        ),
    ],
)
def test_invalid_tokens_say_what_is_wrong(token_of: object, problem: str) -> None:
    with pytest.raises(InvalidToken, match=problem):
        verifier().verify(token_of())  # type: ignore[operator]


def test_the_two_rings_may_not_share_a_key_id() -> None:
    with pytest.raises(ConfigurationError, match="share key id"):
        TokenVerifier.parse(f"crm1={SECRET_A}", CRM.public_keys_text())


def test_internal_rotation_new_key_signs_and_the_old_still_verifies() -> None:
    before = ServiceTokenKeys.parse(f"old={SECRET_A}")
    during = ServiceTokenKeys.parse(f"new={SECRET_B},old={SECRET_A}")
    old_token = before.mint("ingest")
    assert (
        TokenVerifier(during, CrmTokenKeys.parse(CRM.public_keys_text())).verify(old_token).name == "ingest"
    )
    assert jwt.get_unverified_header(during.mint("ingest"))["kid"] == "new"
    with pytest.raises(InvalidToken):
        verifier(f"new={SECRET_B}").verify(old_token)


def test_crm_rotation_both_public_keys_verify_until_the_old_one_is_dropped() -> None:
    new = CrmTokenSigner.generate("crm2")
    both = TokenVerifier.parse(f"k1={SECRET_A}", f"{new.public_keys_text()},{CRM.public_keys_text()}")
    assert both.verify(CRM.mint("crm", ["a"])).name == "crm"
    assert both.verify(new.mint("crm", ["a"])).name == "crm"
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier(crm=new).verify(CRM.mint("crm", ["a"]))


def test_a_crm_key_pair_round_trips_through_its_text_form() -> None:
    again = CrmTokenSigner.parse(CRM.signing_keys_text())
    assert again.public_keys_text() == CRM.public_keys_text()
    assert verifier().verify(again.mint("crm", ["x"])).locations == frozenset({"x"})


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


def _cli(*argv: str) -> str:
    output = io.StringIO()
    with redirect_stdout(output):
        assert _main(list(argv)) == 0
    return output.getvalue().strip()


def test_the_cli_mints_crm_tokens_from_the_crm_key_and_internal_ones_from_the_ring() -> None:
    crm = _cli("mint", "--sub", "crm", "--locations", "loc-a,loc-b", "--keys", CRM.signing_keys_text())
    assert verifier().verify(crm) == Caller(
        name="crm", locations=frozenset({"loc-a", "loc-b"}), internal=False
    )
    internal = _cli("mint", "--sub", "ops", "--locations", "*", "--internal", "--keys", f"k1={SECRET_A}")
    assert verifier().verify(internal) == Caller(name="ops", locations=frozenset({"*"}), internal=True)


def test_keygen_prints_a_pair_that_works_together() -> None:
    lines = dict(line.split("=", 1) for line in _cli("keygen", "--kid", "crm9").splitlines())
    signer = CrmTokenSigner.parse(lines["MAILSYNC_CRM_SIGNING_KEYS"])
    keys = TokenVerifier.parse(f"k1={SECRET_A}", lines["MAILSYNC_CRM_TOKEN_PUBLIC_KEYS"])
    assert keys.verify(signer.mint("crm", ["a"])).name == "crm"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_is_refused_from_the_second_it_expires() -> None:
    clock = Clock()
    check = TokenVerifier(
        ServiceTokenKeys.parse(f"k1={SECRET_A}"), CrmTokenKeys.parse(CRM.public_keys_text()), clock=clock
    )
    token = CRM.mint("crm", ["loc-a"], ttl_seconds=60, now=clock.now)
    assert check.verify(token).name == "crm"
    clock.now += 59
    assert check.verify(token).name == "crm"

    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        check.verify(token)


def test_a_refused_token_is_checked_again_each_time_and_never_remembered() -> None:
    check = verifier()
    other = CrmTokenSigner.generate("crm1")
    forged = other.mint("crm", ["*"])
    for _ in range(2):
        with pytest.raises(InvalidToken, match="signature"):
            check.verify(forged)
    genuine = CRM.mint("crm", ["loc-a"])
    # A character well inside the signature, changed for certain (the last ones carry padding bits a decoder may
    # ignore, and overwriting them with "AA" left one signature in a few hundred as it was).
    position = len(genuine) - 10
    tampered = genuine[:position] + ("B" if genuine[position] == "A" else "A") + genuine[position + 1 :]
    assert tampered != genuine
    with pytest.raises(InvalidToken):
        check.verify(tampered)


def test_remembered_tokens_are_bounded_and_a_forgotten_one_is_verified_again() -> None:
    check = verifier()
    check.CACHE_SIZE = 3
    tokens = [CRM.mint(f"crm-{n}", ["loc-a"]) for n in range(5)]
    assert [check.verify(token).name for token in tokens] == [f"crm-{n}" for n in range(5)]
    assert len(check._verified) == 3
    # The first ones were dropped; they still verify, by their signature.
    assert check.verify(tokens[0]).name == "crm-0"
