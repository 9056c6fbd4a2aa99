"""Conformance of what outbound's recovery of a send relies on, through the unmodified Google client: a product
header survives messages.send on the Sent copy and reads back with format=metadata; in:sent with epoch-second
after:/before: bounds lists every message of the window across pages; Gmail's search index lags (a q search sees
a message only later, a labelIds listing at once); rfc822msgid: finds the Message-ID Gmail kept, not the replaced
one; a send is not held back for a push the one-per-second rate delays; the ID token and userinfo carry the hosted
domain (hd) of a Workspace account only."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from email.message import EmailMessage

import google.auth.transport.requests
import pytest
from google.oauth2 import id_token

from tests.fixtures.sandbox import GmailSandbox, PushReceiver
from tests.integration.sandbox.test_sandbox_oauth import authorization_url, exchange, pkce_pair

ALICE = "alice@example.com"
SEND_ID_HEADER = "X-Mailsync-Send-Id"
TOPIC = "projects/sandbox-project/topics/gmail"


def _raw(send_id: str, message_id: str = "<ours@crm.test>", to: str = "customer@outside.test") -> str:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ALICE, to, "Following up"
    message["Message-ID"] = message_id
    message[SEND_ID_HEADER] = send_id
    message.set_content("Step one.")
    return base64.urlsafe_b64encode(message.as_bytes()).decode()


def _send(gmail, send_id: str, **kwargs: str) -> dict:  # type: ignore[no-untyped-def]
    return gmail.users().messages().send(userId="me", body={"raw": _raw(send_id, **kwargs)}).execute()


def _listed(gmail, q: str | None = None, **kwargs: object) -> list[str]:  # type: ignore[no-untyped-def]
    ids: list[str] = []
    page_token = None
    while True:
        params: dict[str, object] = {"userId": "me", "maxResults": 10, **kwargs}
        if q is not None:
            params["q"] = q
        if page_token:
            params["pageToken"] = page_token
        answer = gmail.users().messages().list(**params).execute()
        ids += [m["id"] for m in answer.get("messages", [])]
        page_token = answer.get("nextPageToken")
        if not page_token:
            return ids


def test_a_product_header_survives_send_and_reads_back_as_metadata_whatever_happens_to_the_message_id(
    gmail_sandbox: GmailSandbox,
) -> None:
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.settings(replace_message_id=True)
    gmail = gmail_sandbox.gmail(ALICE)

    sent = _send(gmail, "0123456789abcdef")

    got = (
        gmail.users()
        .messages()
        .get(
            userId="me",
            id=sent["id"],
            format="metadata",
            metadataHeaders=[SEND_ID_HEADER.lower(), "Message-ID"],
        )
        .execute()
    )
    headers = {h["name"].lower(): h["value"] for h in got["payload"]["headers"]}
    assert headers[SEND_ID_HEADER.lower()] == "0123456789abcdef"
    assert headers["message-id"] != "<ours@crm.test>"
    # rfc822msgid: finds the Message-ID Gmail kept, never the one it replaced.
    assert _listed(gmail, "in:sent rfc822msgid:ours@crm.test") == []
    assert _listed(gmail, f"in:sent rfc822msgid:{headers['message-id'].strip('<>')}") == [sent["id"]]


def test_a_time_bounded_in_sent_listing_finds_every_copy_of_its_window_across_pages(
    gmail_sandbox: GmailSandbox,
) -> None:
    gmail_sandbox.create_mailbox(ALICE)
    gmail = gmail_sandbox.gmail(ALICE)
    early = [_send(gmail, f"e{n:07d}")["id"] for n in range(3)]
    gmail_sandbox.admin.advance_clock(120)
    start = int(time.time() + 120) - 1
    window = [_send(gmail, f"w{n:07d}")["id"] for n in range(25)]
    end = int(time.time() + 120) + 2
    gmail_sandbox.admin.advance_clock(120)
    late = [_send(gmail, f"l{n:07d}")["id"] for n in range(3)]

    found = _listed(gmail, f"in:sent after:{start} before:{end}")

    # 25 in pages of 10, newest first; nothing of the minutes before or after.
    assert sorted(found) == sorted(window) and not set(found) & set(early + late)
    assert len(_listed(gmail, "in:sent")) == 31


def test_the_search_index_lags_behind_what_was_stored_but_a_label_listing_does_not(
    gmail_sandbox: GmailSandbox,
) -> None:
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.settings(search_index_lag_ms=60_000)
    gmail = gmail_sandbox.gmail(ALICE)

    sent = _send(gmail, "0123456789abcdef", message_id="<kept@crm.test>")
    gmail_sandbox.admin.settings(replace_message_id=False)
    kept = _send(gmail, "fedcba9876543210", message_id="<kept2@crm.test>")

    assert _listed(gmail, "in:sent") == [] and _listed(gmail, "in:sent rfc822msgid:kept2@crm.test") == []
    assert set(_listed(gmail, labelIds=["SENT"])) == {sent["id"], kept["id"]}
    gmail_sandbox.admin.advance_clock(61)
    assert set(_listed(gmail, "in:sent")) == {sent["id"], kept["id"]}
    assert _listed(gmail, "in:sent rfc822msgid:kept2@crm.test") == [kept["id"]]


def test_a_send_is_not_held_back_for_a_push_the_notification_rate_delays(
    gmail_sandbox: GmailSandbox, push_receiver: PushReceiver
) -> None:
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.set_push(push_endpoint=push_receiver.url)
    # One notification a minute, and an echo-first send would wait up to a minute for its push.
    gmail_sandbox.admin.settings(push_min_interval_s=60, echo_first_push_wait_s=60)
    gmail = gmail_sandbox.gmail(ALICE)
    watch = gmail.users().watch(userId="me", body={"topicName": TOPIC}).execute()
    push_receiver.wait_for(1)

    sent = _send(gmail, "0123456789abcdef")

    # The send answered while its notification is still held back by the rate (it waited for nothing).
    assert len(push_receiver.received) == 1
    history = gmail.users().history().list(userId="me", startHistoryId=watch["historyId"]).execute()
    assert [h["messagesAdded"][0]["message"]["id"] for h in history["history"]] == [sent["id"]]


@pytest.mark.parametrize(("workspace", "hd"), [(True, "acme.example"), (False, None)])
def test_the_id_token_and_userinfo_carry_the_hosted_domain_of_a_workspace_account_only(
    gmail_sandbox: GmailSandbox, workspace: bool, hd: str | None
) -> None:
    address = "sales@acme.example"
    gmail_sandbox.create_mailbox(address, workspace=workspace)
    verifier, challenge = pkce_pair()
    redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge), address)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))["code"]
    _, tokens = exchange(gmail_sandbox.url, code, verifier)

    claims = id_token.verify_token(
        tokens["id_token"],
        google.auth.transport.requests.Request(),
        audience="sandbox-client.apps.googleusercontent.com",
        certs_url=gmail_sandbox.url + "/oauth2/v1/certs",
    )
    request = urllib.request.Request(
        gmail_sandbox.url + "/oauth2/v3/userinfo",
        headers={"Authorization": "Bearer " + tokens["access_token"]},
    )
    userinfo = json.loads(urllib.request.urlopen(request).read())

    assert claims.get("hd") == hd and userinfo.get("hd") == hd
