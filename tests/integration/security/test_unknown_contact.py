"""Issue 15: the conversations of a contact the location never had are NOT_FOUND, not an empty list (the CLI's
`messages --contact nobody` said "no messages"); a known contact without mail still lists none."""

from __future__ import annotations

import grpc
import pytest

from mailsync.v1 import threading_pb2
from services.runtime.errors import error_info
from tests.integration.threading.test_api import (  # noqa: F401
    Client,
    attachment_source,
    contact,
    crm_a,
    threading_service,
)


async def test_an_unknown_contact_is_not_found_and_a_known_one_lists_nothing(crm_a: Client) -> None:  # noqa: F811
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await crm_a.stub.ListConversations(
            threading_pb2.ListConversationsRequest(location_id="loc-a", contact_id="nobody")
        )
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(failure.value)
    assert info is not None and info.reason == "CONTACT_NOT_FOUND"
    # Negative control: a contact that exists, with no mail yet, is an empty list.
    await crm_a.stub.UpsertContact(
        threading_pb2.UpsertContactRequest(contact=contact("c-quiet", "quiet@example.com"))
    )
    answer = await crm_a.stub.ListConversations(
        threading_pb2.ListConversationsRequest(location_id="loc-a", contact_id="c-quiet")
    )
    assert list(answer.conversations) == []
