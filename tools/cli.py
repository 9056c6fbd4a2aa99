"""Command-line client for the local product: connect a mailbox, add contacts, send mail, play the outside world
and watch conversations, through the services' public gRPC APIs and the Gmail sandbox's admin API only.

Installed with the project as `mailsync` (`.venv/bin/mailsync`, or `mailsync` after `source .venv/bin/activate`;
also `make cli ARGS="..."` and `python -m tools.cli`). It finds the running stack in var/run/stack.json (written
by `make run`). Run `mailsync --help`; docs/demo.md walks through a session.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import smtplib
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from mailsync.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    outbound_pb2,
    outbound_pb2_grpc,
    threading_pb2,
    threading_pb2_grpc,
)
from sandbox.client import AdminClient, AdminError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STACK_FILE = ROOT / "var" / "run" / "stack.json"
DEFAULT_LOCATION = "loc-demo"
LOCATION_VARIABLE = "MAILSYNC_CLI_LOCATION"
STACK_FILE_VARIABLE = "MAILSYNC_CLI_STACK_FILE"
POLL_SECONDS = 0.3
UPLOAD_CHUNK_BYTES = 1024 * 1024
PAGE_SIZE = 100


class CliError(Exception):
    """Something the user has to fix; printed as one line, exit status 1."""


@dataclass(frozen=True)
class StackInfo:
    """What `make run` wrote about the running stack."""

    services: dict[str, str]
    sandbox_url: str
    crm_token: str
    # Other listeners by service and role (auth's oauth_callback, ingest's push and bcc_smtp).
    endpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    # The receiving host whose Authentication-Results ingest trusts for BCC drops (`make run` plays it).
    bcc_trusted_authserv_id: str = ""
    nats_url: str = ""

    @classmethod
    def load(cls, path: Path) -> StackInfo:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliError(
                f"{path} not found: is `make run` running? (it writes that file once healthy)"
            ) from None
        except ValueError as error:
            raise CliError(f"{path} is not valid JSON: {error}") from None
        return cls(
            services=dict(raw["services"]),
            sandbox_url=raw["sandbox_url"],
            crm_token=raw["crm_token"],
            endpoints={name: dict(roles) for name, roles in raw.get("endpoints", {}).items()},
            bcc_trusted_authserv_id=raw.get("bcc_trusted_authserv_id", ""),
            nats_url=raw.get("nats_url", ""),
        )

    def endpoint(self, service: str, role: str) -> str:
        address = self.endpoints.get(service, {}).get(role, "")
        if not address:
            raise CliError(f"the stack file names no {role} address of {service} (restart `make run`)")
        return address


class Client:
    """Authenticated stubs of the four services and the sandbox's admin client, opened lazily."""

    def __init__(self, stack: StackInfo, token: str, timeout: float) -> None:
        self.stack = stack
        self._stack = stack
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            address = self._stack.services.get(service)
            if not address:
                raise CliError(f"the stack file names no address for the {service} service")
            self._channels[service] = grpc.insecure_channel(address)
        return self._channels[service]

    def call(self, service: str, method: str, request: ProtoMessage, *, stream: bool = False) -> Any:
        """One unary call (or a server stream when `stream`) with the CRM token; streams have no deadline."""
        stubs: dict[str, Callable[[grpc.Channel], Any]] = {
            "auth": auth_pb2_grpc.AuthServiceStub,
            "ingest": ingest_pb2_grpc.IngestServiceStub,
            "threading": threading_pb2_grpc.ThreadingServiceStub,
            "outbound": outbound_pb2_grpc.OutboundServiceStub,
        }
        rpc = getattr(stubs[service](self._channel(service)), method)
        if stream:
            return rpc(request, metadata=self._metadata)
        return rpc(request, metadata=self._metadata, timeout=self._timeout)

    def upload(self, requests: Iterator[outbound_pb2.UploadAttachmentRequest]) -> Any:
        stub = outbound_pb2_grpc.OutboundServiceStub(self._channel("outbound"))
        return stub.UploadAttachment(requests, metadata=self._metadata, timeout=self._timeout)

    @property
    def sandbox(self) -> AdminClient:
        if not self._stack.sandbox_url:
            raise CliError("the stack runs without the Gmail sandbox")
        return AdminClient(self._stack.sandbox_url)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


# ---- output -------------------------------------------------------------------------------------------------------


