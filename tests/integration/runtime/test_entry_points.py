"""What an operator meets at `python -m services.<name>` (real subprocesses): --help for every service, the
three bad settings issue 15 found ending in tracebacks now one line and exit 2, no NATS URL (no default outside
`make run`) one line saying how to set it, and a misspelt MAILSYNC_* variable warned with the closest name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.auth.crypto import generate_key_text
from tests.fixtures.services import crm_public_keys_value, new_token_keys_value
from tools.run import ROOT, SERVICES

SANDBOX_ENDPOINTS = {
    # Google stand-ins (never called here), so the production refusals of sandbox defaults do not fire first.
    "MAILSYNC_GMAIL_ROOT_URL": "http://127.0.0.1:9/",
    "MAILSYNC_AUTH_GOOGLE_AUTHORIZATION_URI": "http://127.0.0.1:9/o/oauth2/v2/auth",
    "MAILSYNC_AUTH_GOOGLE_TOKEN_URI": "http://127.0.0.1:9/token",
    "MAILSYNC_AUTH_GOOGLE_REVOKE_URI": "http://127.0.0.1:9/revoke",
    "MAILSYNC_AUTH_GOOGLE_USERINFO_URI": "http://127.0.0.1:9/oauth2/v3/userinfo",
    "MAILSYNC_INGEST_PUSH_CERTS_URL": "http://127.0.0.1:9/oauth2/v1/certs",
}


# Each case starts the service process up to three times.
pytestmark = pytest.mark.timeout(900)


def environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAILSYNC_", "OTEL_"))}
    env.update(SANDBOX_ENDPOINTS)
    env.update(
        {
            "MAILSYNC_DATA_DIR": str(tmp_path / "data"),
            "MAILSYNC_SERVICE_TOKEN_KEYS": new_token_keys_value(),
            "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS": crm_public_keys_value(),
            "MAILSYNC_AUTH_TOKEN_KEYS": generate_key_text(1),
            # Nothing listens there; every case below stops before NATS is needed.
            "MAILSYNC_NATS_URL": "nats://127.0.0.1:9",
            "MAILSYNC_DEPENDENCY_WAIT_SECONDS": "2",
        }
    )
    env.update(variables)
    return {key: value for key, value in env.items() if value != ""}


def start(service: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        # A hang bound: a service's imports alone took tens of seconds with two test runs at once on two cores.
        timeout=180,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_the_commands_and_needs_no_settings(service: str, tmp_path: Path) -> None:
    bare = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    for flag in ("--help", "-h"):
        result = start(service, bare, flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: python -m services.{service} ")
        for command in ("serve", "migrate", "dead-letters", "docs/configuration.md"):
            assert command in result.stdout
    unknown = start(service, bare, "--hlep")
    assert unknown.returncode == 2 and "--help" in unknown.stderr


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("auth", "MAILSYNC_DATA_DIR", "/proc/nope"),
        ("auth", "MAILSYNC_AUTH_OAUTH_REDIRECT_URI", "notaurl"),
        ("outbound", "MAILSYNC_OUTBOUND_SMTP_SECURITY", "SSL"),
    ],
)
def test_the_bad_settings_that_ended_in_tracebacks_are_one_line_and_exit_2(
    service: str, variable: str, value: str, tmp_path: Path
) -> None:
    env = environment(tmp_path, **{variable: value})
    line = one_line(start(service, env))
    assert line.startswith(f"services.{service}: ")
    assert variable in line or (variable == "MAILSYNC_DATA_DIR" and "/proc/nope" in line)


def test_without_a_nats_url_a_service_says_how_to_set_it_and_connects_nowhere(tmp_path: Path) -> None:
    line = one_line(start("threading", environment(tmp_path, MAILSYNC_NATS_URL="")))
    assert "MAILSYNC_NATS_URL is not set" in line and "nats://" in line and "make run" in line


def test_a_misspelt_variable_is_warned_with_the_closest_name(tmp_path: Path) -> None:
    result = start(
        "ingest",
        environment(tmp_path, MAILSYNC_NATS_URL="", MAILSYNC_INGEST_BCC_SMPT_PORT="2526"),
    )
    assert result.returncode == 2
    warnings = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    [warning] = [w for w in warnings if w.get("variable") == "MAILSYNC_INGEST_BCC_SMPT_PORT"]
    assert warning["severity"] == "WARNING"
    assert warning["did_you_mean"] == "MAILSYNC_INGEST_BCC_SMTP_PORT"
    # Variables of the other services in the same environment are not reported.
    assert not [w for w in warnings if w.get("variable", "").startswith("MAILSYNC_AUTH_")]
