"""The sandbox as its own process (`python -m sandbox`), its state file across a restart, and insert by upload."""

from __future__ import annotations

import io
from email.message import EmailMessage

from googleapiclient.http import MediaIoBaseUpload

from sandbox.client import GMAIL_MODIFY, AdminClient, build_gmail_service, credentials_for
from tests.fixtures.sandbox import GmailSandbox, SandboxProcess

ALICE = "alice@example.com"


def test_state_file_keeps_mailboxes_messages_and_grants_across_restart(tmp_path) -> None:
    """Sandbox-specific: --state-file lets a demo survive a restart (no Google document covers this)."""
    state_file = str(tmp_path / "sandbox.json")
    first = SandboxProcess(state_file=state_file).start()
    try:
        admin = AdminClient(first.url)
        admin.create_mailbox(ALICE)
        delivered = admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="kept", body="b")
        tokens = admin.grant(ALICE, [GMAIL_MODIFY])
    finally:
        first.stop()
    second = SandboxProcess(port=first.port, state_file=state_file).start()
    try:
        credentials = credentials_for(second.url, tokens, with_access_token=False)
        gmail = build_gmail_service(second.url, credentials)
        got = (
            gmail.users()
            .messages()
            .get(userId="me", id=delivered["id"], format="metadata", metadataHeaders=["Subject"])
            .execute()
        )
        assert got["payload"]["headers"] == [{"name": "Subject", "value": "kept"}]
        assert got["threadId"] == delivered["threadId"]
    finally:
        second.stop()


def test_insert_by_media_upload_does_not_send(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages/insert (upload)."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE, scopes=["https://mail.google.com/"])
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@outside.test", ALICE, "Imported"
    msg.set_content("old mail")
    media = MediaIoBaseUpload(io.BytesIO(msg.as_bytes()), mimetype="message/rfc822")
    inserted = (
        gmail.users().messages().insert(userId="me", body={"labelIds": ["INBOX"]}, media_body=media).execute()
    )
    assert inserted["labelIds"] == ["INBOX"]
    assert gmail_sandbox.admin.outbox() == []
    assert gmail.users().messages().list(userId="me").execute()["messages"][0]["id"] == inserted["id"]