def as_dict(message: ProtoMessage) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Output:
    """Human lines by default; with --json, one JSON document per result (for scripts and tests); with --field,
    only that field of the result (of each item of a list), one per line, for shell variables."""

    def __init__(self, as_json: bool, field_name: str = "") -> None:
        self.as_json = as_json
        self.field_name = field_name

    def show(self, value: ProtoMessage | dict[str, Any] | list[Any], human: str) -> None:
        if self.field_name:
            items = value if isinstance(value, list) else [value]
            for item in items:
                document = as_dict(item) if isinstance(item, ProtoMessage) else item
                print(pick(document, self.field_name), flush=True)
        elif self.as_json:
            document = as_dict(value) if isinstance(value, ProtoMessage) else value
            if isinstance(document, list):
                document = [as_dict(v) if isinstance(v, ProtoMessage) else v for v in document]
            print(json.dumps(document), flush=True)
        else:
            print(human, flush=True)


def pick(document: Any, path: str) -> str:
    """The value at a dotted path (`send.send_id`) of a result, for `--field`."""
    value = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            raise CliError(f"the result has no field {path!r} (fields here: {keys})")
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def when(timestamp: Any) -> str:
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if timestamp.seconds else "-"


def describe_connection(connection: auth_pb2.Connection) -> str:
    state = enum_name(common_pb2.ConnectionState, connection.state, "CONNECTION_STATE_")
    line = (
        f"{connection.connection_id}  user={connection.user_id}  location={connection.location_id}  "
        f"mailbox={connection.mailbox_email} ({connection.mailbox_id})  {state}"
    )
    return line + (f"  last error: {connection.last_error}" if connection.last_error else "")


def describe_contact(contact: threading_pb2.Contact) -> str:
    emails = ", ".join(e.email + (" (primary)" if e.primary else "") for e in contact.emails)
    assigned = contact.assigned_user_id or "nobody"
    created = "  created by sync" if contact.created_by_sync else ""
    return f"{contact.contact_id}  {contact.display_name!r}  <{emails}>  assigned to {assigned}{created}"


def describe_message(message: threading_pb2.Message, full: bool, send_state: str = "") -> str:
    direction = enum_name(common_pb2.Direction, message.direction, "DIRECTION_")
    sender = next((p.email for p in message.participants if p.role == common_pb2.PARTICIPANT_ROLE_FROM), "?")
    lines = [
        f"{when(message.message_time)}  {direction:8} {message.rule_id:4} {message.message_id}  "
        f"from {sender}  {message.subject!r}"
    ]
    if message.send_id:
        state = send_state or ("pending" if message.send_pending else "")
        lines.append(f"    CRM send {message.send_id}{f' ({state})' if state else ''}")
    for attachment in message.attachments:
        lines.append(
            f"    attachment {attachment.filename} ({attachment.content_type}, {attachment.size_bytes} B)"
        )
    if full:
        lines.append(f"    Message-ID {message.rfc_message_id}  conversation {message.conversation_id}")
        lines.append(f"    threads {', '.join(message.thread_ids)}")
        for participant in message.participants:
            role = enum_name(common_pb2.ParticipantRole, participant.role, "PARTICIPANT_ROLE_")
            lines.append(f"    {role:12} {participant.email}")
        lines.extend("    | " + line for line in message.text_body.splitlines())
    return "\n".join(lines)


# ---- commands -----------------------------------------------------------------------------------------------------


def request_id(args: argparse.Namespace) -> str:
    return args.request_id or f"cli-{uuid.uuid4().hex}"


def cmd_user_add(client: Client, out: Output, args: argparse.Namespace) -> None:
    user = auth_pb2.User(
        user_id=args.user_id,
        crm_email=args.email,
        display_name=args.name or args.user_id,
        location_ids=args.locations or [args.location],
        version=args.version,
    )
    answer = client.call(
        "auth", "UpsertUser", auth_pb2.UpsertUserRequest(request_id=request_id(args), user=user)
    )
    applied = "" if answer.applied else "  (not applied: the stored version is newer)"
    out.show(answer, f"user {answer.user.user_id} in {', '.join(answer.user.location_ids)}{applied}")


def cmd_mailbox_create(client: Client, out: Output, args: argparse.Namespace) -> None:
    created = client.sandbox.create_mailbox(
        args.address,
        password=args.password,
        workspace=args.workspace,
        daily_send_limit=args.daily_send_limit,
        display_name=args.name,
    )
    out.show(created, f"sandbox mailbox {args.address} created")


