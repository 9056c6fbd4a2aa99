"""Per-call tokens at two trust levels and the server interceptors that enforce them.

Every RPC except health and reflection carries `authorization: Bearer <JWT>` whose claims name the caller
(`sub`) and the locations it may act for (`locations`, `["*"]` for all). The trust level is the key that signed
it, never a claim:

- CRM tokens are EdDSA (Ed25519) JWTs signed by the CRM; the services hold only the public keys
  (MAILSYNC_CRM_TOKEN_PUBLIC_KEYS), so nothing a service holds can mint one, and a CRM token is never internal.
- Internal tokens are HS256 JWTs signed with the services' own secret ring (MAILSYNC_SERVICE_TOKEN_KEYS), which
  the CRM never holds; only they reach internal-only methods such as `GetAccessToken`.

The `kid` header picks the ring and each ring accepts one algorithm only, so a token cannot move between them
(the two rings' key ids must differ). Authentication checks the token; tenant scoping checks the request's
`location_id` against it and refuses internal-only methods to CRM callers. Both live here, for every service.

CLI: `python -m services.runtime.grpc_auth keygen --kid crm1` prints a CRM key pair;
`python -m services.runtime.grpc_auth mint --sub crm --locations a,b` prints a CRM token signed with
MAILSYNC_CRM_SIGNING_KEYS (the CRM's private keys; `--internal` signs with the service ring instead).
"""

from __future__ import annotations

import argparse
import base64
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.runtime.errors import PermissionDenied, Unauthenticated, abort_with
from services.runtime.grpc_handlers import wrap_handler
from services.runtime.settings import (
    CRM_PUBLIC_KEYS_VARIABLE,
    TOKEN_KEYS_VARIABLE,
    ConfigurationError,
    parse_token_keys,
)

ISSUER = "mailsync"
# Each trust level has its own audience too, so a token meant for one is refused as the other.
AUDIENCE = "mailsync"
INTERNAL_AUDIENCE = "mailsync-internal"
CRM_ALGORITHM = "EdDSA"
INTERNAL_ALGORITHM = "HS256"
# The CRM's private keys, for the mint CLI and `make run` (never a service setting: services hold public keys).
CRM_SIGNING_KEYS_VARIABLE = "MAILSYNC_CRM_SIGNING_KEYS"
ED25519_KEY_BYTES = 32
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

    @property
    def scope(self) -> frozenset[str] | None:
        """The locations the caller may act for, or None when it may act for all of them."""
        return None if ALL_LOCATIONS in self.locations else self.locations

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


def _claims(
    subject: str, locations: Iterable[str], audience: str, internal: bool, ttl: int, now: float | None
) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    return {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "locations": sorted(set(locations)),
        "internal": internal,
        "iat": issued,
        "exp": issued + ttl,
    }


