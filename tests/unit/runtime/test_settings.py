"""Settings: local defaults, shared and per-service variables, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.auth.settings import AuthSettings
from services.ingest.settings import IngestSettings
from services.outbound.settings import OutboundSettings
from services.runtime.settings import ConfigurationError, parse_token_keys
from services.threading.settings import ThreadingSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAILSYNC_"):
            monkeypatch.delenv(key)


def test_every_service_has_working_local_defaults() -> None:
    ports = set()
    for settings_cls in (AuthSettings, IngestSettings, ThreadingSettings, OutboundSettings):
        settings = settings_cls.load()
        name = settings_cls.service_name
        assert settings.database_url == f"sqlite:///{Path('var/data') / f'{name}.db'}"
        assert settings.database_schema == name
        # Ingest alone accepts whole BCC drops (up to 25 MB) in one SubmitBccDrop message.
        expected = 27 * 1024 * 1024 if settings_cls is IngestSettings else 4 * 1024 * 1024
        assert settings.grpc_max_message_bytes == expected
        ports.add(settings.grpc_port)
    assert ports == {50051, 50052, 50053, 50054}


def test_every_field_is_described() -> None:
    for settings_cls in (AuthSettings, IngestSettings, ThreadingSettings, OutboundSettings):
        undocumented = [name for name, info in settings_cls.model_fields.items() if not info.description]
        assert undocumented == [], f"{settings_cls.__name__}: {undocumented}"


def test_the_data_dir_moves_the_default_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_DATA_DIR", "/srv/mailsync")
    assert ThreadingSettings.load().database_url == "sqlite:////srv/mailsync/threading.db"


def test_a_service_variable_overrides_the_shared_one_for_that_service_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", "postgresql://shared/db")
    monkeypatch.setenv("MAILSYNC_THREADING_DATABASE_URL", "postgresql://threading/db")
    monkeypatch.setenv("MAILSYNC_THREADING_GRPC_PORT", "6000")
    assert ThreadingSettings.load().database_url == "postgresql://threading/db"
    assert ThreadingSettings.load().grpc_port == 6000
    assert AuthSettings.load().database_url == "postgresql://shared/db"
    assert AuthSettings.load().grpc_port == 50051


def test_an_invalid_value_names_the_variable_that_carried_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_THREADING_GRPC_PORT", "seventy")
    with pytest.raises(ConfigurationError, match=r"^MAILSYNC_THREADING_GRPC_PORT: .*'seventy'"):
        ThreadingSettings.load()
    monkeypatch.delenv("MAILSYNC_THREADING_GRPC_PORT")
    monkeypatch.setenv("MAILSYNC_GRPC_PORT", "70000")
    with pytest.raises(ConfigurationError, match=r"^MAILSYNC_GRPC_PORT: "):
        ThreadingSettings.load()


def test_tls_certificate_without_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_TLS_CERT_FILE", "/etc/cert.pem")
    with pytest.raises(ConfigurationError, match="tls_cert_file and tls_key_file"):
        AuthSettings.load()


def test_token_keys_parse_in_order_and_the_first_signs() -> None:
    keys = parse_token_keys("new=" + "A" * 44 + ",old=" + "B" * 44)
    assert list(keys) == ["new", "old"]
    assert all(len(secret) == 33 for secret in keys.values())


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "is not set"),
        ("nokey", "is not 'kid=base64secret'"),
        (f"k1={'A' * 44},k1={'B' * 44}", "appears twice"),
        ("k1=***", "not valid base64"),
        ("k1=c2hvcnQ=", "shorter than 32 bytes"),
    ],
)
def test_bad_token_keys_say_what_is_wrong(raw: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match="MAILSYNC_SERVICE_TOKEN_KEYS") as failure:
        parse_token_keys(raw)
    assert problem in str(failure.value)


def test_public_keys_must_be_exactly_32_bytes() -> None:
    with pytest.raises(ConfigurationError, match="MAILSYNC_CRM_TOKEN_PUBLIC_KEYS: key 'c1' is not 32 bytes"):
        parse_token_keys("c1=" + "A" * 48, "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS", exact_bytes=32)
    assert len(parse_token_keys("c1=" + "A" * 43, "X", exact_bytes=32)["c1"]) == 32
