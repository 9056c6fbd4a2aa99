"""Tenant isolation as a property of every RPC (issue 13): the RPCs are enumerated from the four services'
descriptors, and each one is called as an attacker scoped to location A would call it against location B:

- `foreign-token`: a token for A, a request for B naming B's objects;
- `foreign-ids`: a token for A, a request for A naming B's objects (where the request names any);
- `no-location`: a token naming no location, a request for B naming B's objects.

Every answer must be PERMISSION_DENIED or NOT_FOUND (a list filtered by B's values may answer OK, empty), and no
answer may contain anything of B that the request did not carry. Then B is checked untouched, and each request is
replayed with B's own token (the negative control: the same request is not refused, so the refusals above came
from the scoping and not from a malformed request). A new RPC fails this test until it has a request builder.

Real processes (the e2e stack), real OAuth against the Gmail sandbox, real mail, real sends.
"""

from __future__ import annotations

import base64
import collections
import email.utils
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

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
from services.runtime.errors import error_info
from services.runtime.grpc_auth import ServiceTokenKeys
from tests.fixtures.stack import RPC_TIMEOUT_SECONDS, E2EStack

SERVICES = {
    "auth": (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], auth_pb2_grpc.AuthServiceStub),
    "ingest": (ingest_pb2.DESCRIPTOR.services_by_name["IngestService"], ingest_pb2_grpc.IngestServiceStub),
    "threading": (
        threading_pb2.DESCRIPTOR.services_by_name["ThreadingService"],
        threading_pb2_grpc.ThreadingServiceStub,
    ),
    "outbound": (
        outbound_pb2.DESCRIPTOR.services_by_name["OutboundService"],
        outbound_pb2_grpc.OutboundServiceStub,
    ),
}
REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND})


@dataclass
class Tenant:
    """One location with something of every kind, and the values no other location may ever see."""

    location: str
    user_id: str = ""
    user_email: str = ""
    user_name: str = ""
    mailbox: str = ""
    mailbox_id: str = ""
    connection_id: str = ""
    contact_id: str = ""
    contact_email: str = ""
    contact_name: str = ""
    conversation_id: str = ""
    thread_id: str = ""
    message_id: str = ""
    rfc_message_id: str = ""
    gmail_message_id: str = ""
    attachment_id: str = ""
    bcc_address: str = ""
    send_id: str = ""
    send_request_id: str = ""
    upload_id: str = ""
    sent_upload_id: str = ""
    oauth_state: str = ""
    subject: str = ""
    body: str = ""
    drop_id: str = ""

    def private_values(self) -> set[str]:
        values = {value for value in vars(self).values() if isinstance(value, str) and len(value) >= 6}
        return values | {self.bcc_address.split("+", 1)[-1].split("@", 1)[0]}


def only_message(stack: E2EStack, tenant: Tenant) -> threading_pb2.Message:
    return stack.wait_for_message(
        tenant.location, tenant.contact_id, rfc_message_id=tenant.rfc_message_id, timeout=90
    )


