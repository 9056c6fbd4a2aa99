"""The sandbox's RSA signing key and self-signed certificate: signs push OIDC tokens and ID tokens."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt


@dataclass
class SigningKey:
    """One key pair: the private PEM signs, the certificate PEM is what `/oauth2/v1/certs` publishes."""

    kid: str
    private_pem: bytes
    certificate_pem: bytes
    # Loading the PEM checks the RSA key (about 100 ms of CPU on a loaded machine): done once per key, not per token.
    _signer: tuple[bytes, crypt.RSASigner] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox.accounts.google.test")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(
            kid=hashlib.sha1(certificate_pem).hexdigest(),
            private_pem=private_pem,
            certificate_pem=certificate_pem,
        )

    def sign(self, claims: dict[str, Any]) -> str:
        if self._signer is None or self._signer[0] is not self.private_pem:
            self._signer = (self.private_pem, crypt.RSASigner.from_string(self.private_pem, key_id=self.kid))
        return jwt.encode(self._signer[1], claims).decode("ascii")

    def certs_v1(self) -> dict[str, str]:
        return {self.kid: self.certificate_pem.decode("ascii")}

    def jwks(self) -> dict[str, Any]:
        public = x509.load_pem_x509_certificate(self.certificate_pem).public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        numbers = public.public_numbers()

        def encode(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": encode(numbers.n),
                    "e": encode(numbers.e),
                }
            ]
        }
