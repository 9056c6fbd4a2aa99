"""Tokens at rest: AES-GCM round trip, row binding, key rotation and retiring the old key."""

from __future__ import annotations

import pytest

from services.auth.crypto import (
    KeyRing,
    SealedToken,
    SecretToken,
    TokenCipher,
    TokenDecryptError,
    TokenKeyError,
    generate_key_text,
)

REFRESH = SecretToken("1//0g-refresh-token-for-tests")
V1 = generate_key_text(1)
V2 = generate_key_text(2)


def cipher(keys: str) -> TokenCipher:
    return TokenCipher(KeyRing.parse(keys))


def test_round_trip_returns_the_token() -> None:
    sealing = cipher(V1)
    sealed = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    assert sealing.open(sealed, row="mailbox:1", column="refresh_token") == REFRESH


def test_ciphertext_holds_no_plaintext_and_differs_each_time() -> None:
    sealing = cipher(V1)
    first = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    second = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    assert REFRESH.reveal().encode() not in first.ciphertext
    assert b"1//" not in first.ciphertext
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    ("row", "column"),
    [("mailbox:2", "refresh_token"), ("mailbox:1", "access_token"), ("mailbox:11", "refresh_token")],
    ids=["other-row", "other-column", "row-id-prefix"],
)
def test_a_ciphertext_copied_to_another_row_or_column_fails(row: str, column: str) -> None:
    sealing = cipher(V1)
    sealed = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    with pytest.raises(TokenDecryptError):
        sealing.open(sealed, row=row, column=column)


def test_a_relabelled_key_version_fails() -> None:
    sealing = cipher(f"{V2},{V1}")
    sealed = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    forged = SealedToken(key_version=1, ciphertext=sealed.ciphertext)
    with pytest.raises(TokenDecryptError):
        sealing.open(forged, row="mailbox:1", column="refresh_token")


def test_a_flipped_bit_fails() -> None:
    sealing = cipher(V1)
    sealed = sealing.seal(REFRESH, row="mailbox:1", column="refresh_token")
    tampered = bytearray(sealed.ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(TokenDecryptError):
        sealing.open(SealedToken(1, bytes(tampered)), row="mailbox:1", column="refresh_token")


def test_rotation_reseals_under_the_new_key_and_the_old_key_can_then_be_retired() -> None:
    before = cipher(V1).seal(REFRESH, row="mailbox:1", column="refresh_token")
    during = cipher(f"{V2},{V1}")
    # Both keys decrypt while rows are being re-encrypted: no downtime.
    assert during.open(before, row="mailbox:1", column="refresh_token") == REFRESH
    assert during.needs_reseal(before)
    rotated = during.reseal(before, row="mailbox:1", column="refresh_token")
    assert rotated.key_version == 2
    assert during.reseal(rotated, row="mailbox:1", column="refresh_token") is rotated
    retired = cipher(V2)
    assert retired.open(rotated, row="mailbox:1", column="refresh_token") == REFRESH
    # Negative control: a row that was not rotated cannot be read once the old key is gone.
    with pytest.raises(TokenDecryptError):
        retired.open(before, row="mailbox:1", column="refresh_token")


def test_new_tokens_use_the_first_key() -> None:
    assert cipher(f"{V2},{V1}").seal(REFRESH, row="mailbox:1", column="refresh_token").key_version == 2


@pytest.mark.parametrize(
    "text",
    ["", "v1:", "1:abcd", "v1:c2hvcnQ", f"{V1},{V1}", "vx:" + V1.split(":")[1], "v1:***"],
    ids=["empty", "no-key", "no-v", "short-key", "duplicate", "bad-version", "not-base64"],
)
def test_bad_key_configuration_is_refused(text: str) -> None:
    with pytest.raises(TokenKeyError):
        KeyRing.parse(text)


def test_nothing_shows_a_token_or_key() -> None:
    ring = KeyRing.parse(f"{V2},{V1}")
    sealed = TokenCipher(ring).seal(REFRESH, row="mailbox:1", column="refresh_token")
    shown = " ".join([repr(REFRESH), str(REFRESH), f"{REFRESH}", repr(ring), repr(sealed), repr(ring._keys)])
    assert REFRESH.reveal() not in shown
    assert V1.split(":")[1] not in shown and V2.split(":")[1] not in shown
