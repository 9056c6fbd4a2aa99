"""Typed configuration from environment variables, shared by the four services.

Shared fields are read from `MAILSYNC_<FIELD>` and a service overrides any of them with
`MAILSYNC_<SERVICE>_<FIELD>` (for example MAILSYNC_THREADING_DATABASE_URL). Every field has a default that
works on a developer machine, except the token keys (the internal ring is a secret; the CRM's public keys come
from the CRM), which `make run` generates. Problems surface as one
`ConfigurationError` whose message names the variable.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.runtime.setting_names import ALL_SETTING_VARIABLES

SHARED_PREFIX = "MAILSYNC_"
HTTP_SCHEMES = ("http", "https")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
# The services that read MAILSYNC_<SERVICE>_* variables; one service leaves the others' variables to them.
SERVICE_NAMES = ("auth", "ingest", "threading", "outbound")
# MAILSYNC_* variables that are no service's settings: the CLI's, the tests', the benchmarks', and the CRM's
# private signing keys (which `make run` keeps from the services).
NOT_SERVICE_SETTINGS = ("MAILSYNC_CLI_", "MAILSYNC_TEST_", "MAILSYNC_BENCH_", "MAILSYNC_CRM_SIGNING_KEYS")
TOKEN_KEYS_VARIABLE = "MAILSYNC_SERVICE_TOKEN_KEYS"
CRM_PUBLIC_KEYS_VARIABLE = "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS"


class ConfigurationError(ValueError):
    """The configuration cannot work; the message is one line that names the problem."""


class ServiceSettings(BaseSettings):
    """The settings every service has. A service subclasses it, sets `service_name` and its ports."""

    service_name: ClassVar[str] = "service"

    model_config = SettingsConfigDict(env_prefix=SHARED_PREFIX, extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path("var/data"),
        description="Folder for local state: the SQLite database files live here by default.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the service's database (sqlite:///path or postgresql://...). "
        "Empty means a SQLite file <data_dir>/<service>.db.",
    )
    database_schema: str = Field(
        default="",
        description="PostgreSQL schema holding the service's tables (empty: the service name). Ignored on SQLite.",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        description="Database connections each process keeps open (PostgreSQL; on SQLite, connections to its "
        "file). A service's PostgreSQL peak is replicas x (database_pool_size + database_max_overflow).",
    )
    database_max_overflow: int = Field(
        default=20,
        ge=0,
        description="Extra database connections opened beyond database_pool_size under load, closed when idle.",
    )
    nats_url: str = Field(
        default="",
        description="NATS server URL (JetStream enabled), e.g. nats://127.0.0.1:4222. No default: a service "
        "declares the product's streams on the server it is pointed at, never on whatever listens locally "
        "(`make run` sets it).",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Replicas of every JetStream stream this service declares: 1 on one server, 3 on a "
        "three-node cluster. A start raises a stream to this count but never lowers it (it warns instead).",
    )
    nats_connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Timeout of one attempt to connect to NATS (startup keeps trying: dependency_wait_seconds).",
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        description="Address the gRPC server binds (0.0.0.0 or [::] in a container).",
    )
    grpc_port: int = Field(default=50050, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    grpc_max_message_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest gRPC message sent or received."
    )
    grpc_shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="How long in-flight RPCs may finish after SIGTERM."
    )
    service_token_keys: str = Field(
        default="",
        description="Secret keys of the internal tokens services call each other with (HS256 JWT, the only "
        "tokens internal-only methods accept): 'kid=base64secret,kid2=...'. Only the services hold them. The "
        "first key signs, every key verifies (rotation: docs/auth.md).",
    )
    crm_token_public_keys: str = Field(
        default="",
        description="Ed25519 public keys that verify the CRM's tokens (EdDSA JWT, never internal): "
        "'kid=base64 of the 32-byte key,...'. The CRM alone holds the private keys; `python -m "
        "services.runtime.grpc_auth keygen` makes a pair.",
    )
    service_token_ttl_seconds: int = Field(
        default=300, gt=0, description="Lifetime of the tokens this service mints for its own outgoing calls."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate of this server (enables TLS)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: verifies peers' certificates (clients: the server; servers: client certs).",
    )
    tls_require_client_cert: bool = Field(
        default=False, description="Servers demand a client certificate (mTLS)."
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Plaintext port serving only grpc.health.v1 from the moment the process starts, for kubelet "
        "probes (they cannot speak TLS): `liveness` is SERVING while the process runs, readiness ('' and each "
        "service) while its dependencies are up. 0: health only on the gRPC port, once it is open.",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Apply the service's database migrations at start. false (a cluster that runs the migration "
        "Job, `python -m services.<svc> migrate`): wait, NOT_SERVING, until the database is at this code's "
        "revision or newer.",
    )
    dependency_wait_seconds: float = Field(
        default=0.0,
        ge=0,
        description="How long startup waits for NATS and the database to become reachable (and, without "
        "migrate_on_start, for the migrations), NOT_SERVING meanwhile; 0 waits forever. When it runs out the "
        "process exits with status 69.",
    )
    dependency_retry_max_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest pause between two attempts to reach a dependency at startup (backoff doubles from "
        "0.5 s, with jitter).",
    )
    health_check_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often the dependency checks behind gRPC health run."
    )
    log_level: str = Field(default="INFO", description="Minimum log level (DEBUG, INFO, WARNING, ERROR).")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("*")
    @classmethod
    def _urls_are_urls(cls, value: Any, info: ValidationInfo) -> Any:
        """Every *_uri / *_url setting (this class's or a service's) is an absolute URL when set: a typo fails
        at startup with one line, not as a traceback at the first request."""
        name = info.field_name or ""
        if isinstance(value, str) and value and name.endswith(("_uri", "_url")) and name != "database_url":
            schemes = NATS_SCHEMES if name == "nats_url" else HTTP_SCHEMES
            for url in value.split(",") if name == "nats_url" else [value]:
                parts = urlsplit(url.strip())
                if parts.scheme not in schemes or not parts.hostname:
                    raise ValueError(f"must be an absolute {' or '.join(schemes)} URL with a host")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        per_service = EnvSettingsSource(settings_cls, env_prefix=cls.service_env_prefix())
        return (init_settings, per_service, env_settings)

    @classmethod
    def service_env_prefix(cls) -> str:
        return f"{SHARED_PREFIX}{cls.service_name.upper()}_"

    @model_validator(mode="after")
    def _fill_local_defaults(self) -> Self:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / f'{self.service_name}.db'}"
        if not self.database_schema:
            self.database_schema = self.service_name
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Reads and validates the environment; raises ConfigurationError naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(cls, exc)) from None

    @classmethod
    def variable_names(cls, field: str) -> tuple[str, str]:
        """The service-specific and the shared variable that set `field`."""
        return (f"{cls.service_env_prefix()}{field.upper()}", f"{SHARED_PREFIX}{field.upper()}")

    @classmethod
    def variable_for(cls, field: str) -> str:
        """The variable that set `field` in this environment (the shared one when neither is set)."""
        specific, shared = cls.variable_names(field)
        return specific if specific in os.environ else shared


def unknown_variables(
    settings_cls: type[ServiceSettings], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str | None]]:
    """MAILSYNC_* variables no service reads, each with the closest valid name (or None).

    One environment often configures every service (`make run`, a ConfigMap), so a variable another service
    reads is not reported, and a misspelt MAILSYNC_<OTHER>_... is left to that service to report."""
    environ = os.environ if environ is None else environ
    own_prefix = settings_cls.service_env_prefix()
    others = tuple(
        f"{SHARED_PREFIX}{name.upper()}_" for name in SERVICE_NAMES if name != settings_cls.service_name
    )
    own = {name for field in settings_cls.model_fields for name in settings_cls.variable_names(field)}
    known = own | ALL_SETTING_VARIABLES
    found = []
    for variable in sorted(environ):
        if not variable.startswith(SHARED_PREFIX) or variable in known:
            continue
        if variable.startswith(NOT_SERVICE_SETTINGS):
            continue
        if variable.startswith(others) and not variable.startswith(own_prefix):
            continue
        candidates = sorted(own if variable.startswith(own_prefix) else known)
        close = difflib.get_close_matches(variable, candidates, n=1, cutoff=0.75)
        found.append((variable, close[0] if close else None))
    return found


def describe_validation_error(settings_cls: type[ServiceSettings], exc: ValidationError) -> str:
    """One line for the first problem, naming the environment variable that carries it."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if not location:
        return f"invalid configuration: {message}"
    variable = settings_cls.variable_for(location[0])
    value = os.environ.get(variable)
    shown = f" (got {value!r})" if value is not None and "KEY" not in variable else ""
    return f"{variable}: {message}{shown}"


