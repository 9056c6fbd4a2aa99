"""Conformance: messages, threads, labels and profile through the unmodified google-api-python-client."""

from __future__ import annotations

import base64
from email.message import EmailMessage

import pytest
from googleapiclient.errors import HttpError

from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
BOB = "bob@example.com"


def raw_of(sender: str, to: str, subject: str, body: str = "hello", **headers: str) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return base64.urlsafe_b64encode(msg.as_bytes()).decode()


@pytest.fixture
def pair(gmail_sandbox: GmailSandbox):
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    return gmail_sandbox.gmail(ALICE), gmail_sandbox.gmail(BOB)


def test_send_lands_in_senders_sent_and_recipients_inbox(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/sending: send a raw RFC 2822 message."""
    alice, bob = pair
    sent = alice.users().messages().send(userId="me", body={"raw": raw_of(ALICE, BOB, "Hi Bob")}).execute()
    assert sent["labelIds"] == ["SENT"]
    inbox = bob.users().messages().list(userId="me", q="in:inbox").execute()
    assert len(inbox["messages"]) == 1
    received = bob.users().messages().get(userId="me", id=inbox["messages"][0]["id"], format="full").execute()
    headers = {h["name"]: h["value"] for h in received["payload"]["headers"]}
    assert headers["Subject"] == "Hi Bob"
    assert "INBOX" in received["labelIds"] and "UNREAD" in received["labelIds"]
    assert isinstance(received["internalDate"], str)
    assert gmail_sandbox.admin.outbox() == []


def test_mail_to_outside_addresses_goes_to_the_outbox(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/sending: recipients of To, Cc and Bcc."""
    alice, _ = pair
    alice.users().messages().send(
        userId="me", body={"raw": raw_of(ALICE, "carol@outside.test", "Out", Bcc="dave@outside.test")}
    ).execute()
    [entry] = gmail_sandbox.admin.outbox()
    assert entry["recipients"] == ["carol@outside.test", "dave@outside.test"]
    assert "Bcc:" not in entry["raw_text"]
    assert gmail_sandbox.admin.outbox(recipient="nobody@outside.test") == []


def test_outbox_filter_matches_plus_addresses(pair, gmail_sandbox: GmailSandbox) -> None:
    """A recipient with a '+' tag (as BCC-drop addresses have) is found by the outbox filter."""
    alice, _ = pair
    alice.users().messages().send(
        userId="me", body={"raw": raw_of(ALICE, "bcc+tok3n@drop.test", "Drop")}
    ).execute()
    assert [e["recipients"] for e in gmail_sandbox.admin.outbox(recipient="bcc+tok3n@drop.test")] == [
        ["bcc+tok3n@drop.test"]
    ]


def test_message_formats_raw_padded_full_unpadded_metadata_filtered(
    pair, gmail_sandbox: GmailSandbox
) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages/get: formats."""
    _, bob = pair
    delivered = gmail_sandbox.admin.deliver(
        BOB, sender="x@outside.test", to=[BOB], subject="Formats", body="a" * 10
    )
    get = bob.users().messages().get
    raw = get(userId="me", id=delivered["id"], format="raw").execute()["raw"]
    assert len(raw) % 4 == 0 and "payload" not in get(userId="me", id=delivered["id"], format="raw").execute()
    assert b"Subject: Formats" in base64.urlsafe_b64decode(raw)
    full = get(userId="me", id=delivered["id"], format="full").execute()
    data = full["payload"]["body"]["data"]
    assert "=" not in data and base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).startswith(
        b"aaaaaaaaaa"
    )
    metadata = get(userId="me", id=delivered["id"], format="metadata", metadataHeaders=["Subject"]).execute()
    assert metadata["payload"]["headers"] == [{"name": "Subject", "value": "Formats"}]
    minimal = get(userId="me", id=delivered["id"], format="minimal").execute()
    assert "payload" not in minimal and minimal["labelIds"]


def test_attachment_is_served_by_attachment_id(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages.attachments/get."""
    _, bob = pair
    content = bytes(range(256)) * 40
    delivered = gmail_sandbox.admin.deliver(
        BOB,
        sender="x@outside.test",
        to=[BOB],
        subject="File",
        body="see file",
        attachments=[
            {
                "filename": "data.bin",
                "content_type": "application/octet-stream",
                "data_base64": base64.b64encode(content).decode(),
            }
        ],
    )
    full = bob.users().messages().get(userId="me", id=delivered["id"]).execute()
    [part] = [p for p in full["payload"]["parts"] if p["filename"] == "data.bin"]
    assert "data" not in part["body"] and part["body"]["size"] == len(content)
    fetched = (
        bob.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=delivered["id"], id=part["body"]["attachmentId"])
        .execute()
    )
    assert base64.urlsafe_b64decode(fetched["data"] + "=" * (-len(fetched["data"]) % 4)) == content


