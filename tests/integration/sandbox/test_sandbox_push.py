"""Conformance: users.watch / users.stop and the Pub/Sub push that follows, authenticated by an OIDC JWT."""

from __future__ import annotations

import base64
import json
import time

import google.auth.transport.requests
import pytest
from google.oauth2 import id_token
from googleapiclient.errors import HttpError

from tests.fixtures.sandbox import GmailSandbox, PushReceiver

ALICE = "alice@example.com"
TOPIC = "projects/sandbox-project/topics/gmail"
PUSH_ACCOUNT = "gmail-push@sandbox-project.iam.gserviceaccount.com"


@pytest.fixture
def watched(gmail_sandbox: GmailSandbox, push_receiver: PushReceiver):
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.set_topic(
        TOPIC,
        push_endpoint=push_receiver.url,
        audience="https://crm.test/push",
        service_account_email=PUSH_ACCOUNT,
    )
    # The tests here are about the push itself: changes over the rate wait rather than vanish, except in the test
    # of the drop.
    gmail_sandbox.admin.settings(push_min_interval_s=0.3, push_retry_initial_s=0.05, push_over_rate="delay")
    gmail = gmail_sandbox.gmail(ALICE)
    answer = (
        gmail.users()
        .watch(
            userId="me", body={"topicName": TOPIC, "labelIds": ["INBOX"], "labelFilterBehavior": "INCLUDE"}
        )
        .execute()
    )
    return gmail, answer


def decoded(push) -> dict:
    return json.loads(base64.b64decode(push.body["message"]["data"]))


def test_watch_answers_strings_and_pushes_immediately_with_verifiable_jwt(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push and
    https://docs.cloud.google.com/pubsub/docs/authenticate-push-subscriptions: envelope and OIDC token."""
    _, answer = watched
    assert isinstance(answer["historyId"], str) and isinstance(answer["expiration"], str)
    [push] = push_receiver.wait_for(1)
    assert decoded(push) == {"emailAddress": ALICE, "historyId": int(answer["historyId"])}
    message = push.body["message"]
    assert message["messageId"] == message["message_id"] and message["publishTime"] == message["publish_time"]
    assert push.body["subscription"].startswith("projects/")
    token = push.headers["Authorization"].removeprefix("Bearer ")
    claims = id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience="https://crm.test/push",
        certs_url=gmail_sandbox.url + "/oauth2/v1/certs",
    )
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email"] == PUSH_ACCOUNT and claims["email_verified"] is True
    assert {"exp", "iat", "sub", "azp"} <= set(claims)
    with pytest.raises(ValueError):
        id_token.verify_token(
            token,
            google.auth.transport.requests.Request(),
            audience="https://other.test",
            certs_url=gmail_sandbox.url + "/oauth2/v1/certs",
        )


def test_changes_above_the_rate_are_dropped_as_gmail_does(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push: "a maximum notification rate of 1 event/sec.
    Any user notifications above that rate will be dropped." Changes within the interval after the watch's own
    notification are never notified; the first change after the interval is."""
    [first] = push_receiver.wait_for(1)
    # A long interval, so the changes below are inside it however slow the machine.
    gmail_sandbox.admin.settings(push_min_interval_s=60, push_over_rate="drop")
    for index in range(2):
        gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject=f"s{index}", body="b")
    assert gmail_sandbox.admin.push_report()["dropped_over_rate"] == {ALICE: 2}
    gmail_sandbox.admin.settings(push_min_interval_s=0)
    later = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="after", body="b")
    pushes = push_receiver.wait_for(2)
    assert [decoded(push)["historyId"] for push in pushes] == [
        decoded(first)["historyId"],
        int(later["historyId"]),
    ]


def test_changes_are_coalesced_to_the_latest_history_id_when_delayed(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """push_over_rate "delay": changes within the interval wait and come as one notification of the latest."""
    push_receiver.wait_for(1)
    last = None
    for index in range(5):
        last = gmail_sandbox.admin.deliver(
            ALICE, sender="x@outside.test", to=[ALICE], subject=f"s{index}", body="b"
        )
    pushes = push_receiver.wait_for(2)
    while decoded(pushes[-1])["historyId"] < int(last["historyId"]):
        pushes = push_receiver.wait_for(len(pushes) + 1)
    assert len(pushes) <= 3
    assert decoded(pushes[-1])["historyId"] == int(last["historyId"])


def test_label_filter_include_skips_changes_outside_the_labels(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users/watch: labelIds filter."""
    push_receiver.wait_for(1)
    gmail_sandbox.admin.deliver(
        ALICE, sender="x@outside.test", to=[ALICE], subject="spam", body="b", label_ids=["SPAM"]
    )
    inbox = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="in", body="b")
    pushes = push_receiver.wait_for(2)
    assert [decoded(p)["historyId"] for p in pushes[1:]] == [int(inbox["historyId"])]


def test_non_2xx_answers_are_retried_with_backoff(gmail_sandbox: GmailSandbox, push_receiver) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push: unacknowledged pushes are retried."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.set_push(push_endpoint=push_receiver.url)
    gmail_sandbox.admin.settings(push_retry_initial_s=0.05)
    push_receiver.statuses = [500, 503]
    gmail_sandbox.gmail(ALICE).users().watch(userId="me", body={"topicName": TOPIC}).execute()
    pushes = push_receiver.wait_for(3)
    assert len({p.body["message"]["messageId"] for p in pushes}) == 1
    # The receiver has the third push before the sandbox has read its answer: wait for the sandbox to record it.
    deadline = time.monotonic() + 60
    while True:
        [delivery] = gmail_sandbox.admin.push_report()["deliveries"]
        if len(delivery["statuses"]) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delivery["statuses"] == [500, 503, 204] and delivery["acknowledged"] is True


