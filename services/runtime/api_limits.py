"""The one declared table of limits of the mailsync API: every request field's kind and bounds.

Every server checks each request against it before the servicer runs (services.runtime.validation), so the
answer to a bad value is the same INVALID_ARGUMENT on SQLite and PostgreSQL. The limits are what every database
column can hold (ids fit the 64-character key columns of every service) and what the protocols allow (an
addr-spec is at most 254 characters). docs/api.md and the comments in protos/ are written from this table
(`python -m tools.api_reference`), and a unit test fails when a request field is missing here.

Enum fields (only the values the proto defines) and Timestamp fields (years 1-9999) need no entry.
"""

from __future__ import annotations

from types import MappingProxyType

from services.runtime.validation import (
    Binary,
    Cursor,
    EmailAddress,
    FieldKind,
    FieldRule,
    Identifier,
    Integer,
    Pattern,
    Text,
    Url,
)

# ---- kinds ---------------------------------------------------------------------------------------------------

ID = Identifier("id", 64)
REQUEST_ID = Identifier("request_id", 128)
EMAIL = EmailAddress()
NAME = Text("name", 256)
# Checked for header injection by outbound's own rules, which name the exact problem; here only bounded.
HEADER_TEXT = Text("header_text", 998, single_line=False)
BODY = Text("body", None, single_line=False)
MESSAGE_ID = Text("message_id", 998)
URL = Url()
PAGE_SIZE = Integer("page_size", 0, 2**31 - 1)
PAGE_TOKEN = Pattern("page_token", 1024, r"[A-Za-z0-9_-]+", "a next_page_token from an earlier response")
CURSOR = Cursor()
VERSION = Integer("version", 0, 2**63 - 1)
# Sends per rolling 24 hours set for a mailbox; 0 clears it (outbound's SetSendLimit).
DAILY_LIMIT = Integer("daily_limit", 0, 10_000)
OAUTH_STATE = Pattern("oauth_state", 256, r"[A-Za-z0-9_.~-]+", "the state Google redirected with")
OAUTH_VALUE = Text("oauth_value", 2048)
SHORT_TEXT = Text("short_text", 256)
TOKEN_TEXT = Text("token_text", 8192)
FILENAME = Text("filename", 255)
CONTENT_TYPE = Text("content_type", 255)
PUSH_DATA = Binary("push_data", 64 * 1024)
CONTENT = Binary("content", None)

KINDS = (
    ID,
    REQUEST_ID,
    EMAIL,
    NAME,
    HEADER_TEXT,
    BODY,
    MESSAGE_ID,
    URL,
    PAGE_SIZE,
    PAGE_TOKEN,
    CURSOR,
    VERSION,
    DAILY_LIMIT,
    OAUTH_STATE,
    OAUTH_VALUE,
    SHORT_TEXT,
    TOKEN_TEXT,
    FILENAME,
    CONTENT_TYPE,
    PUSH_DATA,
    CONTENT,
)


def _one(kind: FieldKind) -> FieldRule:
    return FieldRule(kind)


def _many(kind: FieldKind | None, max_items: int) -> FieldRule:
    """A repeated field: at most `max_items`, each of `kind` (None for messages, whose fields have rules)."""
    return FieldRule(kind, max_items=max_items)


_V1 = "mailsync.v1."

