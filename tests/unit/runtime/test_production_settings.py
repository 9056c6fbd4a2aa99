"""Against Google's own endpoints a service refuses the sandbox's defaults and placeholders, naming the
variable; against the sandbox (make run, tests) the same values are fine."""

from __future__ import annotations

import os

import pytest

from services.auth.settings import AuthSettings
from services.ingest.settings import IngestSettings
from services.outbound.settings import OutboundSettings
from services.runtime.production import (
    check_production_settings,
    production_violations,
    sandbox_defaults,
    talks_to_google,
)
from services.runtime.settings import ConfigurationError, ServiceSettings
from services.threading.settings import ThreadingSettings

REAL: dict[type[ServiceSettings], dict[str, str]] = {
    AuthSettings: {
        "google_client_id": "1234567890-abc.apps.googleusercontent.com",
        "google_client_secret": "GOCSPX-a-real-looking-secret",
        "oauth_redirect_uri": "https://mail.crm.acme-corp.com/oauth/callback",
        "pubsub_topic": "projects/acme-crm-prod/topics/gmail-push",
    },
    IngestSettings: {
        "push_audience": "https://mail.crm.acme-corp.com/gmail/push",
        "push_service_account_email": "gmail-push@acme-crm-prod.iam.gserviceaccount.com",
        "bcc_drop_domain": "drop.crm.acme-corp.com",
    },
    OutboundSettings: {"message_id_domain": "mail.crm.acme-corp.com"},
}
TOKEN_KEYS = {"token_keys": "v1:8TthjygglrzlAsZRGgq1fEp72im_rxU7QId41YBhWsw"}


@pytest.fixture(autouse=True)
def no_mailsync_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from the test alone, whatever the shell running pytest exports."""
    for variable in list(os.environ):
        if variable.startswith("MAILSYNC_"):
            monkeypatch.delenv(variable)


def load(settings_cls: type[ServiceSettings], **values: str) -> ServiceSettings:
    extra = TOKEN_KEYS if settings_cls is AuthSettings else {}
    return settings_cls.load(**extra, **values)


@pytest.mark.parametrize("settings_cls", list(REAL))
def test_real_values_pass_and_each_sandbox_default_alone_is_named(
    settings_cls: type[ServiceSettings],
) -> None:
    assert talks_to_google(load(settings_cls, **REAL[settings_cls]))
    assert list(production_violations(load(settings_cls, **REAL[settings_cls]))) == []
    defaults = sandbox_defaults(settings_cls)
    assert set(defaults) == set(REAL[settings_cls]), "every production rule field has a sandbox default"
    for field, sandbox_value in defaults.items():
        values = {**REAL[settings_cls], field: sandbox_value}
        with pytest.raises(ConfigurationError) as refused:
            check_production_settings(load(settings_cls, **values))
        variable = f"{settings_cls.service_env_prefix()}{field.upper()}"
        shared = f"MAILSYNC_{field.upper()}"
        message = str(refused.value)
        assert message.startswith((variable, shared)), message
        if "secret" in field:
            assert sandbox_value not in message, "a secret is never echoed"


@pytest.mark.parametrize(
    ("settings_cls", "field", "value", "why"),
    [
        (IngestSettings, "push_audience", "http://mail.crm.acme-corp.com/gmail/push", "https"),
        (IngestSettings, "push_audience", "https://127.0.0.1/gmail/push", "loopback"),
        (IngestSettings, "push_audience", "https://mailsync.example.com/gmail/push", "reserved"),
        (IngestSettings, "push_service_account_email", "push@acme.com", "service account"),
        (IngestSettings, "bcc_drop_domain", "drop.acme.test", "reserved"),
        (AuthSettings, "pubsub_topic", "gmail-push", "projects/"),
        (AuthSettings, "oauth_redirect_uri", "https://localhost/oauth/callback", "loopback"),
        (AuthSettings, "google_client_id", "my-sandbox-client", "sandbox"),
        (OutboundSettings, "message_id_domain", "mailsync.invalid", "sandbox's default"),
        (OutboundSettings, "message_id_domain", "10.0.0.7", "private"),
    ],
)
def test_placeholders_and_unreachable_values_are_refused(
    settings_cls: type[ServiceSettings], field: str, value: str, why: str
) -> None:
    settings = load(settings_cls, **{**REAL[settings_cls], field: value})
    (violation,) = production_violations(settings)
    assert field.upper() in violation
    assert why in violation


@pytest.mark.parametrize("settings_cls", list(REAL))
def test_the_sandbox_defaults_are_fine_when_the_endpoints_are_the_sandbox(
    settings_cls: type[ServiceSettings],
) -> None:
    sandbox = {"gmail_root_url": "http://127.0.0.1:8765/"}
    settings = load(settings_cls, **sandbox)
    assert not talks_to_google(settings)
    assert list(production_violations(settings)) == []
    # Negative control: the same defaults against Google are refused.
    assert list(production_violations(load(settings_cls)))


def test_a_service_without_google_endpoints_is_never_checked() -> None:
    assert not talks_to_google(ThreadingSettings.load())
    assert list(production_violations(ThreadingSettings.load())) == []
