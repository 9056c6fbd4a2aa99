"""The user's own actions in Gmail (read, trash, delete, send from the UI), driven by the admin API and seen by
an API client as history records, as the sync guide describes."""

from __future__ import annotations

from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
BOB = "bob@example.com"


def test_read_trash_and_delete_in_gmail_show_up_in_history(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/sync: labelRemoved, labelAdded, messageDeleted."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    first = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="a", body="b")
    second = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="c", body="d")
    start = gmail.users().getProfile(userId="me").execute()["historyId"]
    gmail_sandbox.admin.user_modify(ALICE, first["id"], remove=["UNREAD"])
    gmail_sandbox.admin.user_trash(ALICE, first["id"])
    gmail_sandbox.admin.user_delete(ALICE, second["id"])
    history = gmail.users().history().list(userId="me", startHistoryId=start).execute()["history"]
    assert [next(k for k in h if k not in ("id", "messages")) for h in history] == [
        "labelsRemoved",
        "labelsAdded",
        "messagesDeleted",
    ]
    assert history[1]["labelsAdded"][0]["labelIds"] == ["TRASH"]
    assert {m["id"] for m in gmail_sandbox.admin.messages(ALICE)} == {first["id"]}


def test_reply_sent_from_the_gmail_ui_threads_and_delivers(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/threads: a reply in the same conversation."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    original = gmail_sandbox.admin.deliver(
        ALICE, sender=BOB, to=[ALICE], subject="Offer", body="b", message_id="<offer@example.com>"
    )
    reply = gmail_sandbox.admin.user_send(
        ALICE,
        thread_id=original["threadId"],
        to=[BOB],
        subject="Re: Offer",
        body="yes",
        in_reply_to="<offer@example.com>",
        references="<offer@example.com>",
        bcc=["boss@outside.test"],
    )
    assert reply["threadId"] == original["threadId"] and reply["labelIds"] == ["SENT"]
    [received] = gmail_sandbox.admin.messages(BOB)
    assert received["subject"] == "Re: Offer" and "INBOX" in received["labelIds"]
    [outside] = gmail_sandbox.admin.outbox()
    assert outside["recipients"] == ["boss@outside.test"]
