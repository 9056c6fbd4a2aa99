"""Settings that cannot be wrong in production: with Google's own endpoints, no sandbox or placeholder value.

The defaults of a handful of settings are the Gmail sandbox's (its push audience and service account, its
Pub/Sub topic and OAuth client, a BCC-drop and a Message-ID domain nobody can receive mail for). They are right
for `make run` and wrong against Google: the push audience alone would answer every real Gmail push with 401.
When a service talks to Google itself (every Google endpoint setting it has is empty or Google's), each of these
settings must hold a real value: not its sandbox default, not a loopback or reserved name (RFC 2606/6761:
example.com, .test, .invalid, .localhost), and https where Google calls us. The first violation stops the
service with one line naming the variable (exit 2).

The rules are keyed by field name, so the runtime never imports a service: a rule applies to every settings
class that has the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.runtime.settings import ConfigurationError, ServiceSettings

GOOGLE_HOST_SUFFIXES = (".google.com", ".googleapis.com")
# Settings naming a Google endpoint: empty means Google itself, anything else points at a stand-in.
GOOGLE_ENDPOINT_FIELDS = (
    "gmail_root_url",
    "google_authorization_uri",
    "google_token_uri",
    "google_revoke_uri",
    "google_userinfo_uri",
    "push_certs_url",
)
RESERVED_SUFFIXES = (".test", ".example", ".invalid", ".localhost", ".local", ".internal")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "localhost")
_TOPIC = re.compile(r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$")


def _reserved_host(host: str) -> bool:
    host = host.strip().strip(".").lower()
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in RESERVED_DOMAINS or host.endswith(
            RESERVED_SUFFIXES + tuple(f".{d}" for d in RESERVED_DOMAINS)
        )
    return address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local


def _sandboxy(value: str) -> bool:
    return "sandbox" in value.lower()


def _public_https_url(value: str) -> str | None:
    parts = urlsplit(value.strip())
    if parts.scheme != "https":
        return "must be an https URL Google can reach"
    if _reserved_host(parts.hostname or ""):
        return "names a loopback, private or reserved host"
    return None


def _public_domain(value: str) -> str | None:
    domain = value.strip().lower()
    if "." not in domain or "/" in domain or "@" in domain:
        return "must be a domain name (no scheme, path or @)"
    if _reserved_host(domain):
        return "is a loopback, private or reserved name nobody can receive mail for"
    return None


def _service_account(value: str) -> str | None:
    _local, at, domain = value.strip().partition("@")
    if not at or not domain.endswith(".gserviceaccount.com"):
        return "must be the push subscription's service account (...@<project>.iam.gserviceaccount.com)"
    return None


def _pubsub_topic(value: str) -> str | None:
    if not _TOPIC.match(value.strip()):
        return "must be projects/<project-id>/topics/<topic>"
    return None


def _filled(value: str) -> str | None:
    return None if value.strip() else "is empty"


@dataclass(frozen=True)
class ProductionRule:
    """A field that must hold a real value against Google, and what a real value looks like."""

    field: str
    meaning: str
    check: Callable[[str], str | None]


PRODUCTION_RULES: tuple[ProductionRule, ...] = (
    ProductionRule("push_audience", "the public https URL of the push endpoint", _public_https_url),
    ProductionRule("push_service_account_email", "the push subscription's service account", _service_account),
    ProductionRule("pubsub_topic", "the Pub/Sub topic Gmail publishes to", _pubsub_topic),
    ProductionRule("google_client_id", "the OAuth client registered with Google", _filled),
    ProductionRule("google_client_secret", "the OAuth client's secret", _filled),
    ProductionRule("oauth_redirect_uri", "the public https OAuth callback", _public_https_url),
    ProductionRule("bcc_drop_domain", "the domain whose MX is the BCC-drop listener", _public_domain),
    ProductionRule("message_id_domain", "the domain of the Message-IDs the product writes", _public_domain),
)


def talks_to_google(settings: ServiceSettings) -> bool:
    """True when the service has Google endpoint settings and every one of them is empty or Google's own."""
    present = [field for field in GOOGLE_ENDPOINT_FIELDS if field in type(settings).model_fields]
    if not present:
        return False
    for field in present:
        value = str(getattr(settings, field) or "")
        host = (urlsplit(value).hostname or "").lower()
        if value and not host.endswith(GOOGLE_HOST_SUFFIXES):
            return False
    return True


def sandbox_defaults(settings_cls: type[ServiceSettings]) -> dict[str, str]:
    """The sandbox values a settings class ships as defaults for the production rules' fields."""
    values = {}
    for rule in PRODUCTION_RULES:
        info = settings_cls.model_fields.get(rule.field)
        if info is not None and isinstance(info.default, str) and info.default:
            values[rule.field] = info.default
    return values


def production_violations(settings: ServiceSettings) -> Iterator[str]:
    """One line per setting that holds a sandbox or placeholder value while the service talks to Google."""
    if not talks_to_google(settings):
        return
    defaults = sandbox_defaults(type(settings))
    for rule in PRODUCTION_RULES:
        if rule.field not in type(settings).model_fields:
            continue
        value = str(getattr(settings, rule.field) or "")
        variable = settings.variable_for(rule.field)
        secret = "secret" in rule.field
        if value and value == defaults.get(rule.field):
            problem = "is the Gmail sandbox's default"
        elif _sandboxy(value):
            problem = "names the Gmail sandbox"
        else:
            problem = rule.check(value) or ""
        if problem:
            shown = "" if secret else f" ({value!r})"
            yield (
                f"{variable}{shown} {problem}, but the Google endpoints are Google's own: set it to "
                f"{rule.meaning}"
            )


def check_production_settings(settings: ServiceSettings) -> None:
    """Raises ConfigurationError naming the first setting that would not work against Google."""
    for violation in production_violations(settings):
        raise ConfigurationError(violation)
