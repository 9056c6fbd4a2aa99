"""The BCC-drop admission's LocationUsers port over auth's ListUsers: is this address a user of the location?"""

from __future__ import annotations

import grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc


class AuthLocationUsers:
    """Asks auth (which knows CRM addresses and connected mailboxes); the caller owns and closes the channel."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 10.0) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout_seconds

    async def user_for_address(self, location_id: str, email: str) -> str | None:
        """The user of `location_id` whose CRM or connected mailbox address is `email`; None for a stranger.

        An unreachable auth service raises: the drop is then refused temporarily (451), never accepted.
        """
        answer = await self._stub.ListUsers(
            auth_pb2.ListUsersRequest(location_id=location_id, email=email, page_size=1),
            timeout=self._timeout,
        )
        return answer.users[0].user_id if answer.users else None