def follow_callback(redirect_url: str, timeout: float) -> tuple[int, str]:
    """What the browser does after consent: load the auth service's OAuth callback; its status and page text."""
    try:
        with urllib.request.urlopen(redirect_url, timeout=timeout) as response:
            return response.status, response.read()[:300].decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:300].decode(errors="replace")
    except OSError as error:
        raise CliError(f"the OAuth callback {redirect_url} did not answer: {error}") from None


def wait_for_connection(client: Client, args: argparse.Namespace) -> auth_pb2.Connection:
    deadline = time.monotonic() + args.wait
    while True:
        connection = client.call(
            "auth",
            "GetConnection",
            auth_pb2.GetConnectionRequest(location_id=args.location, user_id=args.user_id),
        ).connection
        if connection.state == common_pb2.CONNECTION_STATE_CONNECTED and (
            connection.mailbox_email.lower() == args.approve.lower()
        ):
            return connection
        if time.monotonic() >= deadline:
            raise CliError(f"not connected within {args.wait:g} s: {describe_connection(connection)}")
        time.sleep(0.2)


def cmd_connect(client: Client, out: Output, args: argparse.Namespace) -> None:
    begun = client.call(
        "auth",
        "BeginConnect",
        auth_pb2.BeginConnectRequest(
            request_id=request_id(args),
            user_id=args.user_id,
            location_id=args.location,
            return_url=args.return_url,
        ),
    )
    if not args.approve:
        out.show(begun, f"Open this URL in a browser to grant access:\n{begun.authorization_url}")
        return
    try:
        redirect = client.sandbox.approve(begun.authorization_url, args.approve, decision=args.decision)
    except AdminError as error:
        raise CliError(f"the sandbox refused the consent: {sandbox_message(error)}") from None
    status, page = follow_callback(redirect, args.timeout)
    if args.decision == "deny":
        out.show({"callback_status": status}, f"consent denied; the OAuth callback answered HTTP {status}")
        return
    if status >= 400:
        raise CliError(f"the OAuth callback answered HTTP {status}: {page}")
    connection = wait_for_connection(client, args)
    out.show(connection, describe_connection(connection))


def cmd_connections(client: Client, out: Output, args: argparse.Namespace) -> None:
    request = auth_pb2.ListConnectionsRequest(
        location_id=args.location, user_id=args.user, page_size=PAGE_SIZE
    )
    answer = client.call("auth", "ListConnections", request)
    if args.until:
        wanted = common_pb2.ConnectionState.Value(f"CONNECTION_STATE_{args.until}")
        deadline = time.monotonic() + args.wait
        while not any(c.state == wanted for c in answer.connections):
            if time.monotonic() >= deadline:
                now = "; ".join(describe_connection(c) for c in answer.connections) or "no connections"
                raise CliError(f"no connection became {args.until} within {args.wait:g} s: {now}")
            time.sleep(POLL_SECONDS)
            answer = client.call("auth", "ListConnections", request)
    lines = [describe_connection(c) for c in answer.connections] or ["no connections"]
    out.show(list(answer.connections), "\n".join(lines))


def cmd_contact_add(client: Client, out: Output, args: argparse.Namespace) -> None:
    contact = threading_pb2.Contact(
        contact_id=args.contact_id or f"contact-{uuid.uuid4().hex[:10]}",
        location_id=args.location,
        display_name=args.name or args.emails[0],
        emails=[threading_pb2.ContactEmail(email=e, primary=i == 0) for i, e in enumerate(args.emails)],
        assigned_user_id=args.assign,
        version=args.version,
    )
    answer = client.call(
        "threading",
        "UpsertContact",
        threading_pb2.UpsertContactRequest(request_id=request_id(args), contact=contact),
    )
    applied = "" if answer.applied else "  (not applied: the stored version is newer)"
    out.show(answer, describe_contact(answer.contact) + applied)


def cmd_contact_list(client: Client, out: Output, args: argparse.Namespace) -> None:
    answer = client.call(
        "threading",
        "ListContacts",
        threading_pb2.ListContactsRequest(location_id=args.location, email=args.email, page_size=PAGE_SIZE),
    )
    lines = [describe_contact(c) for c in answer.contacts] or ["no contacts"]
    out.show(list(answer.contacts), "\n".join(lines))


def attachment_fields(paths: list[Path]) -> list[dict[str, str]]:
    fields = []
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as error:
            raise CliError(f"cannot read {path}: {error.strerror}") from None
        fields.append(
            {
                "filename": path.name,
                "content_type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                "data_base64": base64.b64encode(content).decode(),
            }
        )
    return fields