def parse_token_keys(
    raw: str, variable: str = TOKEN_KEYS_VARIABLE, *, exact_bytes: int | None = None
) -> dict[str, bytes]:
    """Parses 'kid=base64secret,kid2=...' into an ordered {kid: secret}; the first entry signs.

    `exact_bytes` asks for keys of exactly that size (Ed25519 keys are 32 bytes) instead of at least 32.
    """
    if not raw.strip():
        raise ConfigurationError(
            f"{variable} is not set: give at least one key as 'kid=base64key' "
            "(`make run` generates development keys)"
        )
    keys: dict[str, bytes] = {}
    for entry in raw.split(","):
        kid, separator, encoded = entry.strip().partition("=")
        if not separator or not kid or not encoded:
            raise ConfigurationError(f"{variable}: entry {kid or entry!r} is not 'kid=base64secret'")
        try:
            secret = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{variable}: the secret of key {kid!r} is not valid base64") from None
        if exact_bytes is not None and len(secret) != exact_bytes:
            raise ConfigurationError(f"{variable}: key {kid!r} is not {exact_bytes} bytes")
        if len(secret) < 32:
            raise ConfigurationError(f"{variable}: the secret of key {kid!r} is shorter than 32 bytes")
        if kid in keys:
            raise ConfigurationError(f"{variable}: key id {kid!r} appears twice")
        keys[kid] = secret
    return keys
