"""The lean batch writes the same parts as google-api-python-client's batch and reads answers as it does."""

from __future__ import annotations

import email.parser
from typing import Any

import httplib2
import pytest
from googleapiclient.http import BatchHttpRequest

from services.runtime.gmail import GmailApi, GmailEndpoint
from services.runtime.gmail.batch import LeanBatchHttpRequest, multipart_parts

ROOT = "http://127.0.0.1:9/"


@pytest.fixture
def api() -> Any:
    api = GmailApi(GmailEndpoint(root_url=ROOT))
    yield api
    api.close()


def requests_of(api: GmailApi) -> list[Any]:
    users = api.users()
    return [
        users.messages().get(userId="me", id="18c0ffee", format="raw"),
        users.messages().get(userId="me", id="a b/c", format="metadata", metadataHeaders=["From", "To"]),
        users.messages().modify(userId="me", id="18c0ffee", body={"addLabelIds": ["INBOX"], "x": "é"}),
    ]


def test_each_part_is_the_request_the_library_writes(api: GmailApi) -> None:
    library = BatchHttpRequest(batch_uri=api.batch_uri)
    lean = LeanBatchHttpRequest(batch_uri=api.batch_uri)
    for request in requests_of(api):
        assert lean._serialize_request(request) == library._serialize_request(request)


class RecordingHttp:
    """Answers a batch with `answer(body, boundary)` and keeps what was sent."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[tuple[str, dict[str, str]]] = []

    def request(self, uri: str, method: str, body: str, headers: dict[str, str]) -> Any:
        self.sent.append((body, headers))
        return self.answer(body, headers)


def echo_answer(body: str, headers: dict[str, str]) -> Any:
    """Each part of the request parsed as the library's feed parser reads a multipart body, answered in CRLF form
    with a JSON body that names the part's request line."""
    message = email.parser.Parser().parsestr(f"content-type: {headers['content-type']}\r\n\r\n{body}")
    out = ""
    for part in message.get_payload():
        request_line = part.get_payload().split("\n", 1)[0]
        content_id = part["Content-ID"].strip("<>")
        out += (
            "--ans\r\nContent-Type: application/http\r\n"
            f"Content-ID: <response-{content_id}>\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\n"
            f'{{"line": "{request_line}"}}\r\n'
        )
    out = "preamble\r\n" + out + "--ans--\r\nepilogue"
    return httplib2.Response({"status": "200", "content-type": "multipart/mixed; boundary=ans"}), out.encode()


@pytest.mark.parametrize("batch_class", [BatchHttpRequest, LeanBatchHttpRequest])
def test_the_answers_reach_their_callbacks_as_with_the_library(api: GmailApi, batch_class: type) -> None:
    answers: dict[str, Any] = {}
    batch = batch_class(
        callback=lambda rid, resp, exc: answers.update({rid: (resp, exc)}), batch_uri=api.batch_uri
    )
    for index, request in enumerate(requests_of(api)):
        batch.add(request, request_id=f"id {index}")
    http = RecordingHttp(echo_answer)
    batch.execute(http=http)
    assert answers == {
        "id 0": ({"line": "GET /gmail/v1/users/me/messages/18c0ffee?format=raw&alt=json HTTP/1.1"}, None),
        "id 1": (
            {
                "line": "GET /gmail/v1/users/me/messages/a%20b%2Fc?format=metadata&metadataHeaders=From"
                "&metadataHeaders=To&alt=json HTTP/1.1"
            },
            None,
        ),
        "id 2": ({"line": "POST /gmail/v1/users/me/messages/18c0ffee/modify?alt=json HTTP/1.1"}, None),
    }
    assert batch._responses["id 0"][0]["x-twice"] == "2"
    assert batch._responses["id 0"][0].status == 200


def test_a_part_of_the_answer_keeps_its_line_breaks_and_loses_only_the_delimiters() -> None:
    body = "--b\r\nA: 1\r\n\r\nline one\r\n\r\n--b\n\nlast\n--b--\n"
    assert multipart_parts(body, "b") == ["A: 1\r\n\r\nline one\r\n", "\nlast"]
    # Without the closing delimiter, what came is kept (as email's feed parser keeps it).
    assert multipart_parts("preamble\n--b\r\nA: 1\r\n\r\ncut short", "b") == ["A: 1\r\n\r\ncut short"]
