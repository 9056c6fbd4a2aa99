"""Client channels to mailsync services: the same TLS settings as the servers, a token on every call, tracing.

`open_channel(target, settings, token=ServiceToken(keys, "threading"))` for service-to-service calls (an
internal token for all locations from the services' own key ring, renewed before it expires); `StaticToken("...")` for a token minted
elsewhere (the CRM, tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from services.runtime.grpc_auth import ALL_LOCATIONS, AUTHORIZATION_HEADER, ServiceTokenKeys
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import client_interceptors


class TokenSource(Protocol):
    def token(self) -> str:
        """A currently valid bearer token."""
        ...


@dataclass(frozen=True)
class StaticToken:
    """A token minted elsewhere."""

    value: str

    def token(self) -> str:
        return self.value


class ServiceToken:
    """An internal token for a service calling another one, re-minted when it nears expiry."""

    def __init__(self, keys: ServiceTokenKeys, subject: str, *, ttl_seconds: int = 300) -> None:
        self._keys = keys
        self._subject = subject
        self._ttl = ttl_seconds
        self._value = ""
        self._renew_at = 0.0

    def token(self) -> str:
        now = time.time()
        if now >= self._renew_at:
            self._value = self._keys.mint(self._subject, [ALL_LOCATIONS], ttl_seconds=self._ttl, now=now)
            self._renew_at = now + self._ttl / 2
        return self._value


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata()
    for key, value in details.metadata or ():
        if key != AUTHORIZATION_HEADER:
            metadata.add(key, value)
    metadata.add(AUTHORIZATION_HEADER, f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _BearerToken:
    """Adds `authorization: Bearer <token>` to every call of one RPC shape."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return _with_token(details, self._source.token())


# grpc.aio files an interceptor under the first shape it matches, so each shape needs its own instance.
class _UnaryUnaryBearer(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamBearer(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryBearer(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStreamBearer(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(source: TokenSource) -> list[Any]:
    """Client interceptors that send `source`'s token on every call, whatever its shape."""
    return [
        shape(source)
        for shape in (_UnaryUnaryBearer, _UnaryStreamBearer, _StreamUnaryBearer, _StreamStreamBearer)
    ]


def channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """TLS when a CA is configured (the server's certificate is verified); with our cert too, for mTLS."""
    if settings.tls_ca_file is None:
        return None
    ca = settings.tls_ca_file.read_bytes()
    key = settings.tls_key_file.read_bytes() if settings.tls_key_file else None
    cert = settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def open_channel(
    target: str,
    settings: ServiceSettings | None = None,
    *,
    token: TokenSource | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel to `target` ("host:port"); no connection is made until the first call.

    TLS comes from `credentials` or else from the settings' TLS files; `token` (when given) is sent on every
    call. Close the channel with `await channel.close()`.
    """
    limit = settings.grpc_max_message_bytes if settings else 4 * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    interceptors: list[Any] = client_interceptors()
    if token is not None:
        interceptors.extend(bearer_interceptors(token))
    if credentials is None and settings is not None:
        credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