def populate(stack: E2EStack, name: str) -> Tenant:
    """A location with a connected user, a contact, synced mail with an attachment, a send, an upload, a BCC
    address and a pending OAuth state."""
    tenant = Tenant(stack.new_id(f"loc-{name}"))
    user = stack.create_user([tenant.location], name=name)
    tenant.user_id, tenant.user_email, tenant.user_name = user.user_id, user.crm_email, user.display_name
    tenant.mailbox = stack.new_address(name)
    connection = stack.connect_gmail(tenant.user_id, tenant.location, tenant.mailbox)
    tenant.connection_id, tenant.mailbox_id = connection.connection_id, connection.mailbox_id
    tenant.contact_email = stack.new_address(f"client-of-{name}", "outside.test")
    tenant.contact_name = f"Client {uuid.uuid4().hex[:8]}"
    contact = stack.upsert_contact(
        tenant.location, tenant.contact_email, assigned_user_id=tenant.user_id, name=tenant.contact_name
    )
    tenant.contact_id = contact.contact_id
    tenant.subject = f"Private subject {uuid.uuid4().hex}"
    tenant.body = f"private-body-{uuid.uuid4().hex}"
    delivered = stack.deliver(
        tenant.mailbox,
        tenant.contact_email,
        tenant.subject,
        tenant.body,
        attachments=[
            {
                "filename": "contract.pdf",
                "content_type": "application/pdf",
                "data_base64": base64.b64encode(f"contract of {name} {uuid.uuid4().hex}".encode()).decode(),
            }
        ],
    )
    tenant.rfc_message_id = delivered["message_id"]
    message = only_message(stack, tenant)
    tenant.message_id, tenant.conversation_id = message.message_id, message.conversation_id
    tenant.thread_id = message.thread_ids[0]
    tenant.gmail_message_id = message.mailbox_copies[0].gmail_message_id
    tenant.attachment_id = message.attachments[0].attachment_id
    tenant.bcc_address = stack.bcc_address(tenant.location)
    tenant.send_request_id = stack.new_id("req")
    tenant.sent_upload_id = stack.outbound.UploadAttachment(iter(upload_requests(tenant.location))).upload_id
    sent = stack.outbound.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=tenant.send_request_id,
            location_id=tenant.location,
            user_id=tenant.user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=tenant.contact_email)],
            subject=f"Re: {tenant.subject}",
            text_body=f"reply {uuid.uuid4().hex}",
            attachment_upload_ids=[tenant.sent_upload_id],
        )
    )
    tenant.send_id = sent.send.send_id
    tenant.upload_id = stack.outbound.UploadAttachment(iter(upload_requests(tenant.location))).upload_id
    begun = stack.auth.BeginConnect(
        auth_pb2.BeginConnectRequest(
            request_id=stack.new_id("req"), user_id=tenant.user_id, location_id=tenant.location
        )
    )
    tenant.oauth_state = begun.state
    return tenant


def upload_requests(location: str) -> list[outbound_pb2.UploadAttachmentRequest]:
    return [
        outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                request_id=f"up-{uuid.uuid4().hex[:12]}", location_id=location, filename="a.txt"
            )
        ),
        outbound_pb2.UploadAttachmentRequest(chunk=b"attachment bytes"),
    ]


def drop_raw(tenant: Tenant) -> bytes:
    """A drop from the tenant's own connected mailbox, as the trusted MX hands it on."""
    raw = (
        f"From: {tenant.mailbox}\r\nTo: {tenant.contact_email}\r\nBcc: {tenant.bcc_address}\r\n"
        f"Subject: drop {uuid.uuid4().hex}\r\nMessage-ID: <{uuid.uuid4().hex}@gmail.test>\r\n"
        f"Date: {email.utils.formatdate()}\r\n\r\nlogged from gmail\r\n"
    ).encode()
    return E2EStack.stamped_by_mx(raw, "gmail.test")


# ---- one request per RPC: for location `at`, naming the objects of `of` --------------------------------------

Build = Callable[[str, Tenant], Any]


def _req() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


