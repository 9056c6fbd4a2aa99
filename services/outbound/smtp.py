"""Sends bulk and workflow email through the location's own SMTP provider (R13), never through Gmail.

smtplib runs in a worker thread. Each SMTP step is its own call so a failure says how far the message got:
before DATA was accepted nothing was sent (SmtpNotSent); a reply code refusing DATA is a definite no
(SmtpRejected); a connection lost while DATA was in flight leaves the outcome unknown (SmtpOutcomeUnknown), and
such a send must not be retried blindly.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass, field
from enum import Enum

from services.outbound.mime import BuiltMessage


class SmtpSecurity(Enum):
    NONE = "NONE"
    STARTTLS = "STARTTLS"
    IMPLICIT_TLS = "IMPLICIT_TLS"


@dataclass(frozen=True)
class SmtpProvider:
    """One location's SMTP submission endpoint."""

    host: str
    port: int = 587
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_seconds: float = 30.0
    # None: the system's trust store with hostname checks (tests pass a context trusting their own CA).
    tls_context: ssl.SSLContext | None = None
    local_hostname: str | None = None


@dataclass(frozen=True)
class SmtpDelivery:
    """The provider took the message for these recipients; the others were refused one by one."""

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]


class SmtpNotSent(Exception):
    """The message certainly did not go out (connection, TLS, login or envelope failed); retrying is safe."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class SmtpRejected(SmtpNotSent):
    """The provider answered DATA with a refusal: the message did not go out."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}", permanent=500 <= code < 600)
        self.code = code


class SmtpOutcomeUnknown(Exception):
    """The connection failed while the message was being handed over: it may or may not have gone out."""


async def send_via_smtp(provider: SmtpProvider, message: BuiltMessage) -> SmtpDelivery:
    """Hands the message to the provider (envelope from the built message, which must carry no Bcc header)."""
    if b"\r\nBcc:" in message.raw.split(b"\r\n\r\n", 1)[0]:
        raise ValueError("a message for SMTP must be built with BccHandling.ENVELOPE_ONLY")
    return await asyncio.to_thread(_send_blocking, provider, message)


def _send_blocking(provider: SmtpProvider, message: BuiltMessage) -> SmtpDelivery:
    client = _connect(provider)
    try:
        _start_session(client, provider)
        return _transfer(client, message)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _connect(provider: SmtpProvider) -> smtplib.SMTP:
    try:
        if provider.security is SmtpSecurity.IMPLICIT_TLS:
            return smtplib.SMTP_SSL(
                provider.host,
                provider.port,
                local_hostname=provider.local_hostname,
                timeout=provider.timeout_seconds,
                context=provider.tls_context or ssl.create_default_context(),
            )
        return smtplib.SMTP(
            provider.host,
            provider.port,
            local_hostname=provider.local_hostname,
            timeout=provider.timeout_seconds,
        )
    except (smtplib.SMTPException, OSError) as error:
        raise SmtpNotSent(
            f"cannot connect to {provider.host}:{provider.port}: {error}", permanent=False
        ) from error


def _start_session(client: smtplib.SMTP, provider: SmtpProvider) -> None:
    try:
        client.ehlo()
        if provider.security is SmtpSecurity.STARTTLS:
            # Refuse to send credentials or mail in clear text when the provider does not offer TLS.
            if not client.has_extn("starttls"):
                raise SmtpNotSent(f"{provider.host} does not offer STARTTLS", permanent=True)
            client.starttls(context=provider.tls_context or ssl.create_default_context())
            client.ehlo()
        if provider.username:
            client.login(provider.username, provider.password)
    except smtplib.SMTPAuthenticationError as error:
        raise SmtpNotSent(
            f"login refused: {error.smtp_code} {_text(error.smtp_error)}", permanent=True
        ) from error
    except smtplib.SMTPResponseException as error:
        raise SmtpNotSent(
            f"session refused: {error.smtp_code} {_text(error.smtp_error)}", permanent=error.smtp_code >= 500
        ) from error
    except (smtplib.SMTPException, OSError) as error:
        raise SmtpNotSent(f"session with {provider.host} failed: {error}", permanent=False) from error


def _transfer(client: smtplib.SMTP, message: BuiltMessage) -> SmtpDelivery:
    try:
        code, reply = client.mail(message.envelope_sender)
        if code != 250:
            raise SmtpNotSent(f"sender refused: {code} {_text(reply)}", permanent=code >= 500)
        refused: dict[str, tuple[int, str]] = {}
        for recipient in message.envelope_recipients:
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, _text(reply))
        accepted = tuple(r for r in message.envelope_recipients if r not in refused)
        if not accepted:
            client.rset()
            permanent = all(code >= 500 for code, _ in refused.values())
            raise SmtpNotSent(f"every recipient was refused: {refused}", permanent=permanent)
    except (smtplib.SMTPServerDisconnected, OSError) as error:
        raise SmtpNotSent(f"connection lost before the message was sent: {error}", permanent=False) from error
    try:
        code, reply = client.data(message.raw)
    except smtplib.SMTPDataError as error:
        raise SmtpRejected(error.smtp_code, _text(error.smtp_error)) from error
    except (smtplib.SMTPServerDisconnected, OSError) as error:
        raise SmtpOutcomeUnknown(f"connection lost while handing over the message: {error}") from error
    if code != 250:
        raise SmtpRejected(code, _text(reply))
    return SmtpDelivery(accepted=accepted, refused=refused)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