def cmd_deliver(client: Client, out: Output, args: argparse.Namespace) -> None:
    fields: dict[str, Any] = {"to": args.to or [args.mailbox], "cc": args.cc, "subject": args.subject}
    fields["body"] = args.body
    if args.attach:
        fields["attachments"] = attachment_fields(args.attach)
    if args.in_reply_to:
        fields["in_reply_to"] = fields["references"] = args.in_reply_to
    delivered = client.sandbox.deliver(args.mailbox, sender=args.sender, **fields)
    out.show(
        delivered,
        f"delivered to {args.mailbox}: gmail id {delivered['id']}, thread {delivered['threadId']}, "
        f"Message-ID {delivered['message_id']}",
    )


def upload_attachment(client: Client, args: argparse.Namespace, path: Path) -> str:
    try:
        content = path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from None

    def requests() -> Iterator[outbound_pb2.UploadAttachmentRequest]:
        yield outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                request_id=f"cli-{uuid.uuid4().hex}",
                location_id=args.location,
                filename=path.name,
                content_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            )
        )
        for start in range(0, len(content), UPLOAD_CHUNK_BYTES):
            yield outbound_pb2.UploadAttachmentRequest(chunk=content[start : start + UPLOAD_CHUNK_BYTES])

    return str(client.upload(requests()).upload_id)


def addresses(values: list[str]) -> list[common_pb2.EmailAddress]:
    return [common_pb2.EmailAddress(email=v) for v in values]


def cmd_send(client: Client, out: Output, args: argparse.Namespace) -> None:
    request = outbound_pb2.SendEmailRequest(
        request_id=request_id(args),
        location_id=args.location,
        user_id=args.user_id,
        kind=common_pb2.SEND_KIND_BULK if args.bulk else common_pb2.SEND_KIND_INDIVIDUAL,
        to=addresses(args.to),
        cc=addresses(args.cc),
        bcc=addresses(args.bcc),
        subject=args.subject,
        text_body=args.body,
        html_body=args.html,
        conversation_id=args.conversation,
        thread_id=args.thread,
    )
    if args.reply_to:
        parent = client.call(
            "threading",
            "GetMessage",
            threading_pb2.GetMessageRequest(location_id=args.location, message_id=args.reply_to),
        ).message
        request.conversation_id = request.conversation_id or parent.conversation_id
        request.reply_to_rfc_message_id = parent.rfc_message_id
        request.reply_references.append(parent.rfc_message_id)
        if parent.mailbox_copies:
            request.reply_gmail_thread_id = parent.mailbox_copies[0].gmail_thread_id
        if not request.subject:
            request.subject = (
                parent.subject if parent.subject.lower().startswith("re:") else f"Re: {parent.subject}"
            )
    request.attachment_upload_ids.extend(upload_attachment(client, args, path) for path in args.attach)
    send = client.call("outbound", "SendEmail", request).send
    # The stored send carries the Message-ID `watch` and `messages` show for this message (SendEmail's answer
    # may carry the one Gmail replaced it with).
    send = client.call(
        "outbound", "GetSend", outbound_pb2.GetSendRequest(location_id=args.location, send_id=send.send_id)
    ).send
    state = enum_name(outbound_pb2.SendState, send.state, "SEND_STATE_")
    human = f"send {send.send_id}: {state} from {send.mailbox_email or '(SMTP)'}"
    if send.rfc_message_id:
        human += f", Message-ID {send.rfc_message_id}"
    if send.error:
        human += f", error: {send.error}"
    out.show(send, human)


def cmd_conversations(client: Client, out: Output, args: argparse.Namespace) -> None:
    answer = client.call(
        "threading",
        "ListConversations",
        threading_pb2.ListConversationsRequest(
            location_id=args.location, contact_id=args.contact, page_size=PAGE_SIZE
        ),
    )
    lines = [
        f"{c.conversation_id}  contact {c.contact_id}  {c.message_count} messages in {c.thread_count} threads, "
        f"last {when(c.last_message_time)}"
        for c in answer.conversations
    ]
    out.show(list(answer.conversations), "\n".join(lines) or "no conversations")


