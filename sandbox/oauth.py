"""Google OAuth 2.0 endpoints: consent page, token (code + PKCE, refresh), revoke, userinfo, tokeninfo, certs."""

from __future__ import annotations

import base64
import hashlib
import html
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from sandbox.core import SandboxCore
from sandbox.grants import OAuthError, TokenSet, normalize_scopes

ISSUER = "https://accounts.google.com"
_SCOPE_TEXT = {
    "https://mail.google.com/": "Read, compose, send, and permanently delete all your email from Gmail",
    "https://www.googleapis.com/auth/gmail.modify": "Read, compose, and send emails from your Gmail account",
    "https://www.googleapis.com/auth/gmail.readonly": "View your email messages and settings",
    "https://www.googleapis.com/auth/gmail.send": "Send email on your behalf",
    "https://www.googleapis.com/auth/gmail.metadata": "View your email message metadata such as labels and headers",
    "https://www.googleapis.com/auth/gmail.labels": "See and edit your email labels",
    "https://www.googleapis.com/auth/userinfo.email": "See your primary Google Account email address",
    "https://www.googleapis.com/auth/userinfo.profile": "See your personal info",
    "openid": "Associate you with your personal info on Google",
}


def subject_id(address: str) -> str:
    """A stable numeric account id, like Google's `sub`."""
    return str(int(hashlib.sha256(address.encode()).hexdigest()[:20], 16))


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class OAuthEndpoints:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/o/oauth2/v2/auth", self.authorize_page),
            web.get("/o/oauth2/auth", self.authorize_page),
            web.post("/o/oauth2/v2/auth/consent", self.consent_decision),
            web.post("/token", self.token),
            web.post("/o/oauth2/token", self.token),
            web.post("/revoke", self.revoke),
            web.get("/revoke", self.revoke),
            web.post("/o/oauth2/revoke", self.revoke),
            web.get("/oauth2/v3/userinfo", self.userinfo),
            web.get("/oauth2/v2/userinfo", self.userinfo_v2),
            web.get("/v1/userinfo", self.userinfo),
            web.get("/oauth2/v3/tokeninfo", self.tokeninfo),
            web.get("/tokeninfo", self.tokeninfo),
            web.post("/tokeninfo", self.tokeninfo),
            web.get("/oauth2/v1/certs", self.certs_v1),
            web.get("/oauth2/v3/certs", self.certs_v3),
            web.get("/.well-known/openid-configuration", self.openid_configuration),
        ]

    # -- authorization -------------------------------------------------------------------------------------------

    def validate_authorization(self, params: dict[str, str]) -> list[str]:
        """Check an authorization request the way Google does before showing consent; returns the scopes."""
        client = self.core.grants.client(params.get("client_id", ""), None, check_secret=False)
        self.core.grants.check_redirect_uri(client, params.get("redirect_uri", ""))
        if not params.get("redirect_uri"):
            raise OAuthError(400, "invalid_request", "Missing required parameter: redirect_uri")
        if params.get("response_type", "code") != "code":
            raise OAuthError(
                400, "unsupported_response_type", f"Unsupported response_type: {params['response_type']}"
            )
        scopes = normalize_scopes(params.get("scope", ""))
        if not scopes:
            raise OAuthError(400, "invalid_request", "Missing required parameter: scope")
        method = params.get("code_challenge_method")
        if method and method.upper() not in ("S256", "PLAIN"):
            raise OAuthError(400, "invalid_request", "Invalid code_challenge_method value.")
        return scopes

    def decide(
        self,
        params: dict[str, str],
        address: str | None,
        scopes: list[str] | None,
        allow: bool,
        password: str | None = None,
    ) -> str:
        """The redirect URL after the user chose: code + state (+ granted scope), or error=access_denied."""
        requested = self.validate_authorization(params)
        redirect_uri = params["redirect_uri"]
        state = {"state": params["state"]} if "state" in params else {}
        if not allow:
            return _with_query(redirect_uri, {"error": "access_denied", **state})
        mailbox = self.core.mail.mailbox(address or "")
        if password is not None and password != mailbox.password:
            raise OAuthError(400, "access_denied", "Wrong password.")
        granted = [
            s for s in (normalize_scopes(scopes) if scopes is not None else requested) if s in requested
        ]
        if params.get("include_granted_scopes") == "true":
            for grant in self.core.grants.grants.values():
                if (
                    grant.address == mailbox.address
                    and grant.client_id == params["client_id"]
                    and not grant.revoked
                ):
                    granted = list(dict.fromkeys(granted + grant.scopes))
        code = self.core.grants.issue_code(
            address=mailbox.address,
            client_id=params["client_id"],
            redirect_uri=redirect_uri,
            scopes=granted,
            code_challenge=params.get("code_challenge"),
            code_challenge_method=params.get("code_challenge_method"),
            offline=params.get("access_type") == "offline",
            forced_consent="consent" in params.get("prompt", "").split(),
            nonce=params.get("nonce"),
        )
        return _with_query(redirect_uri, {**state, "code": code, "scope": " ".join(granted)})

    async def authorize_page(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        try:
            scopes = self.validate_authorization(params)
        except OAuthError as error:
            return web.Response(
                status=400,
                content_type="text/html",
                text=f"<h1>Error {error.status}: {html.escape(error.error)}</h1>"
                f"<p>{html.escape(error.description)}</p>",
            )
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "scope"
        )
        # The requested scopes travel separately from the ticked ones, so an unticked scope is a choice.
        hidden += f'<input type="hidden" name="requested_scope" value="{html.escape(" ".join(scopes))}">'
        boxes = "".join(
            f'<li><label><input type="checkbox" name="scope" value="{html.escape(s)}" checked> '
            f"{html.escape(_SCOPE_TEXT.get(s, s))} <small>({html.escape(s)})</small></label></li>"
            for s in scopes
        )
        login_hint = html.escape(params.get("login_hint", ""))
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Sign in - Gmail sandbox</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:2em auto">
<h1>Gmail sandbox: choose an account</h1>
<p><b>{html.escape(params.get("client_id", ""))}</b> wants to access your Google Account.</p>
<form method="post" action="/o/oauth2/v2/auth/consent">
{hidden}
<p><label>Email <input name="email" type="email" value="{login_hint}" required></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p>This will allow the app to:</p><ul style="list-style:none">{boxes}</ul>
<button type="submit" name="decision" value="allow">Continue</button>
<button type="submit" name="decision" value="deny" formnovalidate>Cancel</button>
</form></body></html>"""
        return web.Response(text=page, content_type="text/html")

    async def consent_decision(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {
            k: str(v)
            for k, v in form.items()
            if k not in ("scope", "email", "password", "decision", "requested_scope")
        }
        params["scope"] = str(form.get("requested_scope", ""))
        allow = form.get("decision") == "allow"
        scopes = [str(s) for s in form.getall("scope", [])]
        try:
            target = self.decide(
                params, str(form.get("email", "")), scopes, allow, str(form.get("password", ""))
            )
        except OAuthError as error:
            return web.Response(
                status=400,
                content_type="text/html",
                text=f"<h1>{html.escape(error.error)}</h1><p>{html.escape(error.description)}</p>",
            )
        except Exception:
            return web.Response(
                status=400, content_type="text/html", text="<h1>Couldn't find your Google Account</h1>"
            )
        raise web.HTTPFound(target)

    # -- token endpoint ------------------------------------------------------------------------------------------

    def id_token(self, address: str, client_id: str, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "azp": client_id,
            "aud": client_id,
            "sub": subject_id(address),
            "email": address,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(self._hosted_domain(address))
        if nonce:
            claims["nonce"] = nonce
        return self.core.key.sign(claims)

    def _hosted_domain(self, address: str) -> dict[str, str]:
        """Google's `hd` claim: present only for a Google Workspace account (its domain)."""
        mailbox = self.core.mail.mailboxes.get(address.lower())
        return {"hd": address.rpartition("@")[2].lower()} if mailbox is not None and mailbox.workspace else {}

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
        grants = self.core.grants
        try:
            grant_type = form.get("grant_type", "")
            client = grants.client(client_id, client_secret)
            id_token = None
            if grant_type == "authorization_code":
                tokens, code = grants.exchange_code(
                    form.get("code", ""), client, form.get("redirect_uri", ""), form.get("code_verifier")
                )
                if "openid" in code.scopes:
                    id_token = self.id_token(code.address, client.client_id, code.nonce)
            elif grant_type == "refresh_token":
                tokens = grants.refresh(form.get("refresh_token", ""), client, form.get("scope"))
                if "openid" in tokens.access.scopes:
                    id_token = self.id_token(tokens.access.grant.address, client.client_id, None)
            else:
                raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        except OAuthError as error:
            return web.json_response(error.body(), status=error.status)
        return web.json_response(self._token_body(tokens, id_token))

    def _token_body(self, tokens: TokenSet, id_token: str | None) -> dict[str, object]:
        return tokens.response(self.core.clock.now_ms(), id_token)

    async def revoke(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is None and request.can_read_body:
            token = str((await request.post()).get("token", "")) or None
        if not token or not self.core.grants.revoke_token(token):
            return web.json_response(
                {"error": "invalid_token", "error_description": "Token expired or revoked"}, status=400
            )
        return web.json_response({})

    # -- identity ------------------------------------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> Any:
        header = request.headers.get("Authorization", "")
        token = (
            self.core.grants.authenticate(header[7:].strip())
            if header.lower().startswith("bearer ")
            else None
        )
        if token is None:
            raise web.HTTPUnauthorized(
                text='{"error": "invalid_request", "error_description": "Invalid Credentials"}',
                content_type="application/json",
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
                },
            )
        return token

    async def userinfo(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        address = token.grant.address
        return web.json_response(
            {
                "sub": subject_id(address),
                "email": address,
                "email_verified": True,
                **self._hosted_domain(address),
            }
        )

    async def userinfo_v2(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        address = token.grant.address
        return web.json_response({"id": subject_id(address), "email": address, "verified_email": True})

    async def tokeninfo(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        value = params.get("access_token")
        token = self.core.grants.authenticate(value) if value else None
        if token is None:
            return web.json_response(
                {"error": "invalid_token", "error_description": "Invalid Value"}, status=400
            )
        now_ms = self.core.clock.now_ms()
        address = token.grant.address
        return web.json_response(
            {
                "azp": token.grant.client_id,
                "aud": token.grant.client_id,
                "sub": subject_id(address),
                "scope": " ".join(token.scopes),
                "exp": str(token.expires_at_ms // 1000),
                "expires_in": str(max(0, (token.expires_at_ms - now_ms) // 1000)),
                "email": address,
                "email_verified": "true",
                "access_type": "offline",
            }
        )

    async def certs_v1(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.key.certs_v1(), headers={"Cache-Control": "public, max-age=3600"})

    async def certs_v3(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.key.jwks(), headers={"Cache-Control": "public, max-age=3600"})

    async def openid_configuration(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "issuer": ISSUER,
                "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/v1/userinfo",
                "revocation_endpoint": f"{base}/revoke",
                "jwks_uri": f"{base}/oauth2/v3/certs",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["plain", "S256"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
            }
        )
