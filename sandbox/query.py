"""The subset of Gmail's search language the sandbox understands (`q` of messages.list and threads.list).

Like Gmail, a search sees a message only once the search index caught up with it (`index_lag_ms` after it was
stored); a listing without `q` (labelIds only) sees every message at once. `after:`/`before:` compare the internal
date (epoch seconds exactly, calendar dates at midnight Pacific time), `rfc822msgid:` the Message-ID exactly.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sandbox.errors import bad_request
from sandbox.state import Mailbox, StoredMessage

# Gmail reads calendar dates in `q` as midnight Pacific time; epoch seconds are taken as they are.
_SEARCH_ZONE = ZoneInfo("America/Los_Angeles")
_RELATIVE_UNITS = {"d": 1, "m": 30, "y": 365}

Predicate = Callable[[StoredMessage], bool]


def _instant_ms(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    for pattern in ("%Y/%m/%d", "%Y-%m-%d", "%m/%d/%Y"):
        try:
            return int(datetime.strptime(value, pattern).replace(tzinfo=_SEARCH_ZONE).timestamp() * 1000)
        except ValueError:
            continue
    raise bad_request(f"Invalid date in query: {value}", reason="invalidArgument")


def _label_matcher(mailbox: Mailbox, name: str) -> Predicate:
    wanted = name.lower().replace("-", " ")
    label_ids = {
        label.id
        for label in mailbox.labels.values()
        if label.id.lower() == name.lower() or label.name.lower().replace("-", " ") == wanted
    }
    return lambda m: any(label in m.label_ids for label in label_ids)


def _text_of(message: StoredMessage) -> str:
    parts = [message.parsed.header("Subject") or "", message.parsed.snippet]
    parts.extend(
        leaf.body.decode("utf-8", "replace")
        for leaf in message.parsed.leaves()
        if leaf.mime_type.startswith("text/") and not leaf.filename
    )
    return " ".join(parts).lower()


def _term(mailbox: Mailbox, term: str, now_ms: int) -> tuple[Predicate, bool]:
    """A predicate for one search term, and whether the term names TRASH/SPAM explicitly."""
    key, sep, value = term.partition(":")
    key = key.lower() if sep else ""
    value = value.strip('"')
    if key in ("after", "newer"):
        limit = _instant_ms(value)
        return (lambda m: m.internal_date_ms >= limit), False
    if key in ("before", "older"):
        limit = _instant_ms(value)
        return (lambda m: m.internal_date_ms < limit), False
    if key in ("newer_than", "older_than"):
        found = re.fullmatch(r"(\d+)([dmy])", value.lower())
        if not found:
            raise bad_request(f"Invalid query term: {term}", reason="invalidArgument")
        edge = now_ms - int(timedelta(days=int(found[1]) * _RELATIVE_UNITS[found[2]]).total_seconds() * 1000)
        if key == "newer_than":
            return (lambda m: m.internal_date_ms >= edge), False
        return (lambda m: m.internal_date_ms < edge), False
    if key == "in":
        if value.lower() == "anywhere":
            return (lambda m: True), True
        return _label_matcher(mailbox, value), value.lower() in ("trash", "spam")
    if key == "label":
        return _label_matcher(mailbox, value), value.lower() in ("trash", "spam")
    if key == "is":
        flags = {
            "unread": ("UNREAD", True),
            "read": ("UNREAD", False),
            "starred": ("STARRED", True),
            "important": ("IMPORTANT", True),
        }
        if value.lower() not in flags:
            raise bad_request(f"Invalid query term: {term}", reason="invalidArgument")
        label, present = flags[value.lower()]
        return (lambda m: (label in m.label_ids) == present), False
    if key in ("from", "to", "cc", "bcc", "subject"):
        header = key.capitalize() if key != "bcc" else "Bcc"
        needle = value.lower()
        return (lambda m: needle in (m.parsed.header(header) or "").lower()), False
    if key == "rfc822msgid":
        wanted = value if value.startswith("<") else f"<{value}>"
        return (lambda m: m.rfc_message_id == wanted), False
    if key == "has" and value.lower() == "attachment":
        return (lambda m: any(leaf.filename for leaf in m.parsed.leaves())), False
    needle = term.lower().strip('"')
    return (lambda m: needle in _text_of(m)), False


def _negation(predicate: Predicate) -> Predicate:
    return lambda message: not predicate(message)


def compile_query(
    mailbox: Mailbox, query: str, now_ms: int, *, index_lag_ms: int = 0
) -> tuple[list[Predicate], bool]:
    """All predicates of a query (implicit AND; `-term` negates) and whether it opts into TRASH/SPAM."""
    try:
        terms = shlex.split(query)
    except ValueError as error:
        raise bad_request(f"Invalid query: {error}", reason="invalidArgument") from error
    predicates: list[Predicate] = []
    if terms and index_lag_ms > 0:
        indexed_before = now_ms - index_lag_ms
        predicates.append(lambda message: message.stored_at_ms <= indexed_before)
    includes_spam_trash = False
    for term in terms:
        negated = term.startswith("-") and len(term) > 1
        predicate, names_spam_trash = _term(mailbox, term[1:] if negated else term, now_ms)
        if negated:
            predicates.append(_negation(predicate))
        else:
            predicates.append(predicate)
            includes_spam_trash = includes_spam_trash or names_spam_trash
    return predicates, includes_spam_trash
