"""The push envelope and its OIDC token check (ingest issue, item 1)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Mapping

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from services.ingest.push import (
    PushAuthConfig,
    PushRejected,
    PushTokenVerifier,
    parse_push_envelope,
)

AUDIENCE = "https://mailsync.example.com/gmail/push"
PUSH_ACCOUNT = "gmail-push@mailsync.iam.gserviceaccount.com"


def envelope(payload: object, *, snake: bool = False, urlsafe: bool = True) -> dict[str, object]:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    data = encode(json.dumps(payload).encode()).decode()
    key = "message_id" if snake else "messageId"
    return {"message": {"data": data, key: "42"}, "subscription": "projects/p/subscriptions/s"}


@pytest.mark.parametrize(
    ("history", "snake", "urlsafe"),
    [("1234567", False, True), (1234567, False, True), ("1234567", True, False), (1234567, True, True)],
)
def test_envelope_accepts_history_id_as_string_or_number(history: object, snake: bool, urlsafe: bool) -> None:
    note = parse_push_envelope(
        envelope({"emailAddress": "Alice@Example.com", "historyId": history}, snake=snake)
    )
    assert (note.email_address, note.history_id, note.pubsub_message_id) == (
        "alice@example.com",
        1234567,
        "42",
    )


def test_envelope_with_unpadded_data_decodes() -> None:
    body = envelope({"emailAddress": "a@example.com", "historyId": "7"})
    body["message"]["data"] = body["message"]["data"].rstrip("=")  # type: ignore[index]
    assert parse_push_envelope(body).history_id == 7


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "malformed_envelope"),
        ({"message": {}}, "malformed_envelope"),
        ({"message": {"data": "%%%"}}, "malformed_data"),
        (envelope(["not", "an", "object"]), "malformed_data"),
        (envelope({"historyId": "1"}), "malformed_data"),
        (envelope({"emailAddress": "a@example.com"}), "malformed_data"),
        (envelope({"emailAddress": "a@example.com", "historyId": "abc"}), "malformed_data"),
        (envelope({"emailAddress": "a@example.com", "historyId": True}), "malformed_data"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(body: dict[str, object], reason: str) -> None:
    with pytest.raises(PushRejected) as info:
        parse_push_envelope(body)
    assert info.value.reason == reason


class SigningKey:
    """An RSA key with a self-signed certificate, as Google publishes at its certs URL."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push-test")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)

    def token(self, **overrides: object) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": PUSH_ACCOUNT,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
            "sub": "1234",
            "azp": "1234",
        }
        claims.update(overrides)
        return jwt.encode(self.signer, claims).decode()


class CertsEndpoint:
    """Serves a certificate set and counts the fetches (stands in for Google's certs URL)."""

    def __init__(self, *keys: SigningKey) -> None:
        self.certs = {k.kid: k.cert_pem for k in keys}
        self.fetches = 0

    async def __call__(self, url: str) -> Mapping[str, str]:
        self.fetches += 1
        return dict(self.certs)


def verifier(endpoint: CertsEndpoint) -> PushTokenVerifier:
    return PushTokenVerifier(PushAuthConfig(AUDIENCE, PUSH_ACCOUNT, "http://certs.invalid"), endpoint)


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return SigningKey("k1")


async def test_a_token_signed_by_google_for_our_audience_is_accepted(google_key: SigningKey) -> None:
    claims = await verifier(CertsEndpoint(google_key)).verify(google_key.token())
    assert claims["email"] == PUSH_ACCOUNT


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://attacker.example/push"}, "invalid_token"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "invalid_token"),
        ({"iss": "https://evil.example"}, "wrong_issuer"),
        ({"email": "someone@else.iam.gserviceaccount.com"}, "wrong_service_account"),
        ({"email_verified": False}, "email_not_verified"),
    ],
)
async def test_tokens_with_wrong_claims_are_refused(
    google_key: SigningKey, overrides: dict[str, object], reason: str
) -> None:
    with pytest.raises(PushRejected) as info:
        await verifier(CertsEndpoint(google_key)).verify(google_key.token(**overrides))
    assert info.value.reason == reason


async def test_a_token_forged_with_another_key_under_a_known_kid_is_refused(google_key: SigningKey) -> None:
    forger = SigningKey("k1")
    with pytest.raises(PushRejected) as info:
        await verifier(CertsEndpoint(google_key)).verify(forger.token())
    assert info.value.reason == "invalid_token"


@pytest.mark.parametrize("token", [None, "", "not-a-jwt"])
async def test_missing_or_garbage_tokens_are_refused(google_key: SigningKey, token: str | None) -> None:
    with pytest.raises(PushRejected):
        await verifier(CertsEndpoint(google_key)).verify(token)


async def test_a_rotated_google_key_is_fetched_once_then_cached(google_key: SigningKey) -> None:
    endpoint = CertsEndpoint(google_key)
    check = verifier(endpoint)
    await check.verify(google_key.token())
    rotated = SigningKey("k2")
    endpoint.certs[rotated.kid] = rotated.cert_pem
    await check.verify(rotated.token())
    await check.verify(rotated.token())
    assert endpoint.fetches == 2


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_key_ids_refetch_the_certificates_at_most_once_per_interval(
    google_key: SigningKey,
) -> None:
    endpoint = CertsEndpoint(google_key)
    clock = FakeMonotonic()
    config = PushAuthConfig(AUDIENCE, PUSH_ACCOUNT, "http://certs.invalid", certs_refetch_interval_seconds=30)
    check = PushTokenVerifier(config, endpoint, monotonic=clock)
    await check.verify(google_key.token())
    forged = [SigningKey(f"forged-{n}") for n in range(20)]
    for key in forged:
        with pytest.raises(PushRejected) as info:
            await check.verify(key.token())
        assert info.value.reason == "unknown_key"
    assert endpoint.fetches == 2  # the first fetch, and one refetch for the flood
    clock.now += 31
    rotated = SigningKey("k2")
    endpoint.certs[rotated.kid] = rotated.cert_pem
    assert (await check.verify(rotated.token()))["email"] == PUSH_ACCOUNT
    assert endpoint.fetches == 3
    # Negative control: without an interval every forged key id would have cost a fetch.
    unlimited = PushTokenVerifier(
        PushAuthConfig(AUDIENCE, PUSH_ACCOUNT, "http://certs.invalid", certs_refetch_interval_seconds=0),
        counting := CertsEndpoint(google_key),
        monotonic=clock,
    )
    for key in forged[:5]:
        with pytest.raises(PushRejected):
            await unlimited.verify(key.token())
    assert counting.fetches == 6