BUILDERS: dict[str, Build] = {
    # AuthService
    "UpsertUser": lambda at, of: auth_pb2.UpsertUserRequest(
        request_id=_req(),
        user=auth_pb2.User(
            user_id=of.user_id,
            crm_email="attacker@crm.test",
            display_name="Owned",
            location_ids=[at],
            version=999,
        ),
    ),
    "ListUsers": lambda at, of: auth_pb2.ListUsersRequest(location_id=at, email=of.user_email),
    "BeginConnect": lambda at, of: auth_pb2.BeginConnectRequest(
        request_id=_req(), user_id=of.user_id, location_id=at
    ),
    "CompleteConnect": lambda at, of: auth_pb2.CompleteConnectRequest(
        request_id=_req(), state=of.oauth_state, error="access_denied"
    ),
    "GetConnection": lambda at, of: auth_pb2.GetConnectionRequest(
        location_id=at, connection_id=of.connection_id
    ),
    "ListConnections": lambda at, of: auth_pb2.ListConnectionsRequest(location_id=at, user_id=of.user_id),
    "UpdateEmail": lambda at, of: auth_pb2.UpdateEmailRequest(
        request_id=_req(), user_id=of.user_id, location_id=at
    ),
    "Disconnect": lambda at, of: auth_pb2.DisconnectRequest(
        request_id=_req(), location_id=at, connection_id=of.connection_id
    ),
    "GetAccessToken": lambda at, of: auth_pb2.GetAccessTokenRequest(mailbox_id=of.mailbox_id),
    "GetMailbox": lambda at, of: auth_pb2.GetMailboxRequest(mailbox_id=of.mailbox_id),
    "RenewWatches": lambda at, of: auth_pb2.RenewWatchesRequest(
        request_id=_req(), mailbox_ids=[of.mailbox_id]
    ),
    # IngestService
    "HandlePush": lambda at, of: ingest_pb2.HandlePushRequest(
        subscription="projects/p/subscriptions/s",
        message=ingest_pb2.PubSubMessage(
            data=json.dumps({"emailAddress": of.mailbox, "historyId": "1"}).encode(), message_id="1"
        ),
        oidc_token="not-a-google-token",
    ),
    "SubmitBccDrop": lambda at, of: ingest_pb2.SubmitBccDropRequest(
        request_id=_req(),
        raw_message=drop_raw(of),
        envelope_recipient=of.bcc_address,
        envelope_sender=of.mailbox,
    ),
    "GetBccAddress": lambda at, of: ingest_pb2.GetBccAddressRequest(location_id=at),
    "RotateBccAddress": lambda at, of: ingest_pb2.RotateBccAddressRequest(request_id=_req(), location_id=at),
    "ResyncMailbox": lambda at, of: ingest_pb2.ResyncMailboxRequest(
        request_id=_req(), location_id=at, mailbox_id=of.mailbox_id
    ),
    "GetSyncStatus": lambda at, of: ingest_pb2.GetSyncStatusRequest(location_id=at, mailbox_id=of.mailbox_id),
    "FetchAttachment": lambda at, of: ingest_pb2.FetchAttachmentRequest(
        mailbox_id=of.mailbox_id, gmail_message_id=of.gmail_message_id, attachment_id=of.attachment_id
    ),
    # ThreadingService
    "UpsertContact": lambda at, of: threading_pb2.UpsertContactRequest(
        request_id=_req(),
        contact=threading_pb2.Contact(
            contact_id=of.contact_id,
            location_id=at,
            display_name="Owned",
            emails=[threading_pb2.ContactEmail(email="attacker@crm.test", primary=True)],
            version=999,
        ),
    ),
    "DeleteContact": lambda at, of: threading_pb2.DeleteContactRequest(
        request_id=_req(), location_id=at, contact_id=of.contact_id, version=999
    ),
    "ListContacts": lambda at, of: threading_pb2.ListContactsRequest(location_id=at, email=of.contact_email),
    "ListConversations": lambda at, of: threading_pb2.ListConversationsRequest(
        location_id=at, contact_id=of.contact_id
    ),
    "GetConversation": lambda at, of: threading_pb2.GetConversationRequest(
        location_id=at, conversation_id=of.conversation_id
    ),
    "ListMessages": lambda at, of: threading_pb2.ListMessagesRequest(location_id=at, thread_id=of.thread_id),
    "GetMessage": lambda at, of: threading_pb2.GetMessageRequest(location_id=at, message_id=of.message_id),
    "GetAttachment": lambda at, of: threading_pb2.GetAttachmentRequest(
        location_id=at, message_id=of.message_id, attachment_id=of.attachment_id
    ),
    "WatchMessages": lambda at, of: threading_pb2.WatchMessagesRequest(location_id=at, after_cursor="0"),
    "ExplainMessage": lambda at, of: threading_pb2.ExplainMessageRequest(
        location_id=at, rfc_message_id=of.rfc_message_id
    ),
    "ListRefusedDrops": lambda at, of: threading_pb2.ListRefusedDropsRequest(location_id=at),
    # OutboundService
    "UploadAttachment": lambda at, of: upload_requests(at),
    "SendEmail": lambda at, of: outbound_pb2.SendEmailRequest(
        request_id=_req(),
        location_id=at,
        user_id=of.user_id,
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        to=[common_pb2.EmailAddress(email=of.contact_email)],
        subject="hello",
        text_body="hello",
        conversation_id=of.conversation_id,
        attachment_upload_ids=[of.upload_id],
    ),
    "GetSend": lambda at, of: outbound_pb2.GetSendRequest(location_id=at, send_id=of.send_id),
    "GetQuota": lambda at, of: outbound_pb2.GetQuotaRequest(location_id=at, user_id=of.user_id),
    "SetSendLimit": lambda at, of: outbound_pb2.SetSendLimitRequest(
        location_id=at, user_id=of.user_id, daily_limit=400
    ),
    "FetchSentAttachment": lambda at, of: outbound_pb2.FetchSentAttachmentRequest(
        location_id=at, upload_id=of.sent_upload_id
    ),
}
# Requests that name nothing of a location but the location itself: `foreign-ids` does not apply.
LOCATION_ONLY = frozenset(
    {"GetBccAddress", "RotateBccAddress", "WatchMessages", "UploadAttachment", "ListRefusedDrops"}
)
# Lists filtered by a value (an address, a user): for another location's value they answer OK, empty.
FILTERS = {"ListUsers": "users", "ListContacts": "contacts", "ListConnections": "connections"}
# Writes keyed by (location, id): another location's id in one's own location only names one's own object.
OWN_NAMESPACE = frozenset({"UpsertContact", "DeleteContact"})
# Called last in the control phase: they change B (disconnect, rotate, delete, complete the OAuth state).
DESTRUCTIVE = ("CompleteConnect", "RotateBccAddress", "DeleteContact", "Disconnect")


