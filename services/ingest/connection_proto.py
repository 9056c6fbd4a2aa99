"""Connection snapshots between their protobuf form (auth's answers, connection events, stamped messages) and
ingest's `ConnectionInfo`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from mailsync.v1 import common_pb2
from services.ingest.mailboxes import ConnectionInfo
from services.runtime.protobuf_time import to_timestamp

_STATES = {
    common_pb2.CONNECTION_STATE_CONNECTED: "CONNECTED",
    common_pb2.CONNECTION_STATE_REAUTH_REQUIRED: "REAUTH_REQUIRED",
    common_pb2.CONNECTION_STATE_REPLACED: "REPLACED",
    common_pb2.CONNECTION_STATE_DISCONNECTED: "DISCONNECTED",
}
_STATE_VALUES = {name: value for value, name in _STATES.items()}


def connection_from_proto(snapshot: common_pb2.ConnectionSnapshot) -> ConnectionInfo:
    return ConnectionInfo(
        connection_id=snapshot.connection_id,
        user_id=snapshot.user_id,
        location_id=snapshot.location_id,
        state=_STATES.get(snapshot.state, "UNSPECIFIED"),
        start_history_id=int(snapshot.start_history_id),
        start_time=snapshot.start_time.ToDatetime(tzinfo=dt.UTC),
        state_change_time=(
            snapshot.state_change_time.ToDatetime(tzinfo=dt.UTC)
            if snapshot.HasField("state_change_time")
            else None
        ),
    )


def connection_to_proto(connection: ConnectionInfo) -> common_pb2.ConnectionSnapshot:
    snapshot = common_pb2.ConnectionSnapshot(
        connection_id=connection.connection_id,
        user_id=connection.user_id,
        location_id=connection.location_id,
        state=_STATE_VALUES.get(connection.state, common_pb2.CONNECTION_STATE_UNSPECIFIED),
        start_history_id=connection.start_history_id,
    )
    snapshot.start_time.CopyFrom(to_timestamp(connection.start_time))
    if connection.state_change_time is not None:
        snapshot.state_change_time.CopyFrom(to_timestamp(connection.state_change_time))
    return snapshot


def connections_to_proto(connections: Iterable[ConnectionInfo]) -> list[common_pb2.ConnectionSnapshot]:
    return [connection_to_proto(c) for c in connections]
