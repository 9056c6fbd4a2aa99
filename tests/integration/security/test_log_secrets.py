"""No secret and no mail content in any log line (issue 13): the whole product at DEBUG runs a Gmail connect (an
OAuth code and tokens), synced mail, a BCC drop over SMTP (the location's secret token in RCPT TO), a send, and
access-token refreshes (the sandbox issues 60-second tokens, so every use refreshes), then every line the four
services logged is searched for each secret and each body."""

from __future__ import annotations

import email.utils
import json
import re
import uuid
from collections.abc import Iterator

import grpc
import pytest

from mailsync.v1 import auth_pb2, auth_pb2_grpc, common_pb2, outbound_pb2
from services.runtime.grpc_auth import ServiceTokenKeys
from tests.fixtures.databases import _drop_schema, database_backends, postgres_url
from tests.fixtures.stack import E2EStack, eventually, running_product

SERVICES = ("auth", "ingest", "threading", "outbound")
# Shapes no log line may hold, whatever their value: Google's tokens and codes as the sandbox issues them, JWTs.
SECRET_SHAPES = {
    "access token": re.compile(r"ya29\.[A-Za-z0-9._-]{8,}"),
    "refresh token": re.compile(r"1//[A-Za-z0-9._-]{8,}"),
    "authorization code": re.compile(r"4/sandbox-[A-Za-z0-9._-]+"),
    "jwt": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."),
    "oauth parameter": re.compile(r"[?&](?:code|state)=(?!\[redacted\])[^&\s\"]+"),
}


@pytest.fixture(scope="module", params=database_backends())
def product(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EStack]:
    """The product at DEBUG on SQLite, and on PostgreSQL when configured (its driver logs differently)."""
    extra = {"MAILSYNC_LOG_LEVEL": "DEBUG"}
    schemas = []
    if request.param == "postgresql":
        url = postgres_url()
        assert url is not None
        extra["MAILSYNC_DATABASE_URL"] = url
        for service in SERVICES:
            schemas.append(f"logs_{uuid.uuid4().hex[:10]}_{service}")
            extra[f"MAILSYNC_{service.upper()}_DATABASE_SCHEMA"] = schemas[-1]
    try:
        with running_product(tmp_path_factory.mktemp("debug-logs"), extra_env=extra, replica=False) as stack:
            yield stack
    finally:
        for schema in schemas:
            _drop_schema(str(postgres_url()), schema)


def service_log_lines(stack: E2EStack) -> dict[str, list[str]]:
    return {
        m.name: m.log_path.read_text(errors="replace").splitlines()
        for m in stack.runner.processes
        if m.name in SERVICES
    }


def key_material(stack: E2EStack) -> list[str]:
    """The base64 secrets of every key ring the processes hold (and the CRM's private key)."""
    rings = [
        stack.runner.token_keys,
        next(m for m in stack.runner.processes if m.name == "auth").env["MAILSYNC_AUTH_TOKEN_KEYS"],
    ]
    assert stack.runner.crm_signer is not None
    rings.append(stack.runner.crm_signer.signing_keys_text())
    return [entry.split("=", 1)[-1].split(":", 1)[-1] for ring in rings for entry in ring.split(",")]


