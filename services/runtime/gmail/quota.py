"""What each Gmail method costs in quota units (reference/gmail_api.md 4.1, the legacy table Google still
applies to projects created before May 2026), so the adapter can report the units it spends."""

from __future__ import annotations

LEGACY_UNITS: dict[str, int] = {
    "users.getProfile": 1,
    "users.labels.list": 1,
    "users.history.list": 2,
    "users.messages.get": 5,
    "users.messages.list": 5,
    "users.messages.modify": 5,
    "users.messages.attachments.get": 5,
    "users.threads.get": 10,
    "users.stop": 50,
    "users.watch": 100,
    "users.messages.send": 100,
}


def quota_units(method: str) -> int:
    """Units one call of `method` costs; 5 (the common read cost) for a method not in the table."""
    return LEGACY_UNITS.get(method, 5)
