"""Bulk and workflow email through the location's SMTP provider (R13), against a real aiosmtpd server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from email import policy
from email.parser import BytesParser

import pytest

from services.outbound.domain.email import EmailAddress, OutgoingEmail
from services.outbound.mime import BccHandling, BuiltMessage, build_message
from services.outbound.smtp import (
    SmtpNotSent,
    SmtpOutcomeUnknown,
    SmtpProvider,
    SmtpRejected,
    SmtpSecurity,
    send_via_smtp,
)
from tests.fixtures.smtp_server import RunningSmtpServer

SENT_AT = dt.datetime(2026, 11, 26, 21, 0, tzinfo=dt.UTC)
StartSmtpServer = Callable[..., RunningSmtpServer]


def _bulk_message(*, automatic: bool = False) -> BuiltMessage:
    email = OutgoingEmail(
        sender=EmailAddress("news@agency.example", "Agency Néws"),
        to=(EmailAddress("lead1@example.org", "Lead One"),),
        cc=(EmailAddress("lead2@example.org"),),
        bcc=(EmailAddress("audit@agency.example"),),
        subject="November offers ✨",
        text_body="Hello!\n.\nA line that is only a dot must survive.\n",
        html_body="<p>Hello!</p>",
        automatic=automatic,
    )
    return build_message(
        email, message_id="<bulk-1@mail.agency.example>", date=SENT_AT, bcc=BccHandling.ENVELOPE_ONLY
    )


def _provider(server: RunningSmtpServer, **overrides: object) -> SmtpProvider:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "security": SmtpSecurity.NONE,
        "timeout_seconds": 10.0,
    }
    values.update(overrides)
    return SmtpProvider(**values)  # type: ignore[arg-type]


async def test_R13_bulk_email_arrives_with_the_right_envelope_and_headers(
    start_smtp_server: StartSmtpServer,
) -> None:
    server = start_smtp_server()
    message = _bulk_message()
    delivery = await send_via_smtp(_provider(server), message)
    assert delivery.accepted == ("lead1@example.org", "lead2@example.org", "audit@agency.example")
    assert delivery.refused == {}
    [received] = server.handler.received
    assert received.mail_from == "news@agency.example"
    assert received.rcpt_tos == ("lead1@example.org", "lead2@example.org", "audit@agency.example")
    parsed = BytesParser(policy=policy.default).parsebytes(received.content)
    assert parsed["Message-ID"] == "<bulk-1@mail.agency.example>"
    assert parsed["Subject"] == "November offers ✨"
    assert parsed["From"].addresses[0].display_name == "Agency Néws"
    assert "Bcc" not in parsed
    assert "audit@agency.example" not in received.content.decode()
    text = parsed.get_body(("plain",))
    assert text is not None and "\n.\nA line that is only a dot" in text.get_content().replace("\r\n", "\n")


async def test_R13_workflow_email_is_marked_automatic(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server()
    await send_via_smtp(_provider(server), _bulk_message(automatic=True))
    parsed = BytesParser(policy=policy.default).parsebytes(server.handler.received[0].content)
    assert parsed["Auto-Submitted"] == "auto-generated"


async def test_R13_starttls_and_login_are_used_when_configured(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server(tls=True, credentials=("agency", "s3cret"))
    provider = _provider(
        server,
        security=SmtpSecurity.STARTTLS,
        username="agency",
        password="s3cret",
        tls_context=server.client_tls_context,
    )
    await send_via_smtp(provider, _bulk_message())
    [received] = server.handler.received
    assert received.over_tls
    assert received.authenticated_as == "agency"


async def test_wrong_credentials_are_a_permanent_not_sent(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server(tls=True, credentials=("agency", "s3cret"))
    provider = _provider(
        server,
        security=SmtpSecurity.STARTTLS,
        username="agency",
        password="wrong",
        tls_context=server.client_tls_context,
    )
    with pytest.raises(SmtpNotSent) as refused:
        await send_via_smtp(provider, _bulk_message())
    assert refused.value.permanent
    assert server.handler.received == []


async def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
    start_smtp_server: StartSmtpServer,
) -> None:
    server = start_smtp_server(tls=True)
    with pytest.raises(SmtpNotSent):
        await send_via_smtp(_provider(server, security=SmtpSecurity.STARTTLS), _bulk_message())
    assert server.handler.received == []


async def test_starttls_required_but_not_offered_sends_nothing(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server()
    with pytest.raises(SmtpNotSent) as refused:
        await send_via_smtp(_provider(server, security=SmtpSecurity.STARTTLS), _bulk_message())
    assert "STARTTLS" in refused.value.reason
    assert server.handler.received == []


async def test_refused_recipients_are_reported_and_the_rest_delivered(
    start_smtp_server: StartSmtpServer,
) -> None:
    server = start_smtp_server()
    server.handler.refuse_recipients = {"lead2@example.org"}
    delivery = await send_via_smtp(_provider(server), _bulk_message())
    assert delivery.accepted == ("lead1@example.org", "audit@agency.example")
    assert delivery.refused["lead2@example.org"][0] == 550
    assert server.handler.received[0].rcpt_tos == ("lead1@example.org", "audit@agency.example")


async def test_a_refused_message_is_a_definite_failure(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server()
    server.handler.data_reply = "554 5.7.1 message refused"
    with pytest.raises(SmtpRejected) as refused:
        await send_via_smtp(_provider(server), _bulk_message())
    assert refused.value.code == 554
    assert refused.value.permanent


async def test_a_connection_lost_during_data_leaves_the_outcome_unknown(
    start_smtp_server: StartSmtpServer,
) -> None:
    server = start_smtp_server()
    server.handler.drop_connection_during_data = True
    with pytest.raises(SmtpOutcomeUnknown):
        await send_via_smtp(_provider(server), _bulk_message())
    # The server did receive it: this is exactly why such a send is never retried blindly.
    assert len(server.handler.received) == 1


async def test_an_unreachable_provider_is_a_transient_not_sent(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server()
    with pytest.raises(SmtpNotSent) as refused:
        await send_via_smtp(_provider(server, port=1), _bulk_message())
    assert not refused.value.permanent


async def test_a_message_built_for_gmail_is_never_handed_to_smtp(start_smtp_server: StartSmtpServer) -> None:
    server = start_smtp_server()
    email = OutgoingEmail(
        sender=EmailAddress("news@agency.example"),
        to=(EmailAddress("lead1@example.org"),),
        bcc=(EmailAddress("hidden@example.org"),),
        subject="x",
    )
    with pytest.raises(ValueError):
        await send_via_smtp(_provider(server), build_message(email, message_id="<a@b.example>", date=SENT_AT))
    assert server.handler.received == []
