"""Tokens at rest: AES-256-GCM under a versioned key ring, each ciphertext bound to its row and column by
associated data, so a ciphertext copied into another row does not decrypt (reference/reliability.md 4.3).

The first key of the ring encrypts; every key decrypts, so a new key can be deployed first and the rows
re-encrypted afterwards (`TokenCipher.reseal`) without downtime; the old key is retired once no row uses it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_KEY_BYTES = 32


class TokenKeyError(ValueError):
    """The configured key ring is unusable (malformed, duplicate versions, wrong key length, empty)."""


class TokenDecryptError(Exception):
    """A sealed token could not be opened: unknown key version, tampered, or sealed for another row."""


class SecretToken:
    """An OAuth token in memory: its repr and str never show it; `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretToken(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretToken) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class TokenKey:
    version: int
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class SealedToken:
    """What is stored: the key version (a column of its own) and nonce || ciphertext || tag."""

    key_version: int
    ciphertext: bytes = field(repr=False)


class KeyRing:
    """Versioned AES-256 keys; the first one encrypts."""

    def __init__(self, keys: Iterable[TokenKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise TokenKeyError("the token key ring is empty: configure at least one key")
        versions = [key.version for key in self._keys]
        if len(set(versions)) != len(versions):
            raise TokenKeyError(f"duplicate token key versions in {versions}")
        for key in self._keys:
            if len(key.secret) != _KEY_BYTES:
                raise TokenKeyError(
                    f"token key v{key.version} must be {_KEY_BYTES} bytes, not {len(key.secret)}"
                )
        self._by_version = {key.version: AESGCM(key.secret) for key in self._keys}

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Reads "v2:<base64url 32 bytes>,v1:<...>" (the encrypting key first), as in the service settings."""
        keys = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            label, _, encoded = item.partition(":")
            if not label.startswith("v") or not label[1:].isdigit() or not encoded:
                raise TokenKeyError("each token key must look like v<version>:<base64url key>")
            try:
                secret = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                raise TokenKeyError(f"token key {label} is not valid base64url") from None
            keys.append(TokenKey(int(label[1:]), secret))
        return cls(keys)

    @property
    def current_version(self) -> int:
        return self._keys[0].version

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self._by_version)

    def cipher(self, version: int) -> AESGCM:
        try:
            return self._by_version[version]
        except KeyError:
            raise TokenDecryptError(f"no token key with version {version} is configured") from None

    def __repr__(self) -> str:
        return f"KeyRing(versions={[key.version for key in self._keys]})"


def generate_key_text(version: int) -> str:
    """A fresh key in the configuration format, for operators adding a key."""
    return f"v{version}:" + base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode().rstrip("=")


def associated_data(row: str, column: str, key_version: int) -> bytes:
    """What a ciphertext is bound to, e.g. row "mailbox:42", column "refresh_token"."""
    return f"{row}|{column}|v{key_version}".encode()


class TokenCipher:
    """Seals and opens tokens for a row and column with the key ring."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def seal(self, token: SecretToken, *, row: str, column: str) -> SealedToken:
        version = self.ring.current_version
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self.ring.cipher(version).encrypt(
            nonce, token.reveal().encode(), associated_data(row, column, version)
        )
        return SealedToken(key_version=version, ciphertext=nonce + sealed)

    def open(self, sealed: SealedToken, *, row: str, column: str) -> SecretToken:
        cipher = self.ring.cipher(sealed.key_version)
        nonce, body = sealed.ciphertext[:_NONCE_BYTES], sealed.ciphertext[_NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, body, associated_data(row, column, sealed.key_version))
        except InvalidTag:
            raise TokenDecryptError(
                f"the {column} of {row} does not decrypt: tampered, or sealed for another row"
            ) from None
        return SecretToken(plain.decode())

    def needs_reseal(self, sealed: SealedToken) -> bool:
        return sealed.key_version != self.ring.current_version

    def reseal(self, sealed: SealedToken, *, row: str, column: str) -> SealedToken:
        """The same token under the current key (unchanged if it already uses it: rotation is idempotent)."""
        if not self.needs_reseal(sealed):
            return sealed
        return self.seal(self.open(sealed, row=row, column=column), row=row, column=column)
