"""`python -m services.ingest` against Google's own endpoints refuses to start with the sandbox's push audience:
one line naming the variable, exit 2; with a real audience it starts (a real process and nats-server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.services import crm_public_keys_value, new_token_keys_value
from tools.ports import free_port

PRODUCTION = {
    "MAILSYNC_INGEST_PUSH_AUDIENCE": "https://mail.crm.acme-corp.com/gmail/push",
    "MAILSYNC_INGEST_PUSH_SERVICE_ACCOUNT_EMAIL": "gmail-push@acme-crm-prod.iam.gserviceaccount.com",
    "MAILSYNC_INGEST_BCC_DROP_DOMAIN": "drop.crm.acme-corp.com",
}


def ingest_env(tmp_path: Path, nats_url: str, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAILSYNC_", "OTEL_"))}
    env.update(
        {
            "MAILSYNC_NATS_URL": nats_url,
            "MAILSYNC_SERVICE_TOKEN_KEYS": new_token_keys_value(),
            "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS": crm_public_keys_value(),
            "MAILSYNC_DATA_DIR": str(tmp_path / "data"),
            "MAILSYNC_INGEST_GRPC_PORT": str(free_port()),
            "MAILSYNC_INGEST_HTTP_PORT": "0",
            "MAILSYNC_INGEST_BCC_SMTP_PORT": "0",
            "MAILSYNC_INGEST_BCC_VERIFY_DKIM": "false",
            **PRODUCTION,
        }
    )
    env.update(variables)
    return env


def test_the_sandbox_push_audience_against_google_stops_ingest_naming_the_variable(
    tmp_path: Path, nats_server: Any
) -> None:
    env = ingest_env(tmp_path, nats_server.url)
    del env["MAILSYNC_INGEST_PUSH_AUDIENCE"]  # back to the sandbox's default
    result = subprocess.run(
        [sys.executable, "-m", "services.ingest"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert (
        lines[0].startswith("services.ingest: MAILSYNC_PUSH_AUDIENCE")
        or "MAILSYNC_INGEST_PUSH_AUDIENCE" in lines[0]
    )
    assert "sandbox" in lines[0]


def test_real_production_values_start_ingest(tmp_path: Path, nats_server: Any) -> None:
    """Negative control: the same process with every production value set gets past the check and serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        env=ingest_env(tmp_path, nats_server.url),
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
            raise AssertionError(f"ingest did not start: {process.stderr.read() if process.stderr else ''}")
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
