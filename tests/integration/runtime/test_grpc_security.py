"""Authentication at two trust levels, tenant scoping, validation and the error boundary on a real service's gRPC
server (loopback, real NATS, real database), with a small ThreadingService servicer built from the generated
stubs."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mailsync.v1 import outbound_pb2, outbound_pb2_grpc, threading_pb2, threading_pb2_grpc
from services.runtime.errors import MAX_MESSAGE_CHARS, NotFound, error_info, field_violations
from services.runtime.grpc_auth import CrmTokenSigner, ServiceTokenKeys, current_caller
from services.runtime.grpc_client import ServiceToken, StaticToken, open_channel
from services.runtime.grpc_server import ServicerRegistration
from services.runtime.service import RunningService, ServiceComponents, open_foundation
from services.threading.app import MIGRATIONS_DIR
from services.threading.settings import ThreadingSettings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.services import TestTokens, new_token_keys_value, service_settings

# What a careless servicer might put in an exception: SQL, a bound parameter, a secret.
LEAKY_FAILURE = "SELECT token FROM mailboxes WHERE id = 'mb-1' [parameters: ('ya29.secret-access-token',)]"


class ConversationMissing(NotFound):
    reason = "CONVERSATION_NOT_FOUND"


class LeakyStoreError(RuntimeError):
    """Stands in for an unexpected database error whose text carries SQL and parameters."""


class EchoThreading(threading_pb2_grpc.ThreadingServiceServicer):
    """Echoes the request back, and says who called: enough to observe what the interceptors let through."""

    async def GetConversation(self, request: Any, context: Any) -> Any:
        if request.conversation_id == "missing":
            raise ConversationMissing("no such conversation", conversation_id=request.conversation_id)
        if request.conversation_id == "crash":
            raise LeakyStoreError(LEAKY_FAILURE)
        if request.conversation_id == "verbose":
            raise ConversationMissing("x" * 100_000, **{f"k{n}": "y" * 10_000 for n in range(50)})
        return threading_pb2.GetConversationResponse(
            conversation=threading_pb2.Conversation(
                conversation_id=request.conversation_id,
                location_id=request.location_id,
                contact_id=current_caller().name,
            )
        )

    async def WatchMessages(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for n in range(2):
            yield threading_pb2.WatchMessagesResponse(cursor=f"{request.location_id}:{n}")

    async def ExplainMessage(self, request: Any, context: Any) -> Any:
        return threading_pb2.ExplainMessageResponse(rfc_message_id=request.rfc_message_id)


class UploadCounter(outbound_pb2_grpc.OutboundServiceServicer):
    """A client-streaming method: the location arrives in the first message, so the servicer checks it."""

    async def UploadAttachment(self, request_iterator: Any, context: Any) -> Any:
        size = 0
        async for request in request_iterator:
            if request.HasField("metadata"):
                current_caller().require_location(request.metadata.location_id)
            size += len(request.chunk)
        return outbound_pb2.UploadAttachmentResponse(upload_id="u1", size_bytes=size)


def threading_registration() -> ServicerRegistration:
    return ServicerRegistration(
        service=threading_pb2.DESCRIPTOR.services_by_name["ThreadingService"],
        servicer=EchoThreading(),
        add_to_server=threading_pb2_grpc.add_ThreadingServiceServicer_to_server,
        internal_methods=frozenset({"ExplainMessage"}),
    )


def outbound_registration() -> ServicerRegistration:
    return ServicerRegistration(
        service=outbound_pb2.DESCRIPTOR.services_by_name["OutboundService"],
        servicer=UploadCounter(),
        add_to_server=outbound_pb2_grpc.add_OutboundServiceServicer_to_server,
    )


async def build_echo_service(settings: ThreadingSettings) -> ServiceComponents:
    components = await open_foundation(settings, MIGRATIONS_DIR)
    components.add_servicer(threading_registration())
    components.add_servicer(outbound_registration())
    return components


@pytest.fixture
async def service(
    nats_server: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> RunningService:
    # What is under test is the gRPC layer, so one database backend is enough here.
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=DatabaseTarget("sqlite", f"sqlite:///{tmp_path / 'threading.db'}", None),
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
    )
    return await run_service_in_process(settings, build_echo_service)


def _address(service: RunningService) -> str:
    return f"127.0.0.1:{service.port}"


async def get_conversation(
    service: RunningService, token: str | None, location_id: str, conversation_id: str = "c1"
) -> Any:
    channel = open_channel(_address(service), token=StaticToken(token) if token is not None else None)
    async with channel:
        stub = threading_pb2_grpc.ThreadingServiceStub(channel)
        return await stub.GetConversation(
            threading_pb2.GetConversationRequest(location_id=location_id, conversation_id=conversation_id)
        )


async def test_a_valid_token_for_the_location_reaches_the_servicer_as_the_caller(
    service: RunningService, token_keys: TestTokens
) -> None:
    response = await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-a")
    assert response.conversation.location_id == "loc-a"
    assert response.conversation.contact_id == "crm"


async def test_a_call_without_a_token_is_unauthenticated(service: RunningService) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, None, "loc-a")
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing" in (failure.value.details() or "")
    info = error_info(failure.value)
    assert info is not None and info.reason == "INVALID_TOKEN" and info.domain == "mailsync"


@pytest.mark.parametrize(
    "stranger",
    [
        pytest.param(
            lambda: ServiceTokenKeys.parse(new_token_keys_value(kid="test")).mint("x"), id="internal"
        ),
        pytest.param(lambda: CrmTokenSigner.generate("crm-test").mint("crm", ["loc-a"]), id="crm"),
    ],
)
async def test_a_token_signed_with_another_key_under_a_known_id_is_unauthenticated(
    service: RunningService, stranger: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, stranger(), "loc-a")
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in (failure.value.details() or "")


async def test_an_expired_token_is_unauthenticated(service: RunningService, token_keys: TestTokens) -> None:
    expired = token_keys.mint("crm", ["loc-a"], ttl_seconds=60, now=time.time() - 3600)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, expired, "loc-a")
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (failure.value.details() or "")


async def test_a_token_for_one_location_is_denied_another_location(
    service: RunningService, token_keys: TestTokens
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-b")
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(failure.value)
    assert info is not None and info.reason == "LOCATION_NOT_PERMITTED"
    assert info.metadata["location_id"] == "loc-b"


async def test_a_token_for_all_locations_may_act_for_any(
    service: RunningService, token_keys: TestTokens
) -> None:
    response = await get_conversation(service, token_keys.mint("threading", ["*"], internal=True), "loc-z")
    assert response.conversation.location_id == "loc-z"


async def test_server_streaming_requests_are_scoped_too(
    service: RunningService, token_keys: TestTokens
) -> None:
    async with open_channel(
        _address(service), token=StaticToken(token_keys.mint("crm", ["loc-a"]))
    ) as channel:
        stub = threading_pb2_grpc.ThreadingServiceStub(channel)
        allowed = [
            r.cursor
            async for r in stub.WatchMessages(threading_pb2.WatchMessagesRequest(location_id="loc-a"))
        ]
        assert allowed == ["loc-a:0", "loc-a:1"]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            [r async for r in stub.WatchMessages(threading_pb2.WatchMessagesRequest(location_id="loc-b"))]
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_client_streaming_requests_are_scoped_by_the_servicer_helper(
    service: RunningService, token_keys: TestTokens
) -> None:
    def upload(location_id: str) -> Any:
        async def requests() -> AsyncIterator[Any]:
            yield outbound_pb2.UploadAttachmentRequest(
                metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                    location_id=location_id, filename="a.txt"
                )
            )
            yield outbound_pb2.UploadAttachmentRequest(chunk=b"hello")

        return requests()

    async with open_channel(
        _address(service), token=StaticToken(token_keys.mint("crm", ["loc-a"]))
    ) as channel:
        stub = outbound_pb2_grpc.OutboundServiceStub(channel)
        assert (await stub.UploadAttachment(upload("loc-a"))).size_bytes == 5
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.UploadAttachment(upload("loc-b"))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(failure.value)
    assert info is not None and info.reason == "LOCATION_NOT_PERMITTED"


async def test_an_internal_only_method_is_denied_to_an_outside_caller(
    service: RunningService, token_keys: TestTokens
) -> None:
    request = threading_pb2.ExplainMessageRequest(location_id="loc-a", rfc_message_id="<m@x>")
    async with open_channel(_address(service), token=StaticToken(token_keys.mint("crm", ["*"]))) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await threading_pb2_grpc.ThreadingServiceStub(channel).ExplainMessage(request)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(failure.value)
    assert info is not None and info.reason == "INTERNAL_ONLY_METHOD"

    internal = StaticToken(token_keys.mint("outbound", ["*"], internal=True))
    async with open_channel(_address(service), token=internal) as channel:
        response = await threading_pb2_grpc.ThreadingServiceStub(channel).ExplainMessage(request)
    assert response.rfc_message_id == "<m@x>"


async def test_a_domain_error_becomes_its_status_with_error_info(
    service: RunningService, token_keys: TestTokens
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-a", conversation_id="missing")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert failure.value.details() == "no such conversation"
    info = error_info(failure.value)
    assert info is not None
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "CONVERSATION_NOT_FOUND",
        "mailsync",
        {"conversation_id": "missing"},
    )


async def test_health_needs_no_token(service: RunningService) -> None:
    async with open_channel(_address(service)) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mailsync.v1.ThreadingService")
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_service_token_calls_internal_methods_for_any_location(
    service: RunningService, token_keys: TestTokens
) -> None:
    token = ServiceToken(token_keys.internal, "ingest")
    request = threading_pb2.ExplainMessageRequest(location_id="loc-q", rfc_message_id="<s@x>")
    async with open_channel(_address(service), token=token) as channel:
        response = await threading_pb2_grpc.ThreadingServiceStub(channel).ExplainMessage(request)
    assert response.rfc_message_id == "<s@x>"
    assert token_keys.verify(token.token()).internal


async def test_reflection_lists_the_served_services_without_a_token(service: RunningService) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with open_channel(_address(service)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"mailsync.v1.ThreadingService", "mailsync.v1.OutboundService", "grpc.health.v1.Health"} <= names


# ---- trust levels: the CRM's key cannot mint an internal caller ------------------------------------------------


def _forged(claims: dict[str, Any], key: Any, algorithm: str, kid: str) -> str:
    now = int(time.time())
    base = {"iss": "mailsync", "sub": "crm", "locations": ["*"], "iat": now, "exp": now + 300}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm, headers={"kid": kid})


async def explain_as(service: RunningService, token: str) -> Any:
    request = threading_pb2.ExplainMessageRequest(location_id="loc-a", rfc_message_id="<m@x>")
    async with open_channel(_address(service), token=StaticToken(token)) as channel:
        return await threading_pb2_grpc.ThreadingServiceStub(channel).ExplainMessage(request)


async def test_a_crm_signed_token_claiming_internal_is_refused(
    service: RunningService, token_keys: TestTokens
) -> None:
    crm_key = token_keys.crm._keys["crm-test"]
    for audience in ("mailsync", "mailsync-internal"):
        forged = _forged({"aud": audience, "internal": True}, crm_key, "EdDSA", "crm-test")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await explain_as(service, forged)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, audience
    # Negative control: the same key's ordinary token is accepted, and refused the internal method.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await explain_as(service, token_keys.mint("crm", ["*"]))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await explain_as(service, token_keys.mint("ingest", ["*"], internal=True))).rfc_message_id


async def test_a_token_cannot_change_trust_level_by_algorithm_or_key_id(
    service: RunningService, token_keys: TestTokens
) -> None:
    public = base64.b64decode(token_keys.crm.public_keys_text().split("=", 1)[1])
    attempts = {
        # The CRM's public key (which every service holds) used as an HMAC secret under the CRM's key id.
        "hs256-with-public-key": _forged({"aud": "mailsync", "internal": True}, public, "HS256", "crm-test"),
        # The same, presented under the internal ring's key id.
        "hs256-public-key-internal-kid": _forged(
            {"aud": "mailsync-internal", "internal": True}, public, "HS256", "test"
        ),
        # A CRM-signed token presented under the internal ring's key id.
        "eddsa-under-internal-kid": _forged(
            {"aud": "mailsync-internal", "internal": True}, token_keys.crm._keys["crm-test"], "EdDSA", "test"
        ),
        "unsigned": _forged({"aud": "mailsync-internal", "internal": True}, None, "none", "test"),
    }
    for name, forged in attempts.items():
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await explain_as(service, forged)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


# ---- the error boundary: bounded answers, nothing internal leaks -----------------------------------------------


async def test_an_unexpected_error_is_internal_with_an_error_id_the_server_logged(
    service: RunningService, token_keys: TestTokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="services.runtime.errors")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-a", conversation_id="crash")
    error = failure.value
    assert error.code() == grpc.StatusCode.INTERNAL
    info = error_info(error)
    assert info is not None and info.reason == "INTERNAL"
    error_id = info.metadata["error_id"]
    details = error.details() or ""
    assert error_id in details
    answer = details + repr(error.trailing_metadata())
    for leak in ("SELECT", "ya29", "mb-1", "LeakyStoreError", "RuntimeError", "Traceback"):
        assert leak not in answer, leak
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is LeakyStoreError


async def test_status_messages_and_trailers_stay_bounded(
    service: RunningService, token_keys: TestTokens
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-a", conversation_id="verbose")
    error = failure.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details() or "") <= MAX_MESSAGE_CHARS
    trailers = sum(len(key) + len(value) for key, value in error.trailing_metadata() or ())
    assert trailers < 4096, trailers


async def test_a_huge_id_is_invalid_argument_naming_the_field_without_echoing_it(
    service: RunningService, token_keys: TestTokens
) -> None:
    huge = "c" * (1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await get_conversation(service, token_keys.mint("crm", ["loc-a"]), "loc-a", conversation_id=huge)
    error = failure.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("conversation_id: must be at most 64 characters")
    assert "ccccccccc" not in (error.details() or "") + repr(error.trailing_metadata())
    assert [field for field, _ in field_violations(error)] == ["conversation_id"]


async def test_a_request_that_does_not_decode_is_invalid_argument_naming_the_field(
    service: RunningService, token_keys: TestTokens
) -> None:
    metadata = (("authorization", f"Bearer {token_keys.mint('crm', ['loc-a'])}"),)
    async with grpc.aio.insecure_channel(_address(service)) as channel:
        raw = channel.unary_unary("/mailsync.v1.ThreadingService/GetConversation")
        # Field 2 (conversation_id), length 2, bytes that are not UTF-8.
        with pytest.raises(grpc.aio.AioRpcError) as bad_utf8:
            await raw(b"\x0a\x05loc-a\x12\x02\xff\xfe", metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as truncated:
            await raw(b"\x12\x7fshort", metadata=metadata)
        # Negative control: well-formed bytes for the same method decode and reach the servicer.
        fine = await raw(
            threading_pb2.GetConversationRequest(
                location_id="loc-a", conversation_id="c1"
            ).SerializeToString(),
            metadata=metadata,
        )
    assert threading_pb2.GetConversationResponse.FromString(fine).conversation.conversation_id == "c1"
    assert bad_utf8.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_utf8.value.details() or "").startswith("conversation_id: is not valid UTF-8")
    assert truncated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (truncated.value.details() or "")


async def test_each_message_of_a_client_stream_is_validated(
    service: RunningService, token_keys: TestTokens
) -> None:
    async def requests() -> AsyncIterator[Any]:
        yield outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(location_id="loc-a", filename="a\r\nb.txt")
        )

    async with open_channel(
        _address(service), token=StaticToken(token_keys.mint("crm", ["loc-a"]))
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await outbound_pb2_grpc.OutboundServiceStub(channel).UploadAttachment(requests())
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (failure.value.details() or "").startswith("metadata.filename: must be one line")