def test_list_pages_and_filters_by_query(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/filtering: q, labelIds, paging."""
    _, bob = pair
    for index in range(5):
        gmail_sandbox.admin.deliver(
            BOB,
            sender="x@outside.test",
            to=[BOB],
            subject=f"n{index}",
            body="b",
            internal_date_ms=1_700_000_000_000 + index * 86_400_000,
        )
    listing = bob.users().messages().list(userId="me", maxResults=2).execute()
    assert len(listing["messages"]) == 2 and listing["nextPageToken"]
    rest = (
        bob.users().messages().list(userId="me", maxResults=2, pageToken=listing["nextPageToken"]).execute()
    )
    assert not {m["id"] for m in rest["messages"]} & {m["id"] for m in listing["messages"]}
    after = bob.users().messages().list(userId="me", q=f"after:{1_700_000_000 + 2 * 86_400}").execute()
    assert len(after["messages"]) == 3
    before = bob.users().messages().list(userId="me", q=f"before:{1_700_000_000 + 86_400} in:inbox").execute()
    assert len(before["messages"]) == 1
    none = bob.users().messages().list(userId="me", labelIds=["SENT"]).execute()
    assert none == {"resultSizeEstimate": 0}


def test_modify_and_trash_change_labels(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages/modify and /trash."""
    _, bob = pair
    delivered = gmail_sandbox.admin.deliver(BOB, sender="x@outside.test", to=[BOB], subject="L", body="b")
    label = bob.users().labels().create(userId="me", body={"name": "CRM"}).execute()
    changed = (
        bob.users()
        .messages()
        .modify(
            userId="me", id=delivered["id"], body={"addLabelIds": [label["id"]], "removeLabelIds": ["UNREAD"]}
        )
        .execute()
    )
    assert label["id"] in changed["labelIds"] and "UNREAD" not in changed["labelIds"]
    trashed = bob.users().messages().trash(userId="me", id=delivered["id"]).execute()
    assert "TRASH" in trashed["labelIds"]
    assert bob.users().messages().list(userId="me").execute()["resultSizeEstimate"] == 0
    with pytest.raises(HttpError) as refused:
        bob.users().messages().modify(
            userId="me", id=delivered["id"], body={"addLabelIds": ["SENT"]}
        ).execute()
    assert refused.value.resp.status == 400


def test_profile_and_labels(pair) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users/getProfile and labels.list."""
    alice, _ = pair
    profile = alice.users().getProfile(userId=ALICE).execute()
    assert profile["emailAddress"] == ALICE and isinstance(profile["historyId"], str)
    names = {label["id"] for label in alice.users().labels().list(userId="me").execute()["labels"]}
    assert {"INBOX", "SENT", "TRASH", "UNREAD"} <= names


def test_unknown_message_is_not_found_in_google_shape(pair) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 404 notFound."""
    alice, _ = pair
    with pytest.raises(HttpError) as missing:
        alice.users().messages().get(userId="me", id="deadbeef").execute()
    assert missing.value.resp.status == 404
    assert missing.value.error_details == [
        {"message": "Requested entity was not found.", "domain": "global", "reason": "notFound"}
    ]


def test_thread_modify_and_trash_touch_every_current_message(pair, gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.threads/modify and /trash."""
    _, bob = pair
    first = gmail_sandbox.admin.deliver(
        BOB, sender="x@outside.test", to=[BOB], subject="T", body="1", message_id="<t1@outside.test>"
    )
    gmail_sandbox.admin.deliver(
        BOB, sender="x@outside.test", to=[BOB], subject="Re: T", body="2", references="<t1@outside.test>"
    )
    modified = (
        bob.users()
        .threads()
        .modify(userId="me", id=first["threadId"], body={"removeLabelIds": ["UNREAD"]})
        .execute()
    )
    assert all("UNREAD" not in m["labelIds"] for m in modified["messages"]) and len(modified["messages"]) == 2
    trashed = bob.users().threads().trash(userId="me", id=first["threadId"]).execute()
    assert all("TRASH" in m["labelIds"] for m in trashed["messages"])
    later = gmail_sandbox.admin.deliver(
        BOB, sender="x@outside.test", to=[BOB], subject="Re: T", body="3", references="<t1@outside.test>"
    )
    assert later["threadId"] == first["threadId"] and "TRASH" not in later["labelIds"]


def test_ten_megabytes_of_angle_brackets_in_html_are_served(pair, gmail_sandbox: GmailSandbox) -> None:
    """Issue 16: any message within the size limit is served; 10 MB of `<` in an HTML body once hung the
    sandbox in its snippet code. The body comes back whole and the snippet is its text."""
    alice, _ = pair
    html = b"<" * (10 * 1024 * 1024) + b"<b>Hello</b> there"
    raw = (
        b"From: Carol <carol@outside.test>\r\nTo: alice@example.com\r\nSubject: brackets\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    )
    delivered = gmail_sandbox.admin.deliver(ALICE, raw=base64.urlsafe_b64encode(raw).decode())
    got = alice.users().messages().get(userId="me", id=delivered["id"], format="full").execute()
    assert got["snippet"] == "Hello there"
    body = got["payload"]["body"]
    assert body["size"] == len(html)
    fetched = (
        alice.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=delivered["id"], id=body["attachmentId"])
        .execute()
    )
    assert base64.urlsafe_b64decode(fetched["data"] + "==") == html


def test_copies_of_a_delivery_each_have_their_own_message_id(pair, gmail_sandbox: GmailSandbox) -> None:
    """The admin API's `copies` (benchmark seeding): one message built once, each copy a distinct Message-ID and
    otherwise the same bytes; the answer lists every copy's Gmail id, Message-ID and internal date."""
    alice, _ = pair
    answer = gmail_sandbox.admin.deliver(
        ALICE, sender="carol@outside.test", to=[ALICE], subject="Seeded", body="same body", copies=3
    )
    assert (
        len(set(answer["message_ids"])) == 3 and len(answer["ids"]) == len(answer["internal_dates_ms"]) == 3
    )
    raws = [
        base64.urlsafe_b64decode(
            alice.users().messages().get(userId="me", id=message_id, format="raw").execute()["raw"]
        )
        for message_id in answer["ids"]
    ]
    for raw, rfc_id in zip(raws, answer["message_ids"], strict=True):
        assert f"Message-ID: {rfc_id}".encode() in raw
        assert raw.replace(rfc_id.encode(), b"<id>") == raws[0].replace(
            answer["message_ids"][0].encode(), b"<id>"
        )