def cmd_messages(client: Client, out: Output, args: argparse.Namespace) -> None:
    if not (args.conversation or args.thread or args.contact):
        raise CliError("give --contact, --conversation or --thread (see `conversations`)")
    conversation_ids = [args.conversation] if args.conversation or args.thread else []
    if args.contact:
        conversations = client.call(
            "threading",
            "ListConversations",
            threading_pb2.ListConversationsRequest(
                location_id=args.location, contact_id=args.contact, page_size=PAGE_SIZE
            ),
        ).conversations
        conversation_ids = [c.conversation_id for c in conversations]
    messages: list[threading_pb2.Message] = []
    for conversation_id in conversation_ids:
        answer = client.call(
            "threading",
            "ListMessages",
            threading_pb2.ListMessagesRequest(
                location_id=args.location,
                conversation_id=conversation_id,
                thread_id=args.thread,
                page_size=PAGE_SIZE,
            ),
        )
        messages.extend(answer.messages)
    lines = [describe_message(m, args.full, send_state(client, args.location, m)) for m in messages]
    out.show(messages, "\n".join(lines) or "no messages")


def send_state(client: Client, location: str, message: threading_pb2.Message) -> str:
    """A CRM send's state and error as outbound knows it (a FAILED send stays in the conversation)."""
    if not message.send_id:
        return ""
    try:
        send = client.call(
            "outbound", "GetSend", outbound_pb2.GetSendRequest(location_id=location, send_id=message.send_id)
        ).send
    except grpc.RpcError:
        return "pending" if message.send_pending else ""
    state = enum_name(outbound_pb2.SendState, send.state, "SEND_STATE_")
    return f"{state}: {send.error}" if send.error else state


def cmd_explain(client: Client, out: Output, args: argparse.Namespace) -> None:
    if not args.rfc_message_id and not (args.mailbox_id and args.gmail_id):
        raise CliError("give --rfc-message-id, or --mailbox-id with --gmail-id")
    request = threading_pb2.ExplainMessageRequest(
        location_id=args.location,
        rfc_message_id=args.rfc_message_id,
        mailbox_id=args.mailbox_id,
        gmail_message_id=args.gmail_id,
    )
    # With --wait, NOT_FOUND means "not decided yet": the message may still be on its way through the sync.
    deadline = time.monotonic() + args.wait
    while True:
        try:
            answer = client.call("threading", "ExplainMessage", request)
            break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() >= deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(POLL_SECONDS)
    lines = [f"{answer.rfc_message_id}  {answer.subject!r}"]
    for decision in answer.decisions:
        verdict = "synced" if decision.synced else "not synced"
        lines.append(f"  {decision.location_id}: {verdict} by {decision.rule_id or '-'}: {decision.reason}")
        if decision.conversation_id:
            lines.append(f"    conversation {decision.conversation_id}, message {decision.message_id}")
    out.show(answer, "\n".join(lines))


def cmd_watch(client: Client, out: Output, args: argparse.Namespace) -> None:
    stream = client.call(
        "threading",
        "WatchMessages",
        threading_pb2.WatchMessagesRequest(location_id=args.location, after_cursor=args.after),
        stream=True,
    )
    if not out.as_json:
        print(f"watching {args.location} (Ctrl-C stops)", file=sys.stderr, flush=True)
    seen = 0
    try:
        for item in stream:
            synced = item.synced
            direction = enum_name(common_pb2.Direction, synced.direction, "DIRECTION_")
            out.show(
                item,
                f"[{item.cursor}] {when(synced.sync_time)}  {direction:8} {synced.rule_id:4} "
                f"message {synced.message_id} in conversation {synced.conversation_id} "
                f"(contact {synced.contact_id}), Message-ID {synced.rfc_message_id}",
            )
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        stream.cancel()


# Why a mailbox has the daily limit it has (GetQuotaResponse.limit_source; docs/outbound.md).
LIMIT_SOURCES = {
    outbound_pb2.DAILY_LIMIT_SOURCE_SET_EXPLICITLY: "set explicitly (SetSendLimit)",
    outbound_pb2.DAILY_LIMIT_SOURCE_WORKSPACE_ACCOUNT: "a Google Workspace account, as Google said",
    outbound_pb2.DAILY_LIMIT_SOURCE_CONSUMER_ACCOUNT: "a consumer account, as Google said",
    outbound_pb2.DAILY_LIMIT_SOURCE_UNKNOWN_ACCOUNT: "Google did not say the account type: the consumer limit",
}


def cmd_quota(client: Client, out: Output, args: argparse.Namespace) -> None:
    quota = client.call(
        "outbound", "GetQuota", outbound_pb2.GetQuotaRequest(location_id=args.location, user_id=args.user_id)
    )
    source = LIMIT_SOURCES.get(quota.limit_source, "")
    human = (
        f"{quota.mailbox_email}: {quota.used} of {quota.daily_limit} used, {quota.remaining} left "
        f"(window resets {when(quota.reset_time)})" + (f"; the limit: {source}" if source else "")
    )
    if quota.blocked_until.seconds:
        human += f"; Gmail blocks sending until {when(quota.blocked_until)}"
    out.show(quota, human)


