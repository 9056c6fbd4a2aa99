"""The admin API under /admin: the outside world (mailboxes, inbound mail, outbox), credentials, push targets,
faults, quota, settings and the clock. JSON in, JSON out."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from sandbox import mime
from sandbox.core import SandboxCore
from sandbox.errors import GoogleApiError, bad_request
from sandbox.gmail_api import GmailApi
from sandbox.grants import DEFAULT_CLIENT_ID, OAuthError
from sandbox.oauth import OAuthEndpoints
from sandbox.state import Mailbox, OutboxEntry


def _mailbox_json(mailbox: Mailbox) -> dict[str, Any]:
    return {
        "address": mailbox.address,
        "workspace": mailbox.workspace,
        "daily_send_limit": mailbox.daily_send_limit,
        "sent_last_24h": len(mailbox.sends_ms),
        "display_name": mailbox.display_name,
        **mailbox.profile(),
        "history_floor": str(mailbox.history_floor),
    }


def _outbox_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "from": entry.sender,
        "recipients": entry.recipients,
        "subject": entry.subject,
        "message_id": entry.rfc_message_id,
        "sent_at_ms": entry.sent_at_ms,
        "raw": mime.b64url(entry.raw),
        "raw_text": entry.raw.decode("utf-8", errors="replace"),
    }


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def build_inbound_raw(body: dict[str, Any]) -> bytes:
    """Raw bytes for admin delivery: `raw` (base64url), `raw_text`, or fields an outside sender would fill."""
    if body.get("raw"):
        return mime.b64url_decode(str(body["raw"]))
    if body.get("raw_text"):
        return str(body["raw_text"]).replace("\r\n", "\n").replace("\n", "\r\n").encode()
    if not body.get("from"):
        raise bad_request("deliver needs raw, raw_text or at least from/to/subject/body")
    attachments = [
        mime.AttachmentSpec(
            filename=a["filename"],
            content_type=a.get("content_type", "application/octet-stream"),
            data=base64.b64decode(a.get("data_base64", "")),
        )
        for a in body.get("attachments") or []
    ]
    return mime.build_message(
        sender=str(body["from"]),
        to=_list(body.get("to")),
        cc=_list(body.get("cc")),
        bcc=_list(body.get("bcc")),
        subject=str(body.get("subject", "")),
        body=str(body.get("body", "")),
        html=body.get("html"),
        attachments=attachments,
        in_reply_to=body.get("in_reply_to"),
        references=body.get("references"),
        message_id=body.get("message_id"),
        extra_headers=body.get("headers"),
    )


class AdminApi:
    def __init__(self, core: SandboxCore, oauth: OAuthEndpoints, gmail: GmailApi) -> None:
        self.core = core
        self.oauth = oauth
        self.gmail = gmail

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/reset", self.reset),
            web.get("/admin/settings", self.get_settings),
            web.patch("/admin/settings", self.update_settings),
            web.put("/admin/settings", self.update_settings),
            web.post("/admin/clock/advance", self.advance_clock),
            web.post("/admin/mailboxes", self.create_mailbox),
            web.get("/admin/mailboxes", self.list_mailboxes),
            web.get("/admin/mailboxes/{address}", self.get_mailbox),
            web.post("/admin/mailboxes/{address}/password", self.change_password),
            web.post("/admin/mailboxes/{address}/messages", self.deliver),
            web.get("/admin/mailboxes/{address}/messages", self.list_messages),
            web.post("/admin/mailboxes/{address}/send", self.user_send),
            web.post("/admin/mailboxes/{address}/messages/{id}/modify", self.user_modify),
            web.post("/admin/mailboxes/{address}/messages/{id}/trash", self.user_trash),
            web.post("/admin/mailboxes/{address}/messages/{id}/untrash", self.user_untrash),
            web.delete("/admin/mailboxes/{address}/messages/{id}", self.user_delete),
            web.post("/admin/mailboxes/{address}/revoke", self.revoke),
            web.post("/admin/mailboxes/{address}/tokens/expire", self.expire_tokens),
            web.post("/admin/mailboxes/{address}/history/expire", self.expire_history),
            web.get("/admin/outbox", self.outbox),
            web.post("/admin/clients", self.create_client),
            web.post("/admin/grants", self.create_grant),
            web.post("/admin/oauth/approve", self.approve),
            web.get("/admin/push", self.get_push),
            web.put("/admin/push", self.set_push),
            web.put("/admin/topics", self.set_topic),
            web.get("/admin/faults", self.get_faults),
            web.put("/admin/faults", self.set_faults),
            web.delete("/admin/faults", self.clear_faults),
            web.get("/admin/quota", self.get_quota),
            web.delete("/admin/quota", self.clear_quota),
        ]

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as error:
            raise bad_request(f"Invalid JSON: {error}") from error
        if not isinstance(body, dict):
            raise bad_request("Expected a JSON object")
        return body

    async def reset(self, request: web.Request) -> web.Response:
        self.core.reset()
        return web.json_response({"reset": True})

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.settings.as_json())

    async def update_settings(self, request: web.Request) -> web.Response:
        self.core.settings.update(await self._body(request))
        self.core.grants.access_token_lifetime_s = self.core.settings.access_token_lifetime_s
        self.core.mail.history_gap_max = self.core.settings.history_gap_max
        return web.json_response(self.core.settings.as_json())

    async def advance_clock(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.core.clock.advance(float(body.get("seconds", 0)))
        return web.json_response({"now_ms": self.core.clock.now_ms()})

    async def create_mailbox(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not body.get("address"):
            raise bad_request("address is required")
        mailbox = self.core.mail.create_mailbox(
            str(body["address"]),
            str(body.get("password", "password")),
            bool(body.get("workspace", False)),
            body.get("daily_send_limit"),
            str(body.get("display_name", "")),
        )
        return web.json_response(_mailbox_json(mailbox), status=201)

    async def list_mailboxes(self, request: web.Request) -> web.Response:
        return web.json_response({"mailboxes": [_mailbox_json(m) for m in self.core.mail.mailboxes.values()]})

    async def get_mailbox(self, request: web.Request) -> web.Response:
        return web.json_response(_mailbox_json(self.core.mail.mailbox(request.match_info["address"])))

    async def change_password(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.core.mail.change_password(request.match_info["address"], str(body.get("password", "")))
        return web.json_response({"changed": True})

    async def deliver(self, request: web.Request) -> web.Response:
        """One inbound message, or `copies` of it (each with its own Message-ID) for seeding benchmarks."""
        body = await self._body(request)
        internal_date = body.get("internal_date_ms")
        delivered = []
        raw = build_inbound_raw(body)
        for index in range(max(1, int(body.get("copies", 1)))):
            message = self.core.mail.deliver_inbound(
                request.match_info["address"],
                raw if index == 0 or body.get("message_id") else mime.restamp_message_id(raw),
                body.get("label_ids"),
                int(internal_date) if internal_date else None,
            )
            delivered.append(message)
        answer = {
            "id": message.id,
            "threadId": message.thread_id,
            "labelIds": message.label_ids,
            "historyId": str(message.history_id),
            "message_id": message.rfc_message_id,
        }
        if len(delivered) > 1:
            answer["ids"] = [m.id for m in delivered]
            answer["message_ids"] = [m.rfc_message_id for m in delivered]
            answer["internal_dates_ms"] = [m.internal_date_ms for m in delivered]
        else:
            answer["internal_date_ms"] = message.internal_date_ms
        return web.json_response(answer, status=201)

    # -- what the user does in Gmail's own UI (no OAuth, no quota) -------------------------------------------

    async def list_messages(self, request: web.Request) -> web.Response:
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        return web.json_response(
            {
                "messages": [
                    {
                        "id": m.id,
                        "threadId": m.thread_id,
                        "labelIds": m.label_ids,
                        "historyId": str(m.history_id),
                        "subject": m.parsed.header("Subject") or "",
                        "from": m.parsed.header("From") or "",
                        "to": m.parsed.header("To") or "",
                        "message_id": m.rfc_message_id,
                        "internalDate": str(m.internal_date_ms),
                    }
                    for m in mailbox.messages.values()
                ]
            }
        )

    async def user_send(self, request: web.Request) -> web.Response:
        """The user sends from Gmail: delivery, threading, send limit and history as for messages.send."""
        body = await self._body(request)
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        body.setdefault("from", mailbox.address)
        sent = await self.gmail.send_raw(mailbox, build_inbound_raw(body), body.get("thread_id"))
        return web.json_response(sent, status=201)

    async def user_modify(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        message = self.core.mail.modify(
            mailbox,
            request.match_info["id"],
            _list(body.get("add_label_ids")),
            _list(body.get("remove_label_ids")),
        )
        return web.json_response(message.ref())

    async def user_trash(self, request: web.Request) -> web.Response:
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        return web.json_response(self.core.mail.trash(mailbox, request.match_info["id"]).ref())

    async def user_untrash(self, request: web.Request) -> web.Response:
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        return web.json_response(self.core.mail.untrash(mailbox, request.match_info["id"]).ref())

    async def user_delete(self, request: web.Request) -> web.Response:
        mailbox = self.core.mail.mailbox(request.match_info["address"])
        self.core.mail.delete(mailbox, request.match_info["id"])
        return web.json_response({"deleted": True})

    async def revoke(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        count = self.core.grants.revoke_grants(request.match_info["address"], body.get("client_id"))
        return web.json_response({"revoked": count})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        count = self.core.grants.expire_access_tokens(request.match_info["address"])
        return web.json_response({"expired": count})

    async def expire_history(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        floor = self.core.mail.expire_history(request.match_info["address"], int(body["before"]))
        return web.json_response({"history_floor": str(floor)})

    async def outbox(self, request: web.Request) -> web.Response:
        recipient = request.query.get("recipient", "").lower()
        entries = [e for e in self.core.mail.outbox if not recipient or recipient in e.recipients]
        return web.json_response({"messages": [_outbox_json(e) for e in entries]})

    async def create_client(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        client = self.core.grants.register_client(
            str(body["client_id"]), str(body["client_secret"]), _list(body.get("redirect_uris"))
        )
        return web.json_response(asdict(client), status=201)

    async def create_grant(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        tokens = self.core.grants.grant_directly(
            str(body.get("address", "")),
            str(body.get("client_id", DEFAULT_CLIENT_ID)),
            _list(body.get("scopes")),
        )
        return web.json_response(tokens.response(self.core.clock.now_ms()), status=201)

    async def approve(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        params = dict(parse_qsl(urlsplit(str(body.get("authorization_url", ""))).query))
        params.update(body.get("params") or {})
        scopes = _list(body["scopes"]) if "scopes" in body else None
        target = self.oauth.decide(
            params,
            body.get("address"),
            scopes,
            body.get("decision", "allow") == "allow",
            body.get("password"),
        )
        return web.json_response({"redirect_url": target})

    async def get_push(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.push.report())

    async def set_push(self, request: web.Request) -> web.Response:
        target = self.core.push.configure(None, await self._body(request))
        return web.json_response(asdict(target))

    async def set_topic(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = str(body.pop("name", ""))
        if not name:
            raise bad_request("name (projects/<project>/topics/<topic>) is required")
        return web.json_response(asdict(self.core.push.configure(name, body)))

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.faults.report())

    async def set_faults(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        method = str(body.pop("method", "*"))
        return web.json_response(asdict(self.core.faults.configure(method, body)))

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.core.faults.clear()
        return web.json_response({"cleared": True})

    async def get_quota(self, request: web.Request) -> web.Response:
        return web.json_response({"table": self.core.settings.quota_table, **self.core.quota.report()})

    async def clear_quota(self, request: web.Request) -> web.Response:
        self.core.quota.reset()
        return web.json_response({"cleared": True})


@web.middleware
async def admin_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Admin and OAuth-side errors rendered as JSON (Google shape for API errors, OAuth shape for grants)."""
    try:
        return await handler(request)
    except GoogleApiError as error:
        return web.Response(status=error.code, body=error.encoded(), content_type="application/json")
    except OAuthError as error:
        return web.json_response(error.body(), status=error.status)
    except (KeyError, TypeError, ValueError) as error:
        return web.Response(
            status=400,
            body=bad_request(f"Bad admin request: {error!r}").encoded(),
            content_type="application/json",
        )
