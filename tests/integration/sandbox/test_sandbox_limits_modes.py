"""Conformance: sending limit, injected faults, quota accounting and enforcement, and the two switchable
behaviours (Message-ID replacement, SENT copy in history before the send answer)."""

from __future__ import annotations

import base64
import re
import time
from email.message import EmailMessage

import pytest
from googleapiclient.errors import HttpError

from tests.fixtures.sandbox import GmailSandbox, PushReceiver

ALICE = "alice@example.com"
BOB = "bob@example.com"
TOPIC = "projects/sandbox-project/topics/gmail"


def raw_with_id(message_id: str = "<client-chosen@crm.test>", to: str = BOB) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = ALICE, to, "Hello", message_id
    msg.set_content("body")
    return base64.urlsafe_b64encode(msg.as_bytes()).decode()


def message_id_of(gmail, message_id: str) -> str:
    got = (
        gmail.users()
        .messages()
        .get(userId="me", id=message_id, format="metadata", metadataHeaders=["Message-ID"])
        .execute()
    )
    return got["payload"]["headers"][0]["value"]


def test_daily_send_limit_returns_gmails_mail_sending_error(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 429 "(Mail sending)"."""
    gmail_sandbox.create_mailbox(ALICE, daily_send_limit=2)
    gmail = gmail_sandbox.gmail(ALICE)
    for _ in range(2):
        gmail.users().messages().send(userId="me", body={"raw": raw_with_id(to="x@outside.test")}).execute()
    with pytest.raises(HttpError) as limited:
        gmail.users().messages().send(userId="me", body={"raw": raw_with_id(to="x@outside.test")}).execute()
    assert limited.value.resp.status == 429
    assert limited.value.error_details[0]["reason"] == "rateLimitExceeded"
    assert re.fullmatch(
        r"User-rate limit exceeded\.  Retry after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
        r"\(Mail sending\)",
        limited.value.reason,
    )
    gmail_sandbox.admin.advance_clock(86_401)
    assert (
        gmail.users().messages().send(userId="me", body={"raw": raw_with_id(to="x@outside.test")}).execute()
    )


def test_workspace_mailbox_defaults_to_2000_and_consumer_to_500(gmail_sandbox: GmailSandbox) -> None:
    """https://support.google.com/a/answer/166852: 2,000 messages a day for Workspace."""
    assert gmail_sandbox.create_mailbox("w@corp.test", workspace=True)["daily_send_limit"] == 2000
    assert gmail_sandbox.create_mailbox("c@gmail.test")["daily_send_limit"] == 500


def test_injected_429s_reach_the_client_and_its_retries(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 429 rateLimitExceeded."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    gmail_sandbox.admin.set_faults("gmail.users.getProfile", next_errors=["rateLimitExceeded"] * 3)
    with pytest.raises(HttpError) as limited:
        gmail.users().getProfile(userId="me").execute()
    assert limited.value.resp.status == 429
    request = gmail.users().getProfile(userId="me")
    request._sleep = lambda seconds: None
    assert request.execute(num_retries=2)["emailAddress"] == ALICE
    assert gmail_sandbox.admin.request("GET", "/admin/faults")["injected"] == {"rateLimitExceeded": 3}


def test_fault_shares_and_backend_errors(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 500 backendError, 403 rate."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    gmail_sandbox.admin.set_faults("*", backend_error_share=1.0)
    with pytest.raises(HttpError) as failed:
        gmail.users().labels().list(userId="me").execute()
    assert failed.value.resp.status == 500 and failed.value.error_details[0]["reason"] == "backendError"
    gmail_sandbox.admin.clear_faults()
    gmail_sandbox.admin.set_faults("gmail.users.labels.list", user_rate_limit_share=1.0)
    with pytest.raises(HttpError) as limited:
        gmail.users().labels().list(userId="me").execute()
    assert limited.value.resp.status == 403
    assert limited.value.error_details[0]["reason"] == "userRateLimitExceeded"
    assert gmail.users().getProfile(userId="me").execute()["emailAddress"] == ALICE


def test_concurrency_cap_refuses_excess_parallel_calls(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: "Too many concurrent requests"."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    gmail_sandbox.admin.set_faults("*", concurrency_cap=5, latency_ms=100)
    answers = []
    batch = gmail.new_batch_http_request(callback=lambda rid, resp, exc: answers.append(exc))
    for _ in range(8):
        batch.add(gmail.users().getProfile(userId="me"))
    batch.execute()
    refused = [a for a in answers if a is not None]
    assert len(refused) == 3
    assert all(a.resp.status == 429 and "concurrent" in a.reason for a in refused)


def test_quota_units_are_counted_per_method_and_user(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/quota: per-method costs, both tables."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    delivered = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="q", body="b")
    gmail.users().messages().get(userId="me", id=delivered["id"]).execute()
    gmail.users().messages().send(userId="me", body={"raw": raw_with_id(to="y@outside.test")}).execute()
    legacy = gmail_sandbox.admin.quota()["users"][ALICE]
    assert legacy["methods"]["gmail.users.messages.get"] == {"units": 5, "calls": 1}
    assert legacy["methods"]["gmail.users.messages.send"] == {"units": 100, "calls": 1}
    gmail_sandbox.admin.request("DELETE", "/admin/quota")
    gmail_sandbox.admin.settings(quota_table="2026")
    gmail.users().messages().get(userId="me", id=delivered["id"]).execute()
    assert gmail_sandbox.admin.quota()["users"][ALICE]["methods"]["gmail.users.messages.get"]["units"] == 20


def test_enforced_per_user_rate_refuses_calls_over_the_window(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/quota: per-user rate limit."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    gmail_sandbox.admin.settings(enforce_quota=True, quota_units_per_window=12, quota_window_seconds=60)
    for _ in range(2):
        gmail.users().messages().list(userId="me").execute()
    with pytest.raises(HttpError) as limited:
        gmail.users().messages().list(userId="me").execute()
    assert limited.value.resp.status == 429
    assert gmail_sandbox.admin.quota()["users"][ALICE]["rejected_calls"] == 1
    gmail_sandbox.admin.settings(enforce_quota=False)
    assert gmail.users().messages().list(userId="me").execute()["resultSizeEstimate"] == 0


@pytest.mark.parametrize("replace", [True, False])
def test_message_id_replacement_is_switchable(gmail_sandbox: GmailSandbox, replace: bool) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/sending: Gmail may set its own Message-ID."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    gmail_sandbox.admin.settings(replace_message_id=replace)
    alice = gmail_sandbox.gmail(ALICE)
    sent = alice.users().messages().send(userId="me", body={"raw": raw_with_id()}).execute()
    kept = message_id_of(alice, sent["id"]) == "<client-chosen@crm.test>"
    assert kept is not replace
    bob = gmail_sandbox.gmail(BOB)
    [received] = bob.users().messages().list(userId="me").execute()["messages"]
    assert message_id_of(bob, received["id"]) == message_id_of(alice, sent["id"])
    found = (
        alice.users()
        .messages()
        .list(userId="me", q=f"rfc822msgid:{message_id_of(alice, sent['id'])}")
        .execute()
    )
    assert [m["id"] for m in found["messages"]] == [sent["id"]]


def test_sent_copy_is_in_history_and_pushed_before_send_returns(
    gmail_sandbox: GmailSandbox, push_receiver: PushReceiver
) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push: the echo of our own send (echo-first)."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.set_push(push_endpoint=push_receiver.url)
    # No pacing: a send within the pacing interval of the watch's own push is answered at once by design (see
    # PushService.wait_pushed), and a generous wait so a loaded machine's slow delivery is still awaited.
    gmail_sandbox.admin.settings(push_min_interval_s=0, echo_first_push_wait_s=60)
    alice = gmail_sandbox.gmail(ALICE)
    watch = alice.users().watch(userId="me", body={"topicName": TOPIC}).execute()
    push_receiver.wait_for(1)
    sent = (
        alice.users().messages().send(userId="me", body={"raw": raw_with_id(to="x@outside.test")}).execute()
    )
    assert len(push_receiver.received) == 2
    history = alice.users().history().list(userId="me", startHistoryId=watch["historyId"]).execute()
    assert [h["messagesAdded"][0]["message"]["id"] for h in history["history"]] == [sent["id"]]


def test_sent_copy_after_response_mode_shows_up_later(gmail_sandbox: GmailSandbox) -> None:
    """Negative control of the echo-first mode: with after_response the send answers before history has it."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.settings(sent_copy_timing="after_response", sent_copy_delay_ms=300)
    alice = gmail_sandbox.gmail(ALICE)
    start = alice.users().getProfile(userId="me").execute()["historyId"]
    sent = (
        alice.users().messages().send(userId="me", body={"raw": raw_with_id(to="x@outside.test")}).execute()
    )
    assert "history" not in alice.users().history().list(userId="me", startHistoryId=start).execute()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        history = alice.users().history().list(userId="me", startHistoryId=start).execute()
        if "history" in history:
            break
        time.sleep(0.05)
    assert history["history"][0]["messagesAdded"][0]["message"]["id"] == sent["id"]