def cmd_sync_status(client: Client, out: Output, args: argparse.Namespace) -> None:
    mailbox_id = args.mailbox_id
    if not mailbox_id:
        if not args.user:
            raise CliError("give a mailbox id or --user (whose connection's mailbox is meant)")
        mailbox_id = client.call(
            "auth",
            "GetConnection",
            auth_pb2.GetConnectionRequest(location_id=args.location, user_id=args.user),
        ).connection.mailbox_id
    status = client.call(
        "ingest",
        "GetSyncStatus",
        ingest_pb2.GetSyncStatusRequest(location_id=args.location, mailbox_id=mailbox_id),
    ).status
    state = enum_name(ingest_pb2.MailboxSyncState, status.state, "MAILBOX_SYNC_STATE_")
    human = (
        f"{status.mailbox_email} ({status.mailbox_id}): {state}, history {status.history_cursor}, "
        f"last sync {when(status.last_sync_time)}, lag {status.lag_seconds:.1f} s, "
        f"{status.messages_published} published, {status.messages_skipped} skipped, {status.resyncs} resyncs"
    )
    if status.last_error:
        human += f"\n  last error: {status.last_error}"
    out.show(status, human)


def cmd_stack(client: Client, out: Output, args: argparse.Namespace) -> None:
    stack = client.stack
    document = {
        "services": stack.services,
        "endpoints": stack.endpoints,
        "sandbox_url": stack.sandbox_url,
        "nats_url": stack.nats_url,
    }
    lines = [f"{name:10} gRPC {address}" for name, address in stack.services.items()]
    lines += [
        f"{name:10} {role} {address}"
        for name, roles in stack.endpoints.items()
        for role, address in roles.items()
    ]
    lines += [f"{'sandbox':10} {stack.sandbox_url}", f"{'nats':10} {stack.nats_url}"]
    out.show(document, "\n".join(lines))


def cmd_expire_tokens(client: Client, out: Output, args: argparse.Namespace) -> None:
    expired = client.sandbox.expire_access_tokens(args.address)
    out.show(
        {"address": args.address, "expired": expired},
        f"{expired} access token(s) of {args.address} expired: the next Gmail call with one is refused (401)",
    )


def cmd_drop(client: Client, out: Output, args: argparse.Namespace) -> None:
    """What Gmail does when the user sends with the location's BCC address in Bcc: the MX hands the message,
    stamped with its Authentication-Results, to ingest's BCC-drop listener (R9)."""
    sender = args.sender
    if not sender:
        sender = client.call(
            "auth",
            "GetConnection",
            auth_pb2.GetConnectionRequest(location_id=args.location, user_id=args.user_id),
        ).connection.mailbox_email
    drop_address = client.call(
        "ingest", "GetBccAddress", ingest_pb2.GetBccAddressRequest(location_id=args.location)
    ).address
    authserv_id = client.stack.bcc_trusted_authserv_id
    if not authserv_id:
        raise CliError("the stack trusts no receiving host's Authentication-Results (restart `make run`)")
    host, _, port = client.stack.endpoint("ingest", "bcc_smtp").rpartition(":")
    author_domain = parseaddr(sender)[1].rpartition("@")[2]
    message = EmailMessage()
    message["Authentication-Results"] = f"{authserv_id}; dmarc=pass header.from={author_domain}"
    message["From"] = sender
    message["To"] = ", ".join(args.to)
    message["Subject"] = args.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=author_domain or None)
    message.set_content(args.body or "")
    try:
        with smtplib.SMTP(host, int(port), timeout=args.timeout) as smtp:
            refused = smtp.send_message(message, from_addr=parseaddr(sender)[1], to_addrs=[drop_address])
    except smtplib.SMTPResponseException as error:
        raise CliError(
            f"the BCC-drop listener refused the drop: {error.smtp_code} {error.smtp_error.decode(errors='replace')}"
        ) from None
    except (smtplib.SMTPException, OSError) as error:
        raise CliError(f"the BCC-drop listener at {host}:{port} did not take the drop: {error}") from None
    if refused:
        raise CliError(f"the BCC-drop listener refused {drop_address}: {refused}")
    out.show(
        {"drop_address": drop_address, "message_id": message["Message-ID"], "from": sender},
        f"dropped to {drop_address}: Message-ID {message['Message-ID']} from {sender} to {', '.join(args.to)}",
    )


