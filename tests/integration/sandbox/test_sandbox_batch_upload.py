"""Conformance: batch requests (multipart/mixed, at most 100 parts) and media upload for messages.send."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from email.message import EmailMessage

import pytest
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest, MediaIoBaseUpload

from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
BOB = "bob@example.com"


def seeded(gmail_sandbox: GmailSandbox, count: int) -> list[str]:
    gmail_sandbox.create_mailbox(ALICE)
    return [
        gmail_sandbox.admin.deliver(ALICE, sender="x@outside.test", to=[ALICE], subject=f"s{i}", body="b")[
            "id"
        ]
        for i in range(count)
    ]


def test_batch_of_100_parts_is_answered_per_part(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/batch: up to 100 calls, Content-ID echoed."""
    ids = seeded(gmail_sandbox, 99)
    gmail = gmail_sandbox.gmail(ALICE)
    answers: dict[str, object] = {}

    def collect(request_id, response, exception):
        answers[request_id] = exception or response

    batch = gmail.new_batch_http_request(callback=collect)
    for message_id in ids:
        batch.add(
            gmail.users().messages().get(userId="me", id=message_id, format="raw"), request_id=message_id
        )
    batch.add(gmail.users().messages().get(userId="me", id="0000000000000000"), request_id="missing")
    batch.execute()
    assert len(answers) == 100
    assert all(answers[i]["id"] == i for i in ids)
    assert isinstance(answers["missing"], HttpError) and answers["missing"].resp.status == 404


def test_batch_of_101_parts_is_refused(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/batch: "limited to 100 calls"."""
    ids = seeded(gmail_sandbox, 1)
    gmail = gmail_sandbox.gmail(ALICE)
    batch = BatchHttpRequest(batch_uri=gmail_sandbox.url + "/batch/gmail/v1")
    for _ in range(101):
        batch.add(gmail.users().messages().get(userId="me", id=ids[0], format="minimal"))
    with pytest.raises(HttpError) as refused:
        batch.execute(http=gmail._http)
    assert refused.value.resp.status == 400


def test_crlf_batch_body_is_accepted(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/batch: the documented CRLF wire format."""
    seeded(gmail_sandbox, 0)
    token = gmail_sandbox.tokens(ALICE)["access_token"]
    body = (
        b"--xyz\r\nContent-Type: application/http\r\nContent-ID: <item1>\r\n\r\n"
        b"GET /gmail/v1/users/me/profile\r\n\r\n\r\n--xyz--\r\n"
    )
    request = urllib.request.Request(
        gmail_sandbox.url + "/batch/gmail/v1",
        data=body,
        method="POST",
        headers={"Content-Type": "multipart/mixed; boundary=xyz", "Authorization": f"Bearer {token}"},
    )
    answer = urllib.request.urlopen(request).read().decode()
    assert "Content-ID: <response-item1>" in answer and "HTTP/1.1 200 OK" in answer and ALICE in answer


def rfc822(size: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, BOB, "Upload"
    msg.set_content("x" * size)
    return msg.as_bytes()


@pytest.mark.parametrize("resumable", [False, True])
def test_media_upload_send_simple_and_resumable(gmail_sandbox: GmailSandbox, resumable: bool) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/uploads: multipart and resumable uploads."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    gmail = gmail_sandbox.gmail(ALICE)
    raw = rfc822(600_000)
    media = MediaIoBaseUpload(
        io.BytesIO(raw), mimetype="message/rfc822", chunksize=256 * 1024, resumable=resumable
    )
    request = gmail.users().messages().send(userId="me", body={}, media_body=media)
    if resumable:
        response, chunks = None, 0
        while response is None:
            _status, response = request.next_chunk()
            chunks += 1
        assert chunks == 3
    else:
        response = request.execute()
    assert response["labelIds"] == ["SENT"]
    stored = gmail.users().messages().get(userId="me", id=response["id"], format="full").execute()
    assert stored["payload"]["body"]["size"] >= 600_000
    bob = gmail_sandbox.gmail(BOB)
    assert bob.users().messages().list(userId="me").execute()["resultSizeEstimate"] == 1


def test_upload_over_36700160_bytes_is_refused(gmail_sandbox: GmailSandbox) -> None:
    """Discovery document mediaUpload.maxSize 36700160 for messages.send."""
    gmail_sandbox.create_mailbox(ALICE)
    token = gmail_sandbox.tokens(ALICE)["access_token"]
    request = urllib.request.Request(
        gmail_sandbox.url + "/upload/gmail/v1/users/me/messages/send?uploadType=resumable",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Upload-Content-Type": "message/rfc822",
            "X-Upload-Content-Length": "36700161",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 413
    exact = urllib.request.Request(
        gmail_sandbox.url + "/upload/gmail/v1/users/me/messages/send?uploadType=resumable",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Upload-Content-Type": "message/rfc822",
            "X-Upload-Content-Length": "36700160",
        },
    )
    assert urllib.request.urlopen(exact).status == 200


def test_simple_media_upload_sends_the_raw_body(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/uploads: uploadType=media."""
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    token = gmail_sandbox.tokens(ALICE)["access_token"]
    request = urllib.request.Request(
        gmail_sandbox.url + "/upload/gmail/v1/users/me/messages/send?uploadType=media",
        data=rfc822(10),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200
    assert [m["subject"] for m in gmail_sandbox.admin.messages(BOB)] == ["Upload"]