_TABLE: dict[str, FieldRule] = {
    # auth.proto ------------------------------------------------------------------------------------------------
    "UpsertUserRequest.request_id": _one(REQUEST_ID),
    "User.user_id": _one(ID),
    "User.crm_email": _one(EMAIL),
    "User.display_name": _one(NAME),
    "User.location_ids": _many(ID, 100),
    "User.version": _one(VERSION),
    "ListUsersRequest.location_id": _one(ID),
    "ListUsersRequest.email": _one(EMAIL),
    "ListUsersRequest.page_size": _one(PAGE_SIZE),
    "ListUsersRequest.page_token": _one(PAGE_TOKEN),
    "BeginConnectRequest.request_id": _one(REQUEST_ID),
    "BeginConnectRequest.user_id": _one(ID),
    "BeginConnectRequest.location_id": _one(ID),
    "BeginConnectRequest.return_url": _one(URL),
    "CompleteConnectRequest.request_id": _one(REQUEST_ID),
    "CompleteConnectRequest.state": _one(OAUTH_STATE),
    "CompleteConnectRequest.code": _one(OAUTH_VALUE),
    "CompleteConnectRequest.error": _one(SHORT_TEXT),
    "CompleteConnectRequest.scope": _one(OAUTH_VALUE),
    "GetConnectionRequest.location_id": _one(ID),
    "GetConnectionRequest.connection_id": _one(ID),
    "GetConnectionRequest.user_id": _one(ID),
    "ListConnectionsRequest.location_id": _one(ID),
    "ListConnectionsRequest.user_id": _one(ID),
    "ListConnectionsRequest.page_size": _one(PAGE_SIZE),
    "ListConnectionsRequest.page_token": _one(PAGE_TOKEN),
    "UpdateEmailRequest.request_id": _one(REQUEST_ID),
    "UpdateEmailRequest.user_id": _one(ID),
    "UpdateEmailRequest.location_id": _one(ID),
    "UpdateEmailRequest.return_url": _one(URL),
    "DisconnectRequest.request_id": _one(REQUEST_ID),
    "DisconnectRequest.location_id": _one(ID),
    "DisconnectRequest.user_id": _one(ID),
    "DisconnectRequest.connection_id": _one(ID),
    "GetAccessTokenRequest.mailbox_id": _one(ID),
    "GetAccessTokenRequest.rejected_access_token": _one(TOKEN_TEXT),
    "GetMailboxRequest.mailbox_id": _one(ID),
    "GetMailboxRequest.email": _one(EMAIL),
    "RenewWatchesRequest.request_id": _one(REQUEST_ID),
    "RenewWatchesRequest.mailbox_ids": _many(ID, 1000),
    # ingest.proto ----------------------------------------------------------------------------------------------
    "HandlePushRequest.subscription": _one(SHORT_TEXT),
    "HandlePushRequest.oidc_token": _one(TOKEN_TEXT),
    "PubSubMessage.data": _one(PUSH_DATA),
    "PubSubMessage.message_id": _one(SHORT_TEXT),
    "PubSubMessage.attributes": FieldRule(OAUTH_VALUE, max_items=64, key_kind=SHORT_TEXT),
    "SubmitBccDropRequest.request_id": _one(REQUEST_ID),
    "SubmitBccDropRequest.raw_message": _one(CONTENT),
    "SubmitBccDropRequest.envelope_recipient": _one(EMAIL),
    "SubmitBccDropRequest.envelope_sender": _one(EMAIL),
    "GetBccAddressRequest.location_id": _one(ID),
    "RotateBccAddressRequest.request_id": _one(REQUEST_ID),
    "RotateBccAddressRequest.location_id": _one(ID),
    "ResyncMailboxRequest.request_id": _one(REQUEST_ID),
    "ResyncMailboxRequest.location_id": _one(ID),
    "ResyncMailboxRequest.mailbox_id": _one(ID),
    "GetSyncStatusRequest.location_id": _one(ID),
    "GetSyncStatusRequest.mailbox_id": _one(ID),
    "FetchAttachmentRequest.mailbox_id": _one(ID),
    "FetchAttachmentRequest.gmail_message_id": _one(ID),
    "FetchAttachmentRequest.drop_id": _one(ID),
    "FetchAttachmentRequest.attachment_id": _one(ID),
    # outbound.proto --------------------------------------------------------------------------------------------
    "UploadAttachmentRequest.Metadata.request_id": _one(REQUEST_ID),
    "UploadAttachmentRequest.Metadata.location_id": _one(ID),
    "UploadAttachmentRequest.Metadata.filename": _one(FILENAME),
    "UploadAttachmentRequest.Metadata.content_type": _one(CONTENT_TYPE),
    "UploadAttachmentRequest.chunk": _one(CONTENT),
    "SendEmailRequest.request_id": _one(REQUEST_ID),
    "SendEmailRequest.location_id": _one(ID),
    "SendEmailRequest.user_id": _one(ID),
    "SendEmailRequest.to": _many(None, 1000),
    "SendEmailRequest.cc": _many(None, 1000),
    "SendEmailRequest.bcc": _many(None, 1000),
    "EmailAddress.email": _one(EMAIL),
    "EmailAddress.display_name": _one(HEADER_TEXT),
    "SendEmailRequest.subject": _one(HEADER_TEXT),
    "SendEmailRequest.text_body": _one(BODY),
    "SendEmailRequest.html_body": _one(BODY),
    "SendEmailRequest.attachment_upload_ids": _many(ID, 100),
    "SendEmailRequest.conversation_id": _one(ID),
    "SendEmailRequest.thread_id": _one(ID),
    "SendEmailRequest.reply_gmail_thread_id": _one(ID),
    "SendEmailRequest.reply_to_rfc_message_id": _one(MESSAGE_ID),
    "SendEmailRequest.reply_references": _many(MESSAGE_ID, 100),
    "GetSendRequest.location_id": _one(ID),
    "GetSendRequest.send_id": _one(ID),
    "GetQuotaRequest.location_id": _one(ID),
    "GetQuotaRequest.user_id": _one(ID),
    "SetSendLimitRequest.location_id": _one(ID),
    "SetSendLimitRequest.user_id": _one(ID),
    "SetSendLimitRequest.daily_limit": _one(DAILY_LIMIT),
    "FetchSentAttachmentRequest.location_id": _one(ID),
    "FetchSentAttachmentRequest.upload_id": _one(ID),
    # threading.proto -------------------------------------------------------------------------------------------
    "UpsertContactRequest.request_id": _one(REQUEST_ID),
    "Contact.contact_id": _one(ID),
    "Contact.location_id": _one(ID),
    "Contact.display_name": _one(NAME),
    "Contact.emails": _many(None, 100),
    "ContactEmail.email": _one(EMAIL),
    "Contact.assigned_user_id": _one(ID),
    "Contact.version": _one(VERSION),
    "DeleteContactRequest.request_id": _one(REQUEST_ID),
    "DeleteContactRequest.location_id": _one(ID),
    "DeleteContactRequest.contact_id": _one(ID),
    "DeleteContactRequest.version": _one(VERSION),
    "ListContactsRequest.location_id": _one(ID),
    "ListContactsRequest.email": _one(EMAIL),
    "ListContactsRequest.page_size": _one(PAGE_SIZE),
    "ListContactsRequest.page_token": _one(PAGE_TOKEN),
    "ListConversationsRequest.location_id": _one(ID),
    "ListConversationsRequest.contact_id": _one(ID),
    "ListConversationsRequest.page_size": _one(PAGE_SIZE),
    "ListConversationsRequest.page_token": _one(PAGE_TOKEN),
    "GetConversationRequest.location_id": _one(ID),
    "GetConversationRequest.conversation_id": _one(ID),
    "ListMessagesRequest.location_id": _one(ID),
    "ListMessagesRequest.conversation_id": _one(ID),
    "ListMessagesRequest.thread_id": _one(ID),
    "ListMessagesRequest.page_size": _one(PAGE_SIZE),
    "ListMessagesRequest.page_token": _one(PAGE_TOKEN),
    "GetMessageRequest.location_id": _one(ID),
    "GetMessageRequest.message_id": _one(ID),
    "GetAttachmentRequest.location_id": _one(ID),
    "GetAttachmentRequest.message_id": _one(ID),
    "GetAttachmentRequest.attachment_id": _one(ID),
    "WatchMessagesRequest.location_id": _one(ID),
    "WatchMessagesRequest.after_cursor": _one(CURSOR),
    "ExplainMessageRequest.location_id": _one(ID),
    "ExplainMessageRequest.rfc_message_id": _one(MESSAGE_ID),
    "ExplainMessageRequest.mailbox_id": _one(ID),
    "ExplainMessageRequest.gmail_message_id": _one(ID),
    "ListRefusedDropsRequest.location_id": _one(ID),
    "ListRefusedDropsRequest.page_size": _one(PAGE_SIZE),
    "ListRefusedDropsRequest.page_token": _one(PAGE_TOKEN),
}

FIELD_RULES = MappingProxyType({f"{_V1}{name}": rule for name, rule in _TABLE.items()})
