"""End-to-end: the attachment of a synced Gmail message reaches threading's blob store through ingest's
FetchAttachment (threading's internal-token client of `MAILSYNC_THREADING_INGEST_TARGET`) and streams back whole."""

from __future__ import annotations

import base64
import hashlib
import uuid

import grpc

from mailsync.v1 import threading_pb2
from tests.fixtures.stack import E2EStack, eventually, only


def attachment_content(stack: E2EStack, location_id: str, message_id: str, attachment_id: str) -> bytes:
    responses = list(
        stack.threading.GetAttachment(
            threading_pb2.GetAttachmentRequest(
                location_id=location_id, message_id=message_id, attachment_id=attachment_id
            )
        )
    )
    assert responses[0].HasField("metadata")
    content = b"".join(r.chunk for r in responses[1:])
    assert responses[0].metadata.sha256 == hashlib.sha256(content).hexdigest()
    return content


def test_R18_attachment_of_a_placed_message_is_fetched_from_ingest_into_the_blob_store(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user = stack.create_user([location])
    mailbox = stack.new_address("user")
    stack.connect_gmail(user.user_id, location, mailbox)
    contact_address = stack.new_address("carol", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)
    content = f"signed-proposal-{uuid.uuid4().hex}".encode() * 3000

    delivered = stack.deliver(
        mailbox,
        contact_address,
        "Signed proposal",
        "Attached.",
        attachments=[
            {
                "filename": "proposal.pdf",
                "content_type": "application/pdf",
                "data_base64": base64.b64encode(content).decode(),
            }
        ],
    )

    message = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    described = only([a for a in message.attachments if a.filename == "proposal.pdf"])

    def fetched() -> bytes:
        try:
            return attachment_content(stack, location, message.message_id, described.attachment_id)
        except grpc.RpcError as error:
            # FAILED_PRECONDITION until the collector has fetched the content from ingest.
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            raise AssertionError("attachment not fetched yet") from error

    assert eventually(fetched, timeout=30) == content
    blob = hashlib.sha256(content).hexdigest()
    assert any(path.name == blob for path in stack.runner.var_dir.rglob(blob))