def _decode(token: str, key: Any, algorithm: str, audience: str) -> dict[str, Any]:
    try:
        return dict(
            jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("token signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken(f"token is not signed with {algorithm}, the algorithm of its key") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None


def _locations(claims: Mapping[str, Any]) -> frozenset[str]:
    locations = claims.get("locations", [])
    if not isinstance(locations, list) or not all(isinstance(item, str) for item in locations):
        raise InvalidToken("invalid token: 'locations' must be a list of location ids")
    return frozenset(locations)


class ServiceTokenKeys:
    """The services' secret ring for internal tokens: the first key signs, all verify (see docs/auth.md)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ConfigurationError(f"{TOKEN_KEYS_VARIABLE} holds no key")
        self._keys = dict(keys)
        self.signing_kid = next(iter(self._keys))

    @classmethod
    def parse(cls, raw: str) -> ServiceTokenKeys:
        return cls(parse_token_keys(raw))

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def mint(
        self,
        subject: str,
        locations: Iterable[str] = (ALL_LOCATIONS,),
        *,
        ttl_seconds: int = 300,
        now: float | None = None,
    ) -> str:
        """An internal token for the service `subject`, valid for `ttl_seconds`."""
        claims = _claims(subject, locations, INTERNAL_AUDIENCE, True, ttl_seconds, now)
        return jwt.encode(
            claims,
            self._keys[self.signing_kid],
            algorithm=INTERNAL_ALGORITHM,
            headers={"kid": self.signing_kid},
        )

    def verify(self, token: str, kid: str) -> Caller:
        return self.verify_with_expiry(token, kid)[0]

    def verify_with_expiry(self, token: str, kid: str) -> tuple[Caller, float]:
        """The caller and the token's expiry (epoch seconds)."""
        claims = _decode(token, self._keys[kid], INTERNAL_ALGORITHM, INTERNAL_AUDIENCE)
        if claims.get("internal") is not True:
            raise InvalidToken("invalid token: an internal key signed a token that is not internal")
        caller = Caller(name=str(claims["sub"]), locations=_locations(claims), internal=True)
        return caller, float(claims["exp"])


def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class CrmTokenKeys:
    """The Ed25519 public keys that verify the CRM's tokens (any of them verifies; the CRM picks the signer)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigurationError(f"{CRM_PUBLIC_KEYS_VARIABLE} holds no key")
        self._keys = dict(keys)

    @classmethod
    def parse(cls, raw: str) -> CrmTokenKeys:
        parsed = parse_token_keys(raw, CRM_PUBLIC_KEYS_VARIABLE, exact_bytes=ED25519_KEY_BYTES)
        return cls({kid: Ed25519PublicKey.from_public_bytes(key) for kid, key in parsed.items()})

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, kid: str) -> Caller:
        return self.verify_with_expiry(token, kid)[0]

    def verify_with_expiry(self, token: str, kid: str) -> tuple[Caller, float]:
        """The caller and the token's expiry (epoch seconds)."""
        claims = _decode(token, self._keys[kid], CRM_ALGORITHM, AUDIENCE)
        if claims.get("internal", False) is not False:
            raise InvalidToken(
                "invalid token: a CRM token cannot be internal (internal tokens come from services)"
            )
        caller = Caller(name=str(claims["sub"]), locations=_locations(claims), internal=False)
        return caller, float(claims["exp"])


class CrmTokenSigner:
    """The CRM's side: Ed25519 private keys, the first signs. Services never hold one (tests and `make run` do)."""

    def __init__(self, keys: Mapping[str, Ed25519PrivateKey]) -> None:
        if not keys:
            raise ConfigurationError(f"{CRM_SIGNING_KEYS_VARIABLE} holds no key")
        self._keys = dict(keys)
        self.signing_kid = next(iter(self._keys))

    @classmethod
    def parse(cls, raw: str) -> CrmTokenSigner:
        parsed = parse_token_keys(raw, CRM_SIGNING_KEYS_VARIABLE, exact_bytes=ED25519_KEY_BYTES)
        return cls({kid: Ed25519PrivateKey.from_private_bytes(seed) for kid, seed in parsed.items()})

    @classmethod
    def generate(cls, kid: str) -> CrmTokenSigner:
        return cls({kid: Ed25519PrivateKey.generate()})

    def signing_keys_text(self) -> str:
        """The private keys as MAILSYNC_CRM_SIGNING_KEYS holds them: 'kid=base64 of the 32-byte seed,...'."""
        return ",".join(
            f"{kid}={base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()}"
            for kid, key in self._keys.items()
        )

    def public_keys_text(self) -> str:
        """The matching public keys as MAILSYNC_CRM_TOKEN_PUBLIC_KEYS holds them."""
        return ",".join(
            f"{kid}={base64.b64encode(_raw_public_key(key.public_key())).decode()}"
            for kid, key in self._keys.items()
        )

    def mint(
        self, subject: str, locations: Iterable[str], *, ttl_seconds: int = 300, now: float | None = None
    ) -> str:
        """A CRM token for `subject` acting for `locations` (["*"]: all), valid for `ttl_seconds`."""
        claims = _claims(subject, locations, AUDIENCE, False, ttl_seconds, now)
        return jwt.encode(
            claims, self._keys[self.signing_kid], algorithm=CRM_ALGORITHM, headers={"kid": self.signing_kid}
        )


class TokenVerifier:
    """What a server checks tokens with: the internal ring and the CRM's public keys, told apart by `kid`.

    A caller sends the same token on every call until it renews it, so a verified token is remembered by its exact
    text until it expires: a later call with it costs a dictionary lookup instead of a signature check and a JSON
    parse (a fifth of a millisecond or more per call). Only verified tokens are remembered, and a remembered one
    is refused from the second it expires, as a new check would. The keys are fixed for the verifier's life.
    """

    # Distinct live tokens remembered; a caller renews its token every few minutes, so a few per caller.
    CACHE_SIZE = 1024

    def __init__(
        self, internal: ServiceTokenKeys, crm: CrmTokenKeys, *, clock: Callable[[], float] = time.time
    ) -> None:
        shared = internal.kids & crm.kids
        if shared:
            raise ConfigurationError(
                f"{TOKEN_KEYS_VARIABLE} and {CRM_PUBLIC_KEYS_VARIABLE} share key id(s) {sorted(shared)}: "
                "give the two rings distinct key ids"
            )
        self.internal = internal
        self.crm = crm
        self._clock = clock
        self._verified: dict[str, tuple[Caller, float]] = {}

    @classmethod
    def parse(cls, service_token_keys: str, crm_token_public_keys: str) -> TokenVerifier:
        return cls(ServiceTokenKeys.parse(service_token_keys), CrmTokenKeys.parse(crm_token_public_keys))

    def verify(self, token: str) -> Caller:
        """The caller a valid token names; raises InvalidToken saying what is wrong."""
        remembered = self._verified.get(token)
        if remembered is not None:
            caller, expires = remembered
            if self._clock() < expires:
                return caller
            del self._verified[token]
            raise InvalidToken("token expired")
        caller, expires = self._verify_signed(token)
        if len(self._verified) >= self.CACHE_SIZE:
            # The oldest entry goes first (dicts keep insertion order).
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (caller, expires)
        return caller

    def _verify_signed(self, token: str) -> tuple[Caller, float]:
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        if kid in self.internal.kids:
            return self.internal.verify_with_expiry(token, kid)
        if kid in self.crm.kids:
            return self.crm.verify_with_expiry(token, kid)
        raise InvalidToken(f"token signed with unknown key {kid[:40]!r}")


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

    def __init__(self, keys: TokenVerifier) -> None:
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
    keygen = commands.add_parser(
        "keygen", help="print a new CRM key pair (private for the CRM, public for services)"
    )
    keygen.add_argument("--kid", required=True, help="the key id, distinct from the service ring's ids")
    mint = commands.add_parser(
        "mint", help=f"print a CRM token signed with the first key of {CRM_SIGNING_KEYS_VARIABLE}"
    )
    mint.add_argument("--sub", required=True, help="the caller's name, e.g. crm")
    mint.add_argument("--locations", default="", help="comma-separated location ids, or * for all")
    mint.add_argument(
        "--internal", action="store_true", help=f"an internal token, signed with {TOKEN_KEYS_VARIABLE}"
    )
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    mint.add_argument(
        "--keys",
        default=None,
        help=f"signing keys (default: {CRM_SIGNING_KEYS_VARIABLE}, or {TOKEN_KEYS_VARIABLE} with --internal)",
    )
    args = parser.parse_args(argv)
    if args.command == "keygen":
        signer = CrmTokenSigner.generate(args.kid)
        print(f"{CRM_SIGNING_KEYS_VARIABLE}={signer.signing_keys_text()}")
        print(f"{CRM_PUBLIC_KEYS_VARIABLE}={signer.public_keys_text()}")
        return 0
    variable = TOKEN_KEYS_VARIABLE if args.internal else CRM_SIGNING_KEYS_VARIABLE
    raw = args.keys if args.keys is not None else os.environ.get(variable, "")
    locations = [item.strip() for item in args.locations.split(",") if item.strip()]
    try:
        if args.internal:
            token = ServiceTokenKeys.parse(raw).mint(args.sub, locations, ttl_seconds=args.ttl)
        else:
            token = CrmTokenSigner.parse(raw).mint(args.sub, locations, ttl_seconds=args.ttl)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
