"""Pointing the Gmail client at Google or at a sandbox: plain calls, batches and media uploads all follow the root."""

from __future__ import annotations

import io

from googleapiclient.http import MediaIoBaseUpload

from services.runtime.gmail import GivenAccessToken, GmailApi, GmailEndpoint


def request_uris(api: GmailApi) -> tuple[str, str, str]:
    users = api.resource.users()
    plain = users.getProfile(userId="me").uri
    batch = api.resource.new_batch_http_request()._batch_uri
    assert api.batch_uri == batch, "the lean batch goes where the library sends its own"
    media = MediaIoBaseUpload(
        io.BytesIO(b"Subject: x\r\n\r\nbody"), mimetype="message/rfc822", resumable=False
    )
    upload = users.messages().send(userId="me", body={"threadId": "t1"}, media_body=media).uri
    return plain, batch, upload


def test_google_is_the_default_endpoint() -> None:
    api = GmailApi()
    try:
        plain, batch, upload = request_uris(api)
    finally:
        api.close()
    assert plain.startswith("https://gmail.googleapis.com/gmail/v1/users/me/profile")
    assert batch == "https://gmail.googleapis.com/batch"
    assert upload.startswith("https://gmail.googleapis.com/upload/gmail/v1/users/me/messages/send")


def test_a_sandbox_root_moves_plain_calls_batches_and_uploads() -> None:
    api = GmailApi(GmailEndpoint(root_url="http://127.0.0.1:8765"))
    try:
        plain, batch, upload = request_uris(api)
    finally:
        api.close()
    assert plain.startswith("http://127.0.0.1:8765/gmail/v1/users/me/profile")
    assert batch == "http://127.0.0.1:8765/batch"
    assert upload.startswith("http://127.0.0.1:8765/upload/gmail/v1/users/me/messages/send")
    assert "uploadType=multipart" in upload


def test_given_access_token_is_hidden_from_repr() -> None:
    credentials = GivenAccessToken("ya29.secret-access-token")
    assert "ya29" not in repr(credentials)
    assert credentials.valid


def test_child_resources_are_built_once_and_still_make_a_new_request_per_call() -> None:
    api = GmailApi(GmailEndpoint(root_url="http://127.0.0.1:8765"))
    try:
        messages = api.users().messages()
        assert api.users().messages() is messages
        assert api.users().history() is not messages
        first = messages.get(userId="me", id="m1", format="metadata", metadataHeaders=["Message-ID"])
        second = messages.get(userId="me", id="m2", format="minimal")
        sent = api.users().messages().send(userId="me", body={"raw": "eA"})
    finally:
        api.close()
    assert first is not second
    assert first.uri.startswith("http://127.0.0.1:8765/gmail/v1/users/me/messages/m1?")
    assert "metadataHeaders=Message-ID" in first.uri and "format=metadata" in first.uri
    assert second.uri.startswith("http://127.0.0.1:8765/gmail/v1/users/me/messages/m2?")
    assert "format=minimal" in second.uri and "metadataHeaders" not in second.uri
    assert (sent.method, sent.body) == ("POST", '{"raw": "eA"}')
