"""Between timezone-aware datetimes and google.protobuf.Timestamp, the same way in every service."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(when: dt.datetime) -> Timestamp:
    """A Timestamp of the instant (naive datetimes are taken as UTC)."""
    stamp = Timestamp()
    stamp.FromDatetime(when if when.tzinfo is None else when.astimezone(dt.UTC))
    return stamp


def optional_timestamp(when: dt.datetime | None) -> Timestamp | None:
    """None stays None, so a message field built from it stays unset."""
    return None if when is None else to_timestamp(when)
