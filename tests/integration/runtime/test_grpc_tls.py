"""Optional TLS and mTLS on a service's gRPC server, from certificate files in the settings (certificates made
by the test with its own CA)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.grpc_client import channel_credentials, open_channel
from services.runtime.service import RunningService
from services.threading.app import build
from services.threading.settings import ThreadingSettings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.services import service_settings


def _write_key_and_cert(folder: Path, name: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _certificate(
    subject: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate and a client certificate it signed."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("mailsync test CA", ca_key, None, ca=True)
    _, ca_path = _write_key_and_cert(folder, "ca", ca_key, ca_cert)
    files = {"ca": ca_path}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"mailsync-{role}", key, (ca_cert.subject, ca_key), ca=False)
        files[f"{role}_key"], files[f"{role}_cert"] = _write_key_and_cert(folder, role, key, cert)
    return files


async def start_with_tls(
    nats_server: Any, tmp_path: Path, token_keys_value: str, run_service_in_process: Any, **tls: Any
) -> RunningService:
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=DatabaseTarget("sqlite", f"sqlite:///{tmp_path / 'threading.db'}", None),
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
        **tls,
    )
    return await run_service_in_process(settings, build)


async def health_over(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    async with open_channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


async def test_tls_server_answers_clients_that_trust_its_ca_and_not_plaintext(
    nats_server: Any, tmp_path: Path, token_keys_value: str, run_service_in_process: Any, pki: dict[str, Path]
) -> None:
    running = await start_with_tls(
        nats_server,
        tmp_path,
        token_keys_value,
        run_service_in_process,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
    )
    trusting = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    assert await health_over(running.port, trusting) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_over(running.port, None)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_server_requires_a_client_certificate_from_its_ca(
    nats_server: Any, tmp_path: Path, token_keys_value: str, run_service_in_process: Any, pki: dict[str, Path]
) -> None:
    running = await start_with_tls(
        nats_server,
        tmp_path,
        token_keys_value,
        run_service_in_process,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_ca_file=pki["ca"],
        tls_require_client_cert=True,
    )
    client_settings = ThreadingSettings.load(
        tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"], tls_ca_file=pki["ca"]
    )
    with_certificate = channel_credentials(client_settings)
    assert with_certificate is not None
    assert await health_over(running.port, with_certificate) == health_pb2.HealthCheckResponse.SERVING

    without_certificate = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_over(running.port, without_certificate)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
