"""Conformance: Gmail's thread-joining rule for sends and inbound mail, and history.list with paging and expiry."""

from __future__ import annotations

import base64
import itertools
from email.message import EmailMessage

import pytest
from googleapiclient.errors import HttpError

from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
OUTSIDE = "carol@outside.test"


def encoded(subject: str, in_reply_to: str | None = None, references: str | None = None) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, OUTSIDE, subject
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    msg.set_content("reply body")
    return base64.urlsafe_b64encode(msg.as_bytes()).decode()


@pytest.fixture
def alice_with_thread(gmail_sandbox: GmailSandbox):
    gmail_sandbox.create_mailbox(ALICE)
    original = gmail_sandbox.admin.deliver(
        ALICE, sender=OUTSIDE, to=[ALICE], subject="Quote 42", body="hi", message_id="<q42@outside.test>"
    )
    return gmail_sandbox.gmail(ALICE), original


@pytest.mark.parametrize(
    ("case", "with_thread_id", "subject", "references", "joins"),
    [
        ("all three conditions", True, "Re: Quote 42", "<q42@outside.test>", True),
        ("threadId missing", False, "Re: Quote 42", "<q42@outside.test>", False),
        ("references missing", True, "Re: Quote 42", None, False),
        ("subject differs", True, "Something else", "<q42@outside.test>", False),
    ],
)
def test_reply_joins_thread_only_when_all_three_conditions_hold(
    alice_with_thread, case, with_thread_id, subject, references, joins
) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/threads: threadId, References/In-Reply-To, Subject."""
    alice, original = alice_with_thread
    body = {"raw": encoded(subject, in_reply_to=references, references=references)}
    if with_thread_id:
        body["threadId"] = original["threadId"]
    sent = alice.users().messages().send(userId="me", body=body).execute()
    assert (sent["threadId"] == original["threadId"]) is joins, case
    thread = alice.users().threads().get(userId="me", id=original["threadId"]).execute()
    assert len(thread["messages"]) == (2 if joins else 1)


def test_inbound_reply_threads_by_references_and_subject(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/threads: inbound mail joins by headers + subject."""
    gmail_sandbox.create_mailbox(ALICE)
    first = gmail_sandbox.admin.deliver(
        ALICE, sender=OUTSIDE, to=[ALICE], subject="Plan", body="1", message_id="<p1@outside.test>"
    )
    reply = gmail_sandbox.admin.deliver(
        ALICE,
        sender=OUTSIDE,
        to=[ALICE],
        subject="RE: Plan",
        body="2",
        in_reply_to="<p1@outside.test>",
        references="<p1@outside.test>",
    )
    other = gmail_sandbox.admin.deliver(
        ALICE, sender=OUTSIDE, to=[ALICE], subject="New topic", body="3", references="<p1@outside.test>"
    )
    assert reply["threadId"] == first["threadId"]
    assert other["threadId"] != first["threadId"]


def test_history_records_changes_with_gaps_and_pages(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.history/list: types, paging."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE, scopes=["https://mail.google.com/"])  # delete needs the full scope
    start = int(gmail.users().getProfile(userId="me").execute()["historyId"])
    ids = [
        gmail_sandbox.admin.deliver(ALICE, sender=OUTSIDE, to=[ALICE], subject=f"m{i}", body="b")["id"]
        for i in range(5)
    ]
    gmail.users().messages().modify(userId="me", id=ids[0], body={"removeLabelIds": ["UNREAD"]}).execute()
    gmail.users().messages().delete(userId="me", id=ids[1]).execute()

    records, token = [], None
    while True:
        page = (
            gmail.users()
            .history()
            .list(userId="me", startHistoryId=start, maxResults=2, pageToken=token)
            .execute()
        )
        records += page["history"]
        token = page.get("nextPageToken")
        if not token:
            break
    assert len(records) == 7
    history_ids = [int(r["id"]) for r in records]
    assert history_ids == sorted(history_ids) and history_ids[0] > start
    assert any(b - a > 1 for a, b in itertools.pairwise(history_ids))
    assert records[0]["messagesAdded"][0]["message"]["labelIds"]
    assert records[5]["labelsRemoved"][0]["labelIds"] == ["UNREAD"]
    assert records[6]["messagesDeleted"][0]["message"]["id"] == ids[1]
    added_only = (
        gmail.users()
        .history()
        .list(userId="me", startHistoryId=start, historyTypes=["messageDeleted"])
        .execute()
    )
    assert [r["messagesDeleted"][0]["message"]["id"] for r in added_only["history"]] == [ids[1]]
    assert added_only["historyId"] == gmail.users().getProfile(userId="me").execute()["historyId"]


def test_history_before_the_kept_floor_is_404(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/sync: out-of-date startHistoryId gives 404."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    start = int(gmail.users().getProfile(userId="me").execute()["historyId"])
    delivered = gmail_sandbox.admin.deliver(ALICE, sender=OUTSIDE, to=[ALICE], subject="x", body="b")
    assert gmail.users().history().list(userId="me", startHistoryId=start).execute()["history"]
    gmail_sandbox.admin.expire_history(ALICE, before=int(delivered["historyId"]))
    with pytest.raises(HttpError) as expired:
        gmail.users().history().list(userId="me", startHistoryId=start).execute()
    assert expired.value.resp.status == 404
    assert expired.value.error_details[0]["reason"] == "notFound"
    still_valid = (
        gmail.users().history().list(userId="me", startHistoryId=int(delivered["historyId"])).execute()
    )
    assert "history" not in still_valid
