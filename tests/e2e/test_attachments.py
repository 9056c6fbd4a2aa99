"""End-to-end: the attachment of a synced Gmail message reaches threading's blob store through ingest's
FetchAttachment (threading's internal-token client of `MAILSYNC_THREADING_INGEST_TARGET`) and streams back whole;
the attachment of a CRM send comes from outbound's staged upload (FetchSentAttachment at
`MAILSYNC_OUTBOUND_TARGET`) as soon as the send is recorded."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import uuid

import grpc

from mailsync.v1 import common_pb2, outbound_pb2, threading_pb2
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


def test_R6_the_attachment_of_a_crm_send_is_readable_through_threading_from_outbounds_upload(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user = stack.create_user([location])
    mailbox = stack.new_address("user")
    stack.connect_gmail(user.user_id, location, mailbox)
    contact_address = stack.new_address("dave", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)
    content = f"quote-{uuid.uuid4().hex}".encode() * 60_000  # ~2.2 MB: several gRPC chunks each way
    chunks = [content[start : start + 1_000_000] for start in range(0, len(content), 1_000_000)]
    upload = stack.outbound.UploadAttachment(
        iter(
            [
                outbound_pb2.UploadAttachmentRequest(
                    metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                        request_id=stack.new_id("upload"),
                        location_id=location,
                        filename="quote.pdf",
                        content_type="application/pdf",
                    )
                ),
                *(outbound_pb2.UploadAttachmentRequest(chunk=chunk) for chunk in chunks),
            ]
        )
    )

    send = stack.outbound.SendEmail(
        outbound_pb2.SendEmailRequest(
            request_id=stack.new_id("send"),
            location_id=location,
            user_id=user.user_id,
            kind=common_pb2.SEND_KIND_INDIVIDUAL,
            to=[common_pb2.EmailAddress(email=contact_address)],
            subject="Your quote",
            text_body="Attached.",
            attachment_upload_ids=[upload.upload_id],
        )
    ).send

    def recorded() -> threading_pb2.Message:
        return only(
            [m for m in stack.messages_of_contact(location, contact.contact_id) if m.send_id == send.send_id]
        )

    message = eventually(recorded, timeout=30)
    described = only([a for a in message.attachments if a.filename == "quote.pdf"])
    assert described.size_bytes == len(content) == upload.size_bytes

    def fetched() -> bytes:
        try:
            return attachment_content(stack, location, message.message_id, described.attachment_id)
        except grpc.RpcError as error:
            # FAILED_PRECONDITION until the collector has the content (from outbound, not from ingest).
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            raise AssertionError("attachment not fetched yet") from error

    assert eventually(fetched, timeout=30) == content
    # The customer got the same bytes through Gmail.
    delivered = email.message_from_bytes(stack.outbox_raw(contact_address), policy=email.policy.default)
    assert [part.get_content() for part in delivered.iter_attachments()] == [content]