def test_stop_ends_notifications(gmail_sandbox: GmailSandbox, push_receiver, watched) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users/stop."""
    gmail, _ = watched
    push_receiver.wait_for(1)
    gmail.users().stop(userId="me").execute()
    gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="after stop", body="b")
    assert len(push_receiver.wait_for(2, timeout=1.0)) == 1


@pytest.mark.parametrize(
    ("topic", "status"),
    [
        ("projects/other-project/topics/gmail", 400),
        ("not-a-topic", 400),
        ("projects/sandbox-project/topics/unknown", 404),
    ],
)
def test_watch_validates_topic_name(gmail_sandbox: GmailSandbox, topic: str, status: int) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users/watch: topicName rules."""
    gmail_sandbox.create_mailbox(ALICE)
    with pytest.raises(HttpError) as refused:
        gmail_sandbox.gmail(ALICE).users().watch(userId="me", body={"topicName": topic}).execute()
    assert refused.value.resp.status == status


def test_watch_without_publish_grant_is_forbidden(gmail_sandbox: GmailSandbox, push_receiver) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push: grant publish to gmail-api-push."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.set_topic(TOPIC, push_endpoint=push_receiver.url, publish_granted=False)
    with pytest.raises(HttpError) as refused:
        gmail_sandbox.gmail(ALICE).users().watch(userId="me", body={"topicName": TOPIC}).execute()
    assert refused.value.resp.status == 403 and refused.value.error_details[0]["reason"] == "forbidden"


def test_send_outside_the_watched_labels_is_not_pushed(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """https://developers.google.com/workspace/gmail/api/reference/rest/v1/users/watch: labelIds INBOX only."""
    gmail, _ = watched
    push_receiver.wait_for(1)
    encoded = base64.urlsafe_b64encode(
        b"From: alice@example.com\r\nTo: x@outside.test\r\nSubject: s\r\n\r\nb"
    ).decode()
    sent = gmail.users().messages().send(userId="me", body={"raw": encoded}).execute()
    assert sent["labelIds"] == ["SENT"]
    inbound = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="in", body="b")
    pushes = push_receiver.wait_for(2)
    assert [decoded(p)["historyId"] for p in pushes[1:]] == [int(inbound["historyId"])]


def test_watch_expires_after_seven_days_without_renewal(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/push: re-call watch at least every 7 days."""
    gmail, _ = watched
    push_receiver.wait_for(1)
    gmail_sandbox.admin.advance_clock(7 * 24 * 3600 + 1)
    gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="late", body="b")
    assert len(push_receiver.wait_for(2, timeout=1.0)) == 1
    renewed = gmail.users().watch(userId="me", body={"topicName": TOPIC}).execute()
    assert decoded(push_receiver.wait_for(2)[1])["historyId"] == int(renewed["historyId"])


def test_a_second_push_reuses_the_signed_token_and_another_audience_gets_its_own(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """A push token lives an hour; the sandbox signs one per audience and reuses it (no RSA work per push), and a
    target with another audience gets a token for that audience, never the cached one."""
    [first] = push_receiver.wait_for(1)
    # A second later a newly signed token would carry another `iat`, so an equal header proves the reuse.
    time.sleep(1.1)
    gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="again", body="b")
    second = push_receiver.wait_for(2)[1]
    assert second.headers["Authorization"] == first.headers["Authorization"]
    gmail_sandbox.admin.set_topic(TOPIC, audience="https://other.test/push")
    gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="third", body="b")
    third = push_receiver.wait_for(3)[2]
    token = third.headers["Authorization"].removeprefix("Bearer ")
    claims = id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience="https://other.test/push",
        certs_url=gmail_sandbox.url + "/oauth2/v1/certs",
    )
    assert claims["email"] == PUSH_ACCOUNT


def test_push_drop_share_loses_that_share_of_notifications_and_reports_them(
    gmail_sandbox: GmailSandbox, push_receiver, watched
) -> None:
    """Pub/Sub push is best effort (the push guide asks for a periodic fallback sync): with push_drop_share 1 a
    change is never posted and the report marks it dropped; back at 0 the next change is posted again."""
    push_receiver.wait_for(1)
    gmail_sandbox.admin.settings(push_drop_share=1.0)
    gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="lost", body="b")
    deadline = time.monotonic() + 20
    while not any(d["dropped"] for d in gmail_sandbox.admin.push_report()["deliveries"]):
        assert time.monotonic() < deadline, gmail_sandbox.admin.push_report()
        time.sleep(0.05)
    gmail_sandbox.admin.settings(push_drop_share=0.0)
    kept = gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject="kept", body="b")
    pushes = push_receiver.wait_for(2)
    assert [decoded(p)["historyId"] for p in pushes[1:]] == [int(kept["historyId"])]
    dropped = [d for d in gmail_sandbox.admin.push_report()["deliveries"] if d["dropped"]]
    assert len(dropped) == 1 and dropped[0]["attempts"] == 0
