"""Client-side helpers for tests and tools: the admin API over plain HTTP, and a Gmail service built the way
Google's library must be built to talk to a local server (discovery document with rootUrl rewritten)."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import google.oauth2.credentials
from googleapiclient.discovery import Resource, build_from_document

from sandbox.discovery import gmail_discovery
from sandbox.grants import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"


class AdminError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class AdminClient:
    """Every /admin endpoint as a method; bodies and answers are the JSON documented in docs/sandbox.md."""

    def __init__(self, base_url: str, timeout_seconds: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        # A bound on a hung sandbox, not on a slow one: delivering five 10 MB mails took over 30 s with two test
        # runs at once on two cores.
        self.timeout_seconds = timeout_seconds

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AdminError(error.code, json.loads(error.read() or b"null")) from error

    def reset(self) -> None:
        self.request("POST", "/admin/reset")

    def settings(self, **changes: Any) -> dict[str, Any]:
        return (
            self.request("PATCH", "/admin/settings", changes)
            if changes
            else self.request("GET", "/admin/settings")
        )

    def advance_clock(self, seconds: float) -> None:
        self.request("POST", "/admin/clock/advance", {"seconds": seconds})

    def create_mailbox(
        self,
        address: str,
        password: str = "password",
        workspace: bool = False,
        daily_send_limit: int | None = None,
        display_name: str = "",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "address": address,
            "password": password,
            "workspace": workspace,
            "display_name": display_name,
        }
        if daily_send_limit is not None:
            body["daily_send_limit"] = daily_send_limit
        return self.request("POST", "/admin/mailboxes", body)

    def mailbox(self, address: str) -> dict[str, Any]:
        return self.request("GET", f"/admin/mailboxes/{address}")

    def deliver(self, address: str, **fields: Any) -> dict[str, Any]:
        """Mail from the outside world: raw=<base64url>, raw_text=..., or sender=, to=, subject=, body=, ..."""
        if "sender" in fields:
            fields["from"] = fields.pop("sender")
        return self.request("POST", f"/admin/mailboxes/{address}/messages", fields)

    def messages(self, address: str) -> list[dict[str, Any]]:
        """Every message of a mailbox (id, threadId, labelIds, subject, from, to, message_id), for inspection."""
        return self.request("GET", f"/admin/mailboxes/{address}/messages")["messages"]

    def user_send(self, address: str, thread_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """The user sends from Gmail's UI: raw=/raw_text= or to=, cc=, bcc=, subject=, body=, in_reply_to=, ..."""
        if thread_id:
            fields["thread_id"] = thread_id
        return self.request("POST", f"/admin/mailboxes/{address}/send", fields)

    def user_modify(
        self, address: str, message_id: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> dict[str, Any]:
        """The user changes labels in Gmail (e.g. reads a message: remove=["UNREAD"])."""
        return self.request(
            "POST",
            f"/admin/mailboxes/{address}/messages/{message_id}/modify",
            {"add_label_ids": add or [], "remove_label_ids": remove or []},
        )

    def user_trash(self, address: str, message_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/mailboxes/{address}/messages/{message_id}/trash")

    def user_untrash(self, address: str, message_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/mailboxes/{address}/messages/{message_id}/untrash")

    def user_delete(self, address: str, message_id: str) -> None:
        self.request("DELETE", f"/admin/mailboxes/{address}/messages/{message_id}")

    def outbox(self, recipient: str | None = None) -> list[dict[str, Any]]:
        # A "+" (BCC-drop addresses) would read as a space in a query string unless encoded.
        suffix = "?" + urllib.parse.urlencode({"recipient": recipient}) if recipient else ""
        return self.request("GET", "/admin/outbox" + suffix)["messages"]

    def change_password(self, address: str, password: str) -> None:
        self.request("POST", f"/admin/mailboxes/{address}/password", {"password": password})

    def revoke(self, address: str, client_id: str | None = None) -> int:
        return self.request("POST", f"/admin/mailboxes/{address}/revoke", {"client_id": client_id})["revoked"]

    def expire_access_tokens(self, address: str) -> int:
        """Expires the mailbox's access tokens now; returns how many were live."""
        return int(self.request("POST", f"/admin/mailboxes/{address}/tokens/expire")["expired"])

    def expire_history(self, address: str, before: int) -> None:
        self.request("POST", f"/admin/mailboxes/{address}/history/expire", {"before": before})

    def grant(self, address: str, scopes: list[str], client_id: str = DEFAULT_CLIENT_ID) -> dict[str, Any]:
        return self.request(
            "POST", "/admin/grants", {"address": address, "scopes": scopes, "client_id": client_id}
        )

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self.request(
            "POST",
            "/admin/clients",
            {"client_id": client_id, "client_secret": client_secret, "redirect_uris": redirect_uris},
        )

    def approve(
        self, authorization_url: str, address: str, scopes: list[str] | None = None, decision: str = "allow"
    ) -> str:
        body: dict[str, Any] = {
            "authorization_url": authorization_url,
            "address": address,
            "decision": decision,
        }
        if scopes is not None:
            body["scopes"] = scopes
        return self.request("POST", "/admin/oauth/approve", body)["redirect_url"]

    def set_push(self, **target: Any) -> dict[str, Any]:
        return self.request("PUT", "/admin/push", target)

    def set_topic(self, name: str, **target: Any) -> dict[str, Any]:
        return self.request("PUT", "/admin/topics", {"name": name, **target})

    def push_report(self) -> dict[str, Any]:
        return self.request("GET", "/admin/push")

    def set_faults(self, method: str = "*", **plan: Any) -> dict[str, Any]:
        return self.request("PUT", "/admin/faults", {"method": method, **plan})

    def clear_faults(self) -> None:
        self.request("DELETE", "/admin/faults")

    def quota(self) -> dict[str, Any]:
        return self.request("GET", "/admin/quota")


def discovery_document_for(base_url: str) -> dict[str, Any]:
    """The bundled Gmail discovery document with every root rewritten to `base_url`, so JSON calls, batch
    (rootUrl + batchPath) and media uploads (rootUrl + /upload) all reach the sandbox over plain http."""
    document = copy.deepcopy(gmail_discovery())
    root = base_url.rstrip("/") + "/"
    document["rootUrl"] = document["baseUrl"] = document["mtlsRootUrl"] = root
    return document


def build_gmail_service(base_url: str, credentials: Any) -> Resource:
    return build_from_document(discovery_document_for(base_url), credentials=credentials)


def credentials_for(
    base_url: str,
    tokens: dict[str, Any],
    scopes: list[str] | None = None,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    with_access_token: bool = True,
) -> google.oauth2.credentials.Credentials:
    """google-auth user credentials whose refreshes go to the sandbox's /token (built directly, because
    `from_authorized_user_info` always forces Google's token URI)."""
    return google.oauth2.credentials.Credentials(
        token=tokens["access_token"] if with_access_token else None,
        refresh_token=tokens.get("refresh_token"),
        token_uri=base_url.rstrip("/") + "/token",
        client_id=client_id,
        client_secret=client_secret,
        scopes=scopes,
    )