def all_methods() -> list[tuple[str, Any]]:
    """Every RPC of the four services, those that write under their own location's namespace last (their
    `foreign-ids` call creates an object with the victim's id in the attacker's own location)."""
    methods = [
        (service, method) for service, (descriptor, _) in SERVICES.items() for method in descriptor.methods
    ]
    return sorted(methods, key=lambda sm: sm[1].name in OWN_NAMESPACE)


@dataclass
class Answer:
    code: grpc.StatusCode
    reason: str
    text: str  # everything the caller received: details, trailers, response bytes


@dataclass
class Caller:
    stack: E2EStack
    token: str
    _stubs: dict[str, Any] = field(default_factory=dict)

    def stub(self, service: str) -> Any:
        if service not in self._stubs:
            address = next(m.address for m in self.stack.runner.processes if m.name == service)
            channel = grpc.insecure_channel(address)
            self.stack.channels.append(channel)
            self._stubs[service] = SERVICES[service][1](channel)
        return self._stubs[service]

    def call(self, service: str, method: Any, request: Any) -> Answer:
        rpc = getattr(self.stub(service), method.name)
        metadata = (("authorization", f"Bearer {self.token}"),)
        received: list[bytes] = []
        try:
            if method.client_streaming:
                received.append(
                    rpc(iter(request), metadata=metadata, timeout=RPC_TIMEOUT_SECONDS).SerializeToString()
                )
            elif method.server_streaming:
                call = rpc(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)
                # A live subscription sends its headers at once; a refused one ends with its status.
                call.initial_metadata()
                if method.name == "WatchMessages" and not call.done():
                    call.cancel()
                    return Answer(grpc.StatusCode.OK, "", "")
                received += [response.SerializeToString() for response in call]
            else:
                received.append(
                    rpc(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS).SerializeToString()
                )
        except grpc.RpcError as error:
            info = error_info(error)
            trailers = repr(error.trailing_metadata()) if hasattr(error, "trailing_metadata") else ""
            return Answer(error.code(), info.reason if info else "", f"{error.details()} {trailers}")
        return Answer(grpc.StatusCode.OK, "", repr(b"".join(received)))


def request_bytes(request: Any) -> bytes:
    messages = request if isinstance(request, list) else [request]
    return b"".join(m.SerializeToString() for m in messages if isinstance(m, Message))


def leaked(answer: Answer, victim: Tenant, request: Any) -> list[str]:
    """Private values of the victim in the answer that the request itself did not carry."""
    sent = request_bytes(request)
    return sorted(v for v in victim.private_values() if v in answer.text and v.encode() not in sent)


@pytest.fixture(scope="module")
def tenants(e2e_stack: E2EStack) -> tuple[Tenant, Tenant]:
    return populate(e2e_stack, "ann"), populate(e2e_stack, "bob")


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[tuple[str, str], collections.Counter[str]]]:
    table: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    yield table
    print("\nRPC x attack outcomes (issue 13):")
    for (attack, method), counts in sorted(table.items()):
        print(f"  {attack:14} {method:18} {dict(counts)}")
    totals: collections.Counter[str] = collections.Counter()
    for counts in table.values():
        totals.update(counts)
    print(f"  totals: {dict(totals)}")


def test_every_rpc_has_a_request_builder() -> None:
    names = {method.name for _service, method in all_methods()}
    assert names - BUILDERS.keys() == set(), "add a request builder for the new RPC"
    assert BUILDERS.keys() - names == set()


