"""Every kind of bad setting is one ConfigurationError line that names the variable and shows the value (the
entry point prints it and exits 2), and MAILSYNC_* variables no service reads are found with the closest name."""

from __future__ import annotations

import os

import pytest

from services.auth.settings import AuthSettings
from services.ingest.settings import IngestSettings
from services.outbound.settings import OutboundSettings
from services.runtime.settings import ConfigurationError, ServiceSettings, unknown_variables
from services.threading.settings import ThreadingSettings

BAD_VALUES = [
    # (settings class, variable, value, what the line says), one or more per kind of setting.
    (ThreadingSettings, "MAILSYNC_DATABASE_POOL_SIZE", "many", "valid integer"),
    (ThreadingSettings, "MAILSYNC_DATABASE_POOL_SIZE", "0", "greater than or equal to 1"),
    (ThreadingSettings, "MAILSYNC_HEALTH_CHECK_INTERVAL_SECONDS", "soon", "valid number"),
    (IngestSettings, "MAILSYNC_INGEST_BCC_VERIFY_DKIM", "maybe", "valid boolean"),
    (IngestSettings, "MAILSYNC_INGEST_BCC_SMTP_PORT", "70000", "less than or equal to 65535"),
    (ThreadingSettings, "MAILSYNC_THREADING_BLOB_STORE", "ftp", "'folder' or 's3'"),
    (OutboundSettings, "MAILSYNC_OUTBOUND_SMTP_SECURITY", "SSL", "NONE, STARTTLS, IMPLICIT_TLS"),
    (ThreadingSettings, "MAILSYNC_LOG_LEVEL", "loud", "DEBUG, INFO"),
    (AuthSettings, "MAILSYNC_AUTH_OAUTH_REDIRECT_URI", "notaurl", "absolute http or https URL"),
    (AuthSettings, "MAILSYNC_AUTH_GOOGLE_TOKEN_URI", "ftp://example.com/token", "absolute http or https URL"),
    (IngestSettings, "MAILSYNC_INGEST_PUSH_CERTS_URL", "https://", "with a host"),
    (ThreadingSettings, "MAILSYNC_NATS_URL", "127.0.0.1:4222", "absolute nats or tls"),
    (OutboundSettings, "MAILSYNC_NATS_URL", "nats://a:4222,b:4222", "absolute nats or tls"),
]


@pytest.fixture(autouse=True)
def no_mailsync_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [v for v in os.environ if v.startswith("MAILSYNC_")]:
        monkeypatch.delenv(variable)


@pytest.mark.parametrize(
    ("settings_cls", "variable", "value", "says"),
    BAD_VALUES,
    ids=[f"{row[1]}={row[2]}" for row in BAD_VALUES],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, settings_cls: type[ServiceSettings], variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        settings_cls.load()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}: ")
    assert says in message and repr(value) in message


def test_good_values_of_the_same_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_NATS_URL", "nats://a:4222,tls://b:4222")
    monkeypatch.setenv("MAILSYNC_AUTH_OAUTH_REDIRECT_URI", "https://crm.example/oauth/callback")
    monkeypatch.setenv("MAILSYNC_OUTBOUND_SMTP_SECURITY", "implicit_tls")
    assert AuthSettings.load().oauth_redirect_uri == "https://crm.example/oauth/callback"
    assert OutboundSettings.load().smtp_security == "IMPLICIT_TLS"
    assert ThreadingSettings.load().nats_url == "nats://a:4222,tls://b:4222"


def test_nats_has_no_default_url() -> None:
    assert ThreadingSettings.load().nats_url == ""


def test_unknown_variables_are_found_with_the_closest_valid_name() -> None:
    environ = {
        "MAILSYNC_INGEST_BCC_SMPT_PORT": "2525",  # misspelt, this service's prefix
        "MAILSYNC_NATS_ULR": "nats://x:4222",  # misspelt shared name
        "MAILSYNC_NOTHING_LIKE_IT": "1",
        "MAILSYNC_INGEST_HTTP_PORT": "8082",  # valid
        "MAILSYNC_GOOGLE_TOKEN_URI": "http://x/token",  # auth's, in one environment for every service
        "MAILSYNC_AUTH_OAUTH_REDIRECT_UR": "x",  # another service's variable: that service reports it
        "MAILSYNC_CLI_LOCATION": "loc",  # the CLI's
        "PATH": "/bin",
    }
    assert unknown_variables(IngestSettings, environ) == [
        ("MAILSYNC_INGEST_BCC_SMPT_PORT", "MAILSYNC_INGEST_BCC_SMTP_PORT"),
        ("MAILSYNC_NATS_ULR", "MAILSYNC_NATS_URL"),
        ("MAILSYNC_NOTHING_LIKE_IT", None),
    ]
    assert ("MAILSYNC_AUTH_OAUTH_REDIRECT_UR", "MAILSYNC_AUTH_OAUTH_REDIRECT_URI") in unknown_variables(
        AuthSettings, environ
    )
