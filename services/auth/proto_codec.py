"""Translation between the auth service's domain values and its protos (auth.proto, events.proto), in one place
for the servicer and the connection events."""

from __future__ import annotations

from mailsync.v1 import auth_pb2, common_pb2, events_pb2
from services.auth.account_type import AccountType
from services.auth.domain import Connection, ConnectionEventKind, ConnectionState
from services.auth.store import MailboxRecord, UserRecord
from services.runtime.protobuf_time import optional_timestamp

STATE_TO_PROTO: dict[ConnectionState, int] = {
    ConnectionState.CONNECTED: common_pb2.CONNECTION_STATE_CONNECTED,
    ConnectionState.REAUTH_REQUIRED: common_pb2.CONNECTION_STATE_REAUTH_REQUIRED,
    ConnectionState.REPLACED: common_pb2.CONNECTION_STATE_REPLACED,
    ConnectionState.DISCONNECTED: common_pb2.CONNECTION_STATE_DISCONNECTED,
}
ACCOUNT_TYPE_TO_PROTO: dict[str, int] = {
    AccountType.CONSUMER: auth_pb2.ACCOUNT_TYPE_CONSUMER,
    AccountType.WORKSPACE: auth_pb2.ACCOUNT_TYPE_WORKSPACE,
}
STATE_FROM_PROTO: dict[int, ConnectionState] = {number: state for state, number in STATE_TO_PROTO.items()}

EVENT_KIND_TO_PROTO: dict[ConnectionEventKind, int] = {
    ConnectionEventKind.CONNECTED: events_pb2.CONNECTION_EVENT_KIND_CONNECTED,
    ConnectionEventKind.REPLACED: events_pb2.CONNECTION_EVENT_KIND_REPLACED,
    ConnectionEventKind.DISCONNECTED: events_pb2.CONNECTION_EVENT_KIND_DISCONNECTED,
    ConnectionEventKind.REAUTH_REQUIRED: events_pb2.CONNECTION_EVENT_KIND_REAUTH_REQUIRED,
    ConnectionEventKind.REAUTHORIZED: events_pb2.CONNECTION_EVENT_KIND_REAUTHORIZED,
}


def snapshot(connection: Connection) -> common_pb2.ConnectionSnapshot:
    return common_pb2.ConnectionSnapshot(
        connection_id=connection.connection_id,
        user_id=connection.user_id,
        location_id=connection.location_id,
        state=STATE_TO_PROTO[connection.state],  # type: ignore[arg-type]
        start_history_id=connection.start_history_id,
        start_time=optional_timestamp(connection.start_time),
        state_change_time=optional_timestamp(connection.state_change_time),
    )


def connection_proto(
    connection: Connection, mailbox: MailboxRecord | None, user: UserRecord | None = None
) -> auth_pb2.Connection:
    """The UI's view of a connection: its state, mailbox address, start point, last error and watch expiry."""
    return auth_pb2.Connection(
        connection_id=connection.connection_id,
        user_id=connection.user_id,
        location_id=connection.location_id,
        mailbox_id=connection.mailbox_id,
        mailbox_email=mailbox.email if mailbox else "",
        state=STATE_TO_PROTO[connection.state],  # type: ignore[arg-type]
        start_history_id=connection.start_history_id,
        start_time=optional_timestamp(connection.start_time),
        connect_time=optional_timestamp(connection.start_time),
        state_change_time=optional_timestamp(connection.state_change_time),
        last_error=connection.last_error or "",
        watch_expire_time=optional_timestamp(
            mailbox.watch_expires_at if mailbox and connection.active else None
        ),
        reconnect_required=connection.state is ConnectionState.REAUTH_REQUIRED,
        replaced_by_connection_id=connection.replaced_by_connection_id or "",
        user_display_name=user.display_name if user else "",
    )


def user_proto(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=user.user_id,
        crm_email=user.crm_email,
        display_name=user.display_name,
        location_ids=list(user.location_ids),
        version=user.version,
    )


def user_record(user: auth_pb2.User) -> UserRecord:
    return UserRecord(
        user_id=user.user_id,
        crm_email=user.crm_email,
        display_name=user.display_name,
        location_ids=tuple(user.location_ids),
        version=user.version,
    )


def mailbox_proto(mailbox: MailboxRecord, connections: list[Connection]) -> auth_pb2.Mailbox:
    return auth_pb2.Mailbox(
        mailbox_id=mailbox.mailbox_id,
        email=mailbox.email,
        connections=[snapshot(c) for c in connections],
        watch_expire_time=optional_timestamp(mailbox.watch_expires_at),
        workspace=mailbox.account_type == AccountType.WORKSPACE,
        account_type=ACCOUNT_TYPE_TO_PROTO.get(mailbox.account_type, auth_pb2.ACCOUNT_TYPE_UNSPECIFIED),
    )
