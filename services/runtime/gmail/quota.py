"""What each Gmail method costs in quota units (reference/gmail_api.md 4.1): the legacy table Google still applies
to projects created before May 2026, and the 2026 table of newer projects. The adapter reports the units it spends
and paces each user's requests with them."""

from __future__ import annotations

LEGACY_UNITS: dict[str, int] = {
    "users.getProfile": 1,
    "users.labels.list": 1,
    "users.history.list": 2,
    "users.messages.get": 5,
    "users.messages.list": 5,
    "users.messages.modify": 5,
    "users.messages.attachments.get": 5,
    "users.messages.trash": 5,
    "users.threads.get": 10,
    "users.stop": 50,
    "users.watch": 100,
    "users.messages.send": 100,
}
# As of May 2026: reads of message content cost four times as much.
UNITS_2026: dict[str, int] = {
    **LEGACY_UNITS,
    "users.messages.get": 20,
    "users.messages.attachments.get": 20,
    "users.messages.trash": 20,
    "users.threads.get": 40,
}
QUOTA_TABLES: dict[str, dict[str, int]] = {"legacy": LEGACY_UNITS, "2026": UNITS_2026}


def quota_units(method: str, table: str = "legacy") -> int:
    """Units one call of `method` costs in `table`; 5 (the common read cost) for a method not in the table."""
    return QUOTA_TABLES[table].get(method, 5)