def test_a_connect_a_sync_a_drop_a_send_and_refreshes_at_debug_log_no_secret(product: E2EStack) -> None:
    stack = product
    stack.sandbox.settings(access_token_lifetime_s=60)
    location = stack.new_id("loc")
    user = stack.create_user([location], name="dora")
    mailbox = stack.new_address("dora")
    connection = stack.connect_gmail(user.user_id, location, mailbox)
    contact_address = stack.new_address("client", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)

    synced_body = f"synced-body-{uuid.uuid4().hex}"
    delivered = stack.deliver(mailbox, contact_address, f"Hello {uuid.uuid4().hex}", synced_body)
    stored = stack.wait_for_message(
        location, contact.contact_id, rfc_message_id=delivered["message_id"], timeout=60
    )

    bcc_address = stack.bcc_address(location)
    bcc_token = bcc_address.split("+", 1)[1].split("@", 1)[0]
    drop_body = f"dropped-body-{uuid.uuid4().hex}"
    raw = (
        f"From: {mailbox}\r\nTo: {contact_address}\r\nSubject: Logged {uuid.uuid4().hex}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@gmail.test>\r\nDate: {email.utils.formatdate()}\r\n\r\n{drop_body}\r\n"
    ).encode()
    stack.drop_over_smtp(mailbox, bcc_address, stack.stamped_by_mx(raw, "gmail.test"))

    sent_body = f"sent-body-{uuid.uuid4().hex}"
    sent = stack.outbound.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("req"),
            location_id=location,
            user_id=user.user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=contact_address)],
            subject="Quote",
            text_body=sent_body,
        )
    )
    assert sent.send.state == outbound_pb2.SEND_STATE_SENT

    # Two token requests a minute-lived token apart in validity: each one refreshes with the refresh token.
    internal = ServiceTokenKeys.parse(stack.runner.token_keys).mint("log-test")
    address = next(m.address for m in stack.runner.processes if m.name == "auth")
    with grpc.insecure_channel(address) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        metadata = (("authorization", f"Bearer {internal}"),)
        first = auth.GetAccessToken(
            auth_pb2.GetAccessTokenRequest(mailbox_id=connection.mailbox_id), metadata=metadata
        )
        second = auth.GetAccessToken(
            auth_pb2.GetAccessTokenRequest(mailbox_id=connection.mailbox_id), metadata=metadata
        )
    assert first.access_token != second.access_token, "the token was not refreshed"

    def dropped_message_synced() -> bool:
        messages = stack.all_messages(location)
        return any(drop_body in m.text_body for m in messages)

    eventually(dropped_message_synced, timeout=60, what="the drop reached threading")

    # The secrets and bodies were real and flowed through the services (what makes their absence meaningful).
    assert bcc_token and len(bcc_token) >= 20
    assert synced_body in stored.text_body
    assert first.access_token.startswith("ya29.")
    exact = {
        "bcc token": bcc_token,
        "access token 1": first.access_token,
        "access token 2": second.access_token,
        "crm token": stack.crm_token,
        "internal token": internal,
        "synced body": synced_body,
        "dropped body": drop_body,
        "sent body": sent_body,
        **{f"key {n}": key for n, key in enumerate(key_material(stack))},
    }
    lines = service_log_lines(stack)
    found: list[str] = []
    for service, service_lines in lines.items():
        for number, line in enumerate(service_lines, 1):
            found += [f"{service}:{number} {name}" for name, value in exact.items() if value in line]
            found += [
                f"{service}:{number} {name}" for name, shape in SECRET_SHAPES.items() if shape.search(line)
            ]
    total = sum(len(v) for v in lines.values())
    print(f"\nlog-secret check: {total} lines from {', '.join(f'{s} {len(v)}' for s, v in lines.items())}")
    assert found == [], found[:20]

    # The logs are at DEBUG, and the lines that used to carry secrets are there, redacted.
    severities = {
        json.loads(line).get("severity") for v in lines.values() for line in v if line.startswith("{")
    }
    assert "DEBUG" in severities
    assert any("recip" in line and "+[redacted]@" in line for line in lines["ingest"]), (
        "RCPT TO was not logged"
    )


def test_the_search_finds_a_secret_where_one_is_written() -> None:
    """Negative control: the same search over a line carrying the secrets finds every one of them."""
    line = (
        "recip: bcc+abcdefghijklmnopqrstuvwxyz234567@drop.test GET /oauth/callback?state=abc&code=4/sandbox-xyz "
        "ya29.sandbox-0123456789 1//sandbox-0123456789 eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjcm0ifQ.sig"
    )
    hits = {name for name, shape in SECRET_SHAPES.items() if shape.search(line)}
    assert hits == set(SECRET_SHAPES)
