"""Per-call service tokens (HS256 JWT) and the server interceptors that enforce them.

Every RPC except health and reflection carries `authorization: Bearer <JWT>` whose claims name the caller
(`sub`), the locations it may act for (`locations`, `["*"]` for all) and whether it is a service
(`internal`). Authentication checks the token; tenant scoping checks the request's `location_id` against the
token and refuses internal-only methods to outside callers. Both live here, in one place, for every service.

CLI for development, tests and the CRM: `python -m services.runtime.grpc_auth mint --sub crm --locations a,b`.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

from services.runtime.errors import PermissionDenied, Unauthenticated, abort_with
from services.runtime.grpc_handlers import wrap_handler
from services.runtime.settings import TOKEN_KEYS_VARIABLE, ConfigurationError, parse_token_keys

ISSUER = "mailsync"
AUDIENCE = "mailsync"
ALL_LOCATIONS = "*"
AUTHORIZATION_HEADER = "authorization"
# Reachable without a token: probes and tooling must work before anyone holds a token.
UNAUTHENTICATED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class LocationNotPermitted(PermissionDenied):
    reason = "LOCATION_NOT_PERMITTED"


class InternalOnlyMethod(PermissionDenied):
    reason = "INTERNAL_ONLY_METHOD"

    def __init__(self, method: str, caller: str) -> None:
        super().__init__(
            f"{method} is for internal callers and {caller!r} is not one", method=method, caller=caller
        )


class InvalidCredentials(Unauthenticated):
    reason = "INVALID_TOKEN"


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the verified token says."""

    name: str
    locations: frozenset[str]
    internal: bool

    def may_access(self, location_id: str) -> bool:
        return ALL_LOCATIONS in self.locations or location_id in self.locations

    def require_location(self, location_id: str) -> None:
        """Raises PermissionDenied unless the caller may act for location_id (for client-streaming RPCs)."""
        if location_id and not self.may_access(location_id):
            raise LocationNotPermitted(
                f"caller {self.name!r} may not act for location {location_id!r}",
                caller=self.name,
                location_id=location_id,
            )


_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "mailsync_caller", default=None
)


def current_caller() -> Caller:
    """The authenticated caller of the RPC being served (raises outside an authenticated RPC)."""
    caller = _current_caller.get()
    if caller is None:
        raise RuntimeError("current_caller() called outside an authenticated RPC")
    return caller


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, expired or for someone else."""


class TokenKeys:
    """The signing keys: the first signs, all verify (so a new key is prepended, then the old one dropped)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ConfigurationError(f"{TOKEN_KEYS_VARIABLE} holds no key")
        self._keys = dict(keys)
        self.signing_kid = next(iter(self._keys))

    @classmethod
    def parse(cls, raw: str) -> TokenKeys:
        return cls(parse_token_keys(raw))

    def mint(
        self,
        subject: str,
        locations: Iterable[str],
        *,
        internal: bool = False,
        ttl_seconds: int = 300,
        now: float | None = None,
    ) -> str:
        """A signed token for `subject`, valid for `ttl_seconds`."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "locations": sorted(set(locations)),
            "internal": internal,
            "iat": issued,
            "exp": issued + ttl_seconds,
        }
        return jwt.encode(
            claims, self._keys[self.signing_kid], algorithm="HS256", headers={"kid": self.signing_kid}
        )

    def verify(self, token: str) -> Caller:
        """The caller a valid token names; raises InvalidToken saying what is wrong."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        secret = self._keys.get(str(kid))
        if secret is None:
            raise InvalidToken(f"token signed with unknown key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        locations = claims.get("locations", [])
        if not isinstance(locations, list) or not all(isinstance(item, str) for item in locations):
            raise InvalidToken("invalid token: 'locations' must be a list of location ids")
        return Caller(
            name=str(claims["sub"]), locations=frozenset(locations), internal=bool(claims.get("internal"))
        )


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the `authorization: Bearer ...` metadata; raises InvalidToken when absent."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_HEADER:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise InvalidToken("authorization metadata is not 'Bearer <token>'")
            return token.strip()
    raise InvalidToken("missing 'authorization: Bearer <token>' metadata")


def _service_of(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token and makes the caller available through `current_caller()`."""

    def __init__(self, keys: TokenKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or _service_of(handler_call_details.method) in UNAUTHENTICATED_SERVICES:
            return handler
        keys = self._keys

        @asynccontextmanager
        async def authenticated(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            try:
                caller = keys.verify(bearer_token(context.invocation_metadata()))
            except InvalidToken as exc:
                await abort_with(context, InvalidCredentials(str(exc)))
            # Entered inside the RPC's own task, so the servicer (and only this RPC) sees the caller.
            reset = _current_caller.set(caller)
            try:
                yield
            finally:
                _current_caller.reset(reset)

        return wrap_handler(handler, authenticated)


class TenantScopeInterceptor(grpc.aio.ServerInterceptor):
    """Refuses requests for a location outside the caller's token, and internal-only methods to outsiders.

    Runs after AuthenticationInterceptor (later in the interceptor list), so the caller is known.
    """

    def __init__(self, internal_methods: Iterable[str]) -> None:
        self._internal_methods = frozenset(internal_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) in UNAUTHENTICATED_SERVICES:
            return handler
        internal_only = method in self._internal_methods

        @asynccontextmanager
        async def scoped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            caller = current_caller()
            if internal_only and not caller.internal:
                await abort_with(context, InternalOnlyMethod(method, caller.name))
            location_id = getattr(request, "location_id", "") if request is not None else ""
            try:
                caller.require_location(location_id)
            except LocationNotPermitted as error:
                await abort_with(context, error)
            yield

        return wrap_handler(handler, scoped)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.runtime.grpc_auth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser(
        "mint", help=f"print a token signed with the first key of {TOKEN_KEYS_VARIABLE}"
    )
    mint.add_argument("--sub", required=True, help="the caller's name, e.g. crm")
    mint.add_argument("--locations", default="", help="comma-separated location ids, or * for all")
    mint.add_argument("--internal", action="store_true", help="a service-to-service caller")
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    mint.add_argument(
        "--keys", default=None, help=f"keys as in {TOKEN_KEYS_VARIABLE} (default: that variable)"
    )
    args = parser.parse_args(argv)
    try:
        keys = TokenKeys.parse(
            args.keys if args.keys is not None else os.environ.get(TOKEN_KEYS_VARIABLE, "")
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    locations = [item.strip() for item in args.locations.split(",") if item.strip()]
    print(keys.mint(args.sub, locations, internal=args.internal, ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