def test_another_locations_objects_are_refused_and_reveal_nothing(
    e2e_stack: E2EStack,
    tenants: tuple[Tenant, Tenant],
    outcomes: dict[tuple[str, str], collections.Counter[str]],
) -> None:
    attacker, victim = tenants
    signer = e2e_stack.runner.crm_signer
    assert signer is not None
    scoped = Caller(e2e_stack, signer.mint("crm-ann", [attacker.location]))
    nowhere = Caller(e2e_stack, signer.mint("crm-nobody", []))
    attacks = {
        "foreign-token": (scoped, victim.location),
        "foreign-ids": (scoped, attacker.location),
        "no-location": (nowhere, victim.location),
    }
    failures: list[str] = []
    for service, method in all_methods():
        for attack, (caller, location) in attacks.items():
            if attack == "foreign-ids" and method.name in LOCATION_ONLY:
                continue
            request = BUILDERS[method.name](location, victim)
            answer = caller.call(service, method, request)
            label = answer.code.name + (f" {answer.reason}" if answer.reason else "")
            outcomes[(attack, method.name)][label] += 1
            allowed_ok = method.name in FILTERS or (attack == "foreign-ids" and method.name in OWN_NAMESPACE)
            if answer.code not in REFUSED and not (answer.code == grpc.StatusCode.OK and allowed_ok):
                failures.append(f"{attack} {method.name}: {label}")
            if leak := leaked(answer, victim, request):
                failures.append(f"{attack} {method.name}: the answer carries {leak}")
    assert failures == []


def test_a_filtered_list_with_another_locations_values_is_empty(
    e2e_stack: E2EStack, tenants: tuple[Tenant, Tenant]
) -> None:
    attacker, victim = tenants
    signer = e2e_stack.runner.crm_signer
    assert signer is not None
    scoped = Caller(e2e_stack, signer.mint("crm-ann", [attacker.location]))
    for name, repeated in FILTERS.items():
        service, _method = next((s, m) for s, m in all_methods() if m.name == name)
        rpc = getattr(scoped.stub(service), name)
        answer = rpc(
            BUILDERS[name](attacker.location, victim),
            metadata=(("authorization", f"Bearer {scoped.token}"),),
            timeout=RPC_TIMEOUT_SECONDS,
        )
        assert list(getattr(answer, repeated)) == [], name


def test_the_victim_is_untouched_and_its_own_token_is_not_refused(
    e2e_stack: E2EStack,
    tenants: tuple[Tenant, Tenant],
    outcomes: dict[tuple[str, str], collections.Counter[str]],
) -> None:
    """Runs after the attacks (same module, in order). Then the negative control: B's own callers send the very
    same requests, and are not refused as PERMISSION_DENIED or NOT_FOUND."""
    _attacker, victim = tenants
    signer = e2e_stack.runner.crm_signer
    assert signer is not None
    own = Caller(e2e_stack, signer.mint("crm-bob", [victim.location]))
    everything = Caller(e2e_stack, signer.mint("crm-all", ["*"]))
    internal = Caller(e2e_stack, ServiceTokenKeys.parse(e2e_stack.runner.token_keys).mint("ops"))

    # Issue 13's takeover: bob is still in B, with his own name, and may still connect there.
    (user,) = (
        own.stub("auth")
        .ListUsers(
            auth_pb2.ListUsersRequest(location_id=victim.location),
            metadata=(("authorization", f"Bearer {own.token}"),),
        )
        .users
    )
    assert (user.user_id, user.display_name, list(user.location_ids)) == (
        victim.user_id,
        victim.user_name,
        [victim.location],
    )
    assert user.version == 1
    assert (
        e2e_stack.connection(victim.user_id, victim.location).state == common_pb2.CONNECTION_STATE_CONNECTED
    )
    assert e2e_stack.bcc_address(victim.location) == victim.bcc_address
    contacts = e2e_stack.contacts(victim.location)
    assert [(c.contact_id, c.display_name) for c in contacts] == [(victim.contact_id, victim.contact_name)]

    internal_methods = {
        "GetAccessToken",
        "GetMailbox",
        "HandlePush",
        "SubmitBccDrop",
        "FetchAttachment",
        "FetchSentAttachment",
    }
    ordered = sorted(all_methods(), key=lambda sm: sm[1].name in DESTRUCTIVE)
    refused: list[str] = []
    for service, method in ordered:
        caller = (
            internal
            if method.name in internal_methods
            else everything
            if method.name == "RenewWatches"
            else own
        )
        request = BUILDERS[method.name](victim.location, victim)
        answer = caller.call(service, method, request)
        outcomes[("own-control", method.name)][answer.code.name] += 1
        if answer.code in REFUSED:
            refused.append(f"{method.name}: {answer.code.name} {answer.reason}")
    assert refused == []