def cmd_password_change(client: Client, out: Output, args: argparse.Namespace) -> None:
    client.sandbox.change_password(args.address, args.password)
    out.show(
        {"address": args.address, "changed": True},
        f"password of {args.address} changed: its Gmail grants stop refreshing (the connection needs re-consent)",
    )


# ---- arguments ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailsync",
        description=__doc__.split("\n\n")[0],
        epilog="Start the stack first with `make run`; docs/demo.md has a walk-through.",
    )
    parser.add_argument(
        "--stack-file",
        type=Path,
        default=Path(os.environ.get(STACK_FILE_VARIABLE) or DEFAULT_STACK_FILE),
        help=f"written by `make run` (default ${STACK_FILE_VARIABLE} or var/run/stack.json of the checkout)",
    )
    parser.add_argument(
        "--location",
        default=os.environ.get(LOCATION_VARIABLE, DEFAULT_LOCATION),
        help=f"the CRM location acted for (default ${LOCATION_VARIABLE} or {DEFAULT_LOCATION})",
    )
    parser.add_argument("--token", default="", help="CRM token (default: the one in the stack file)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print results as JSON, one document per line")
    parser.add_argument(
        "--field",
        default="",
        metavar="NAME",
        help="print only this field of the result (of each listed item), e.g. `--field message_id`",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., None], help_text: str, under: Any = commands) -> Any:
        sub = under.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def with_request_id(sub: Any) -> None:
        sub.add_argument("--request-id", default="", help="idempotency key (default: a fresh one)")

    user = commands.add_parser("user", help="CRM users").add_subparsers(dest="user_command", required=True)
    sub = command("add", cmd_user_add, "create or update a CRM user (UpsertUser)", user)
    sub.add_argument("user_id")
    sub.add_argument("--email", required=True, help="the user's CRM address")
    sub.add_argument("--name", default="")
    sub.add_argument("--locations", nargs="+", help="locations the user belongs to (default: --location)")
    sub.add_argument("--version", type=int, default=1, help="the CRM's version of the user")
    with_request_id(sub)

    mailbox = commands.add_parser("mailbox", help="Gmail mailboxes in the sandbox").add_subparsers(
        dest="mailbox_command", required=True
    )
    sub = command("create", cmd_mailbox_create, "create a Gmail mailbox in the sandbox", mailbox)
    sub.add_argument("address")
    sub.add_argument("--password", default="password")
    sub.add_argument("--name", default="", help="display name")
    sub.add_argument("--workspace", action="store_true", help="a Workspace mailbox (higher send limit)")
    sub.add_argument("--daily-send-limit", type=int, default=None)

    sub = command("connect", cmd_connect, "connect a user's Gmail in the location (BeginConnect + consent)")
    sub.add_argument("user_id")
    sub.add_argument(
        "--approve",
        metavar="ADDRESS",
        default="",
        help="consent as this sandbox mailbox instead of printing the URL",
    )
    sub.add_argument("--decision", choices=("allow", "deny"), default="allow")
    sub.add_argument("--return-url", default="")
    sub.add_argument("--wait", type=float, default=20.0, help="seconds to wait for CONNECTED")
    with_request_id(sub)

    sub = command("connections", cmd_connections, "list the location's connections")
    sub.add_argument("--user", default="")
    sub.add_argument(
        "--until",
        choices=[
            n.removeprefix("CONNECTION_STATE_")
            for n in common_pb2.ConnectionState.keys()
            if not n.endswith("UNSPECIFIED")
        ],
        default="",
        metavar="STATE",
        help="wait until a connection is in this state (CONNECTED, REAUTH_REQUIRED, ...)",
    )
    sub.add_argument("--wait", type=float, default=60.0, help="seconds --until waits")

    contact = commands.add_parser("contact", help="CRM contacts").add_subparsers(
        dest="contact_command", required=True
    )
    sub = command("add", cmd_contact_add, "create or update a contact (UpsertContact)", contact)
    sub.add_argument("emails", nargs="+", help="addresses, the first is primary")
    sub.add_argument("--name", default="")
    sub.add_argument("--assign", default="", metavar="USER_ID", help="the user the contact is assigned to")
    sub.add_argument("--id", dest="contact_id", default="", help="contact id (default: a fresh one)")
    sub.add_argument("--version", type=int, default=1)
    with_request_id(sub)
    sub = command("list", cmd_contact_list, "list the location's contacts", contact)
    sub.add_argument("--email", default="", help="only contacts with this address")

    sub = command("deliver", cmd_deliver, "the outside world sends mail to a sandbox mailbox")
    sub.add_argument("mailbox", help="the receiving sandbox mailbox")
    sub.add_argument("--from", dest="sender", required=True, help='e.g. "Carol <carol@outside.test>"')
    sub.add_argument("--subject", required=True)
    sub.add_argument("--body", default="")
    sub.add_argument("--to", nargs="+", default=[], help="To header (default: the mailbox)")
    sub.add_argument("--cc", nargs="+", default=[])
    sub.add_argument("--attach", nargs="+", type=Path, default=[], metavar="FILE")
    sub.add_argument("--in-reply-to", default="", metavar="MESSAGE_ID", help="In-Reply-To and References")

    sub = command("send", cmd_send, "send from the CRM (SendEmail)")
    sub.add_argument("user_id", help="the sending user")
    sub.add_argument("--to", nargs="+", required=True)
    sub.add_argument("--cc", nargs="+", default=[])
    sub.add_argument("--bcc", nargs="+", default=[])
    sub.add_argument("--subject", default="")
    sub.add_argument("--body", default="")
    sub.add_argument("--html", default="")
    sub.add_argument(
        "--bulk", action="store_true", help="BULK (the location's SMTP) instead of INDIVIDUAL (Gmail)"
    )
    sub.add_argument("--attach", nargs="+", type=Path, default=[], metavar="FILE")
    sub.add_argument("--reply-to", default="", metavar="MESSAGE_ID", help="reply to this synced message")
    sub.add_argument("--conversation", default="")
    sub.add_argument("--thread", default="")
    with_request_id(sub)

    sub = command("conversations", cmd_conversations, "list conversations, newest activity first")
    sub.add_argument("--contact", default="")

    sub = command("messages", cmd_messages, "list the messages of a contact, a conversation or a thread")
    sub.add_argument("--contact", default="", help="every conversation of this contact")
    sub.add_argument("--conversation", default="")
    sub.add_argument("--thread", default="")
    sub.add_argument("--full", action="store_true", help="participants, ids and text")

    sub = command("explain", cmd_explain, "why a message synced where it did, or did not (R16)")
    sub.add_argument("--rfc-message-id", default="")
    sub.add_argument("--mailbox-id", default="")
    sub.add_argument("--gmail-id", default="")
    sub.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for the sync to decide (default: ask once)"
    )

    sub = command("watch", cmd_watch, "print messages as they sync until Ctrl-C")
    sub.add_argument("--after", default="", metavar="CURSOR", help="resume after this cursor")
    sub.add_argument("--count", type=int, default=0, help="stop after this many (default: never)")

    sub = command("quota", cmd_quota, "the user's rolling 24-hour send quota (R14)")
    sub.add_argument("user_id")

    sub = command("sync-status", cmd_sync_status, "a mailbox's sync state")
    sub.add_argument("mailbox_id", nargs="?", default="")
    sub.add_argument("--user", default="", help="the mailbox of this user's connection")

    sub = command(
        "drop", cmd_drop, "a user's mail with the location's BCC address in Bcc, through the listener"
    )
    sub.add_argument("user_id", help="the sending user (From: their connected mailbox)")
    sub.add_argument("--to", nargs="+", required=True, help="the first is the counterpart (R9)")
    sub.add_argument("--subject", required=True)
    sub.add_argument("--body", default="")
    sub.add_argument("--from", dest="sender", default="", help="From header (default: the user's mailbox)")

    command("stack", cmd_stack, "the running stack's addresses (from the stack file)")

    sub = command(
        "expire-tokens",
        cmd_expire_tokens,
        "expire a mailbox's Gmail access tokens now (sandbox), as Google does after a revocation",
    )
    sub.add_argument("address")

    sub = command("password-change", cmd_password_change, "the user changes the Gmail password (sandbox)")
    sub.add_argument("address")
    sub.add_argument("password")
    return parser


def sandbox_message(error: AdminError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"HTTP {error.status}: {body['error'].get('message', body)}"
    return f"HTTP {error.status}: {body}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client: Client | None = None
    try:
        stack = StackInfo.load(args.stack_file)
        client = Client(stack, args.token or stack.crm_token, args.timeout)
        args.handler(client, Output(args.json, args.field), args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        name = code.name if code is not None else "UNKNOWN"
        print(f"error: {name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except AdminError as error:
        print(f"error: sandbox: {sandbox_message(error)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"error: the sandbox did not answer: {error.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
