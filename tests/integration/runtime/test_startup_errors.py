"""Bad configuration stops `python -m services.auth` at startup with one line that names the problem, exit
status 2 and no traceback (a real subprocess; a real nats-server where the failure is not NATS itself)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.auth.crypto import generate_key_text
from tests.fixtures.services import crm_public_keys_value, new_token_keys_value
from tools.ports import free_port


def clean_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAILSYNC_", "OTEL_"))}
    env.update(
        {
            "MAILSYNC_DATA_DIR": str(tmp_path / "data"),
            "MAILSYNC_GRPC_PORT": "0",
            "MAILSYNC_AUTH_HTTP_PORT": "0",
            "MAILSYNC_NATS_CONNECT_TIMEOUT_SECONDS": "1",
            # The auth service's own secret (Gmail tokens at rest), so the runtime's checks are what fail.
            "MAILSYNC_AUTH_TOKEN_KEYS": generate_key_text(1),
            # A Gmail stand-in (never called at startup): against Google itself the sandbox defaults of the
            # OAuth client would be refused first (tests/integration/runtime/test_production_refusal.py).
            "MAILSYNC_AUTH_GMAIL_ROOT_URL": "http://127.0.0.1:9/",
            "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS": crm_public_keys_value(),
        }
    )
    env.update(variables)
    return env


def start_auth(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.auth"], env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in lines[0]


def test_missing_token_keys_fail_naming_the_variable(tmp_path: Path, nats_server: Any) -> None:
    result = start_auth(clean_environment(tmp_path, MAILSYNC_NATS_URL=nats_server.url))
    assert_one_line_failure(result, "MAILSYNC_SERVICE_TOKEN_KEYS", "not set")


def test_missing_crm_public_keys_fail_naming_the_variable(tmp_path: Path, nats_server: Any) -> None:
    env = clean_environment(
        tmp_path,
        MAILSYNC_NATS_URL=nats_server.url,
        MAILSYNC_SERVICE_TOKEN_KEYS=new_token_keys_value(),
        MAILSYNC_CRM_TOKEN_PUBLIC_KEYS="",
    )
    assert_one_line_failure(start_auth(env), "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS", "not set")


def test_malformed_database_url_fails_naming_the_variable(tmp_path: Path, nats_server: Any) -> None:
    env = clean_environment(
        tmp_path,
        MAILSYNC_NATS_URL=nats_server.url,
        MAILSYNC_SERVICE_TOKEN_KEYS=new_token_keys_value(),
        MAILSYNC_AUTH_DATABASE_URL="postgresql:://nowhere",
    )
    assert_one_line_failure(start_auth(env), "MAILSYNC_AUTH_DATABASE_URL", "database URL")


def test_nats_unreachable_for_the_whole_allowed_wait_fails_naming_the_variable(tmp_path: Path) -> None:
    # Unreachable is not a bad setting: the service waits (tests/integration/runtime/test_startup_waits.py), and
    # only when the allowed wait runs out does it exit, with 69 (EX_UNAVAILABLE) rather than 2.
    nowhere = f"nats://127.0.0.1:{free_port()}"
    env = clean_environment(
        tmp_path,
        MAILSYNC_NATS_URL=nowhere,
        MAILSYNC_SERVICE_TOKEN_KEYS=new_token_keys_value(),
        MAILSYNC_DEPENDENCY_WAIT_SECONDS="2",
    )
    result = start_auth(env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 69, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in ("MAILSYNC_NATS_URL", "cannot reach NATS", nowhere, "unreachable"):
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSYNC_AUTH_GRPC_PORT", "not-a-port"),
        ("MAILSYNC_LOG_LEVEL", "LOUD"),
        ("MAILSYNC_SERVICE_TOKEN_KEYS", "k1=not*base64"),
        ("MAILSYNC_CRM_TOKEN_PUBLIC_KEYS", "crm1=" + "A" * 48),
        # A ring whose key id is also a CRM key id would let a token pick its trust level.
        ("MAILSYNC_SERVICE_TOKEN_KEYS", "crm-test=" + "A" * 44),
        ("OTEL_TRACES_EXPORTER", "carrier-pigeon"),
    ],
)
def test_invalid_values_fail_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    env = clean_environment(
        tmp_path, **{"MAILSYNC_SERVICE_TOKEN_KEYS": new_token_keys_value(), variable: value}
    )
    assert_one_line_failure(start_auth(env), variable)


def test_a_good_configuration_is_not_reported_as_an_error(tmp_path: Path, nats_server: Any) -> None:
    """Negative control: with everything valid the process starts and only stops when told to."""
    env = clean_environment(
        tmp_path, MAILSYNC_NATS_URL=nats_server.url, MAILSYNC_SERVICE_TOKEN_KEYS=new_token_keys_value()
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "services.auth"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if '"service started"' in line:
                break
        else:
            raise AssertionError(
                f"the service did not start: {process.stderr.read() if process.stderr else ''}"
            )
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert err.strip() == ""


def test_a_taken_grpc_port_fails_naming_the_variable(tmp_path: Path, nats_server: Any) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = clean_environment(
            tmp_path,
            MAILSYNC_NATS_URL=nats_server.url,
            MAILSYNC_SERVICE_TOKEN_KEYS=new_token_keys_value(),
            MAILSYNC_AUTH_GRPC_PORT=str(port),
        )
        assert_one_line_failure(start_auth(env), "MAILSYNC_AUTH_GRPC_PORT", f"127.0.0.1:{port}", "in use")
