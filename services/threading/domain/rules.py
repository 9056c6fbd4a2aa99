"""The sync rules (sync-rules.md R1-R9, R15, R16) as pure functions: a message plus what the store knows in,
placements plus one explained decision per location considered out. No I/O, no clock: time comes in the message.

Order, as the rules file says: R1 (scope), R6 (the echo of a CRM send, which must not be placed again), R4 (known
thread), then R2/R3 (inbound), R5 (sent from Gmail) or R9 (BCC drop) for a new thread. A CONNECTED or
REAUTH_REQUIRED connection is active (a paused mailbox resumes without losing mail, R12); a REPLACED or
DISCONNECTED one still covers messages Gmail received before its state changed (they arrived while it was active).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from services.threading.domain.addresses import normalize_email, normalize_message_id
from services.threading.domain.model import (
    EXCLUDED_LABELS,
    ConnectionSnapshot,
    ConnectionState,
    Contact,
    CrmSend,
    Decision,
    Direction,
    EchoLink,
    IncomingMessage,
    Knowledge,
    LocationDecision,
    NewContact,
    Outcome,
    Participant,
    Placement,
    Role,
    Source,
    ThreadHome,
    ThreadTarget,
    gmail_thread_key,
    message_key,
)

_ACTIVE_STATES = (ConnectionState.CONNECTED, ConnectionState.REAUTH_REQUIRED)


@dataclass(frozen=True)
class _Scope:
    """Whether one location may receive the message at all (R1, R9 checks, R10, R11), and for which user."""

    location_id: str
    eligible: bool
    user_id: str = ""
    rule_id: str = ""
    reason: str = ""


def decide(message: IncomingMessage, knowledge: Knowledge, *, may_wait: bool = True) -> Decision:
    """Where the message belongs, with the reason for every location considered.

    `may_wait` is False once the consumer has redelivered the message as often as it allows: the rules then
    decide with what they know instead of waiting for a CRM send's answer or a parent message.
    """
    key = message_key(message)
    scopes = _scopes(message)
    if not scopes:
        return Decision(Outcome.DECIDED, key)

    excluded = sorted(set(message.labels) & set(EXCLUDED_LABELS))
    if excluded:
        if may_wait and _waits_for_parent(message, knowledge.seen_message_ids):
            # Even an excluded reply waits for its parent: a later reply that names it must not see the chain
            # as known before the parent has been decided.
            return _wait_for_parent(message, key)
        reason = f"the message carries Gmail's {', '.join(excluded)} label; spam, trash, drafts and chats never sync"
        return Decision(
            Outcome.DECIDED, key, tuple(LocationDecision(s.location_id, False, "R1", reason) for s in scopes)
        )

    echo = _echo_of_crm_send(message, knowledge.crm_sends)
    if echo is not None:
        return _echo_decision(key, scopes, echo)
    if may_wait and _waits_for_crm_send(message, knowledge.crm_sends):
        return Decision(
            Outcome.WAIT_FOR_SEND,
            key,
            wait_reason=f"mailbox {message.mailbox_id} has a CRM send without Gmail's answer yet; this SENT copy "
            "may be its echo (R6)",
        )

    homes = _homes_in_scope(knowledge.homes, scopes)
    if homes:
        return _follow_thread(message, key, scopes, homes)

    stored_here = {h.location_id: h for h in _homes_in_scope(_own_copies(knowledge), scopes)}
    if may_wait and not stored_here and _waits_for_parent(message, knowledge.seen_message_ids):
        return _wait_for_parent(message, key)
    return _new_thread(message, key, scopes, knowledge.contacts, stored_here)


def place_crm_send(
    *,
    send_id: str,
    location_id: str,
    recipients: tuple[Participant, ...],
    contacts: Iterable[Contact],
    conversation_id: str = "",
    contact_id: str = "",
    thread_id: str = "",
    mailbox_id: str = "",
    gmail_thread_id: str = "",
) -> LocationDecision:
    """R6: a CRM send is recorded in its location's conversation at once (given, or the first To recipient's)."""
    if thread_id:
        target = ThreadTarget(existing_thread_id=thread_id)
    elif gmail_thread_id and mailbox_id:
        target = ThreadTarget(new_key=gmail_thread_key(mailbox_id, gmail_thread_id))
    else:
        target = ThreadTarget(new_key=f"crm:{send_id}")
    if conversation_id:
        placement = Placement(
            location_id, contact_id, target, Direction.OUTBOUND, "R6", conversation_id=conversation_id
        )
        return LocationDecision(
            location_id, True, "R6", "sent from the CRM in this conversation", contact_id, placement
        )
    to = sorted((p for p in recipients if p.role is Role.TO), key=lambda p: p.position)
    local = [c for c in contacts if c.location_id == location_id]
    for recipient in to:
        contact = _oldest_contact(local, recipient.email)
        if contact is not None:
            placement = Placement(location_id, contact.contact_id, target, Direction.OUTBOUND, "R6")
            return LocationDecision(
                location_id,
                True,
                "R6",
                f"sent from the CRM to {recipient.email}, contact {contact.contact_id}",
                contact.contact_id,
                placement,
            )
    return LocationDecision(
        location_id, False, "R6", "sent from the CRM, but no To recipient is a contact of the location"
    )


def _scopes(message: IncomingMessage) -> list[_Scope]:
    if message.source is Source.BCC_DROP:
        drop = message.bcc_drop
        if drop is None:
            return []
        if drop.rejection_reason:
            return [
                _Scope(
                    drop.location_id, False, rule_id="R9", reason=f"BCC drop refused: {drop.rejection_reason}"
                )
            ]
        return [_Scope(drop.location_id, True, user_id=drop.sender_user_id)]
    by_location: dict[str, list[ConnectionSnapshot]] = {}
    for connection in message.connections:
        by_location.setdefault(connection.location_id, []).append(connection)
    return [_location_scope(location, conns, message) for location, conns in sorted(by_location.items())]


def _location_scope(
    location_id: str, connections: list[ConnectionSnapshot], message: IncomingMessage
) -> _Scope:
    refusals: list[_Scope] = []
    # Active connections first, so a location whose old connection was replaced still syncs through the new one.
    for connection in sorted(connections, key=lambda c: (c.state not in _ACTIVE_STATES, c.connection_id)):
        refusal = _connection_refusal(connection, message)
        if refusal is None:
            return _Scope(location_id, True, user_id=connection.user_id)
        refusals.append(_Scope(location_id, False, rule_id=refusal[0], reason=refusal[1]))
    return refusals[0]


def _connection_refusal(connection: ConnectionSnapshot, message: IncomingMessage) -> tuple[str, str] | None:
    if connection.state not in _ACTIVE_STATES:
        cut = connection.state_change_time
        if cut is None or message.internal_time >= cut:
            rule = "R10" if connection.state is ConnectionState.REPLACED else "R11"
            what = "replaced by Update Email" if rule == "R10" else "disconnected"
            when = f" at {_iso(cut)}" if cut else ""
            return (
                rule,
                f"connection {connection.connection_id} was {what}{when}; nothing new syncs through it",
            )
    if connection.start_time is not None and message.internal_time < connection.start_time:
        return "R1", (
            f"arrived at {_iso(message.internal_time)}, before connection {connection.connection_id} started at "
            f"{_iso(connection.start_time)}; past emails are not synced"
        )
    if (
        connection.start_history_id
        and message.history_id
        and message.history_id <= connection.start_history_id
    ):
        return "R1", (
            f"history id {message.history_id} is not after the start point {connection.start_history_id} of "
            f"connection {connection.connection_id}; past emails are not synced"
        )
    return None


def _echo_of_crm_send(message: IncomingMessage, sends: tuple[CrmSend, ...]) -> CrmSend | None:
    if message.source is not Source.GMAIL_SYNC or message.direction is not Direction.OUTBOUND:
        return None
    for send in sends:
        if send.mailbox_id != message.mailbox_id:
            continue
        if send.gmail_message_id and send.gmail_message_id == message.gmail_message_id:
            return send
        ids = {normalize_message_id(send.rfc_message_id), normalize_message_id(send.final_rfc_message_id)} - {
            ""
        }
        if message.message_id and message.message_id in ids:
            return send
    return None


def _echo_decision(key: str, scopes: list[_Scope], send: CrmSend) -> Decision:
    recorded = bool(send.message_id)
    if recorded:
        home_reason = (
            f"the Gmail copy of CRM send {send.send_id}, already recorded here; linked, not stored twice"
        )
    else:
        home_reason = (
            f"the Gmail copy of CRM send {send.send_id}, which was not recorded (no contact to file it under)"
        )
    away_reason = (
        f"the Gmail copy of CRM send {send.send_id} from location {send.location_id}; it stays there"
    )
    decisions = [
        LocationDecision(s.location_id, recorded, "R6", home_reason)
        if s.location_id == send.location_id
        else LocationDecision(s.location_id, False, "R6", away_reason)
        for s in scopes
    ]
    if send.location_id not in {s.location_id for s in scopes}:
        decisions.append(LocationDecision(send.location_id, recorded, "R6", home_reason))
    echo = EchoLink(send.send_id, send.location_id, send.message_id) if recorded else None
    return Decision(Outcome.DECIDED, key, tuple(decisions), echo=echo)


def _waits_for_crm_send(message: IncomingMessage, sends: tuple[CrmSend, ...]) -> bool:
    if message.source is not Source.GMAIL_SYNC or message.direction is not Direction.OUTBOUND:
        return False
    return any(s.mailbox_id == message.mailbox_id and s.unresolved and not s.gmail_message_id for s in sends)


def _wait_for_parent(message: IncomingMessage, key: str) -> Decision:
    return Decision(
        Outcome.WAIT_FOR_PARENT,
        key,
        wait_reason=f"replies to {message.parent_ids[0]}, which has not been seen yet; waiting for it keeps "
        "the thread whole whatever the arrival order (R4)",
    )


def _waits_for_parent(message: IncomingMessage, seen: frozenset[str]) -> bool:
    parents = message.parent_ids
    return bool(parents) and not any(p in seen for p in parents)


def _homes_in_scope(homes: Iterable[ThreadHome], scopes: list[_Scope]) -> list[ThreadHome]:
    locations = {s.location_id for s in scopes}
    return [h for h in homes if h.location_id in locations and h.found_by != "same_message"]


def _own_copies(knowledge: Knowledge) -> list[ThreadHome]:
    return [
        ThreadHome(
            h.location_id,
            h.conversation_id,
            h.contact_id,
            h.thread_id,
            "gmail_thread",
            h.crm_started,
            h.create_time,
        )
        for h in knowledge.homes
        if h.found_by == "same_message"
    ]


def _preferred_home(homes: list[ThreadHome]) -> ThreadHome:
    """A Gmail thread match beats a Message-ID match; then the oldest thread, so the choice is stable."""
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    return min(homes, key=lambda h: (h.found_by != "gmail_thread", h.create_time or never, h.thread_id))


def _aliases(message: IncomingMessage) -> tuple[str, ...]:
    if message.source is Source.GMAIL_SYNC and message.gmail_thread_id:
        return (gmail_thread_key(message.mailbox_id, message.gmail_thread_id),)
    return ()


def _follow_thread(
    message: IncomingMessage, key: str, scopes: list[_Scope], homes: list[ThreadHome]
) -> Decision:
    by_location: dict[str, list[ThreadHome]] = {}
    for home in homes:
        by_location.setdefault(home.location_id, []).append(home)
    where = ", ".join(sorted(by_location))
    decisions: list[LocationDecision] = []
    placements: list[Placement] = []
    for scope in scopes:
        candidates = by_location.get(scope.location_id)
        if not candidates:
            origin = "started from the CRM in" if any(h.crm_started for h in homes) else "that lives in"
            reason = f"belongs to a thread {origin} {where}; replies go only where their thread lives"
            decisions.append(LocationDecision(scope.location_id, False, "R4", reason))
            continue
        home = _preferred_home(candidates)
        if not scope.eligible:
            decisions.append(
                LocationDecision(scope.location_id, False, scope.rule_id, scope.reason, home.contact_id)
            )
            continue
        placement = Placement(
            scope.location_id,
            home.contact_id,
            ThreadTarget(
                existing_thread_id=home.thread_id,
                # Found by its Gmail thread: that key already points here.
                alias_keys=() if home.found_by == "gmail_thread" else _aliases(message),
            ),
            message.direction,
            "R4",
            conversation_id=home.conversation_id,
        )
        how = "the same Gmail thread" if home.found_by == "gmail_thread" else "a Message-ID it replies to"
        reason = (
            f"reply in a known thread (found by {how}): thread {home.thread_id} of contact {home.contact_id}"
        )
        decisions.append(LocationDecision(scope.location_id, True, "R4", reason, home.contact_id, placement))
        placements.append(placement)
    return Decision(Outcome.DECIDED, key, tuple(decisions), placements=tuple(placements))


def _new_thread(
    message: IncomingMessage,
    key: str,
    scopes: list[_Scope],
    contacts: tuple[Contact, ...],
    stored_here: dict[str, ThreadHome],
) -> Decision:
    eligible_count = sum(1 for s in scopes if s.eligible)
    decisions: list[LocationDecision] = []
    placements: list[Placement] = []
    for scope in scopes:
        if not scope.eligible:
            decisions.append(LocationDecision(scope.location_id, False, scope.rule_id, scope.reason))
            continue
        local = [c for c in contacts if c.location_id == scope.location_id]
        decision = _place_new(message, key, scope, local, eligible_count)
        stored = stored_here.get(scope.location_id)
        if stored is not None:
            decision = _link_to_stored(message, key, decision, stored)
        decisions.append(decision)
        if decision.placement is not None:
            placements.append(decision.placement)
    return Decision(Outcome.DECIDED, key, tuple(decisions), placements=tuple(placements))


def _link_to_stored(
    message: IncomingMessage, key: str, decision: LocationDecision, stored: ThreadHome
) -> LocationDecision:
    """The same email is already stored in this location (another mailbox, a drop, a redelivery; R15): this copy
    joins the stored message's thread instead of starting a second one. A drop still creates its contact (R9)."""
    new_contact = decision.placement.new_contact if decision.placement is not None else None
    placement = Placement(
        decision.location_id,
        stored.contact_id,
        ThreadTarget(existing_thread_id=stored.thread_id, alias_keys=_aliases(message)),
        message.direction,
        decision.rule_id if decision.synced else "R15",
        conversation_id=stored.conversation_id,
        new_contact=new_contact,
    )
    if decision.synced:
        return LocationDecision(
            decision.location_id,
            True,
            decision.rule_id,
            f"{decision.reason}; the email was already stored here (R15), so this copy is linked to it",
            stored.contact_id,
            placement,
        )
    return LocationDecision(
        decision.location_id,
        True,
        "R15",
        f"already stored in this location (message key {key}); this copy is linked to it",
        stored.contact_id,
        placement,
    )


def _new_thread_target(message: IncomingMessage, key: str) -> ThreadTarget:
    if message.source is Source.GMAIL_SYNC and message.gmail_thread_id:
        return ThreadTarget(new_key=gmail_thread_key(message.mailbox_id, message.gmail_thread_id))
    return ThreadTarget(new_key=f"chain:{key}")


def _place_new(
    message: IncomingMessage, key: str, scope: _Scope, contacts: list[Contact], eligible_count: int
) -> LocationDecision:
    if message.source is Source.BCC_DROP:
        return _place_drop(message, key, scope, contacts)
    if message.direction is Direction.OUTBOUND:
        return _place_sent(message, key, scope, contacts)
    return _place_inbound(message, key, scope, contacts, eligible_count)


def _place_inbound(
    message: IncomingMessage, key: str, scope: _Scope, contacts: list[Contact], eligible_count: int
) -> LocationDecision:
    sender = message.sender
    if sender is None:
        return LocationDecision(
            scope.location_id, False, "R2", "the message names no sender (no From header)"
        )
    matching = _matching_contacts(contacts, sender.email)
    if not matching:
        return LocationDecision(
            scope.location_id,
            False,
            "R2",
            f"no contact of the location has the sender's address {sender.email}",
        )
    contact = matching[0]
    duplicates = (
        f" (the oldest of {len(matching)} contacts with that address, R8)" if len(matching) > 1 else ""
    )
    if contact.assigned_user_id != scope.user_id:
        assigned = f"user {contact.assigned_user_id}" if contact.assigned_user_id else "nobody"
        return LocationDecision(
            scope.location_id,
            False,
            "R2",
            f"sender {sender.email} is contact {contact.contact_id}{duplicates}, assigned to {assigned}, not to "
            f"user {scope.user_id} whose mailbox received it",
            contact.contact_id,
        )
    rule = "R3" if eligible_count > 1 else "R2"
    placement = Placement(
        scope.location_id, contact.contact_id, _new_thread_target(message, key), Direction.INBOUND, rule
    )
    several = (
        "; the mailbox is connected in several locations and each one decides alone" if rule == "R3" else ""
    )
    return LocationDecision(
        scope.location_id,
        True,
        rule,
        f"inbound from contact {contact.contact_id}{duplicates}, assigned to user {scope.user_id}{several}",
        contact.contact_id,
        placement,
    )


def _place_sent(
    message: IncomingMessage, key: str, scope: _Scope, contacts: list[Contact]
) -> LocationDecision:
    for recipient in message.recipients_in_header_order:
        matching = _matching_contacts(contacts, recipient.email)
        if matching:
            contact = matching[0]
            placement = Placement(
                scope.location_id,
                contact.contact_id,
                _new_thread_target(message, key),
                Direction.OUTBOUND,
                "R5",
            )
            return LocationDecision(
                scope.location_id,
                True,
                "R5",
                f"sent from Gmail; the first recipient that is a contact is {recipient.email} "
                f"({recipient.role.value} #{recipient.position}), contact {contact.contact_id}",
                contact.contact_id,
                placement,
            )
    return LocationDecision(
        scope.location_id,
        False,
        "R5",
        "sent from Gmail, but none of its recipients is a contact of the location",
    )


def _place_drop(
    message: IncomingMessage, key: str, scope: _Scope, contacts: list[Contact]
) -> LocationDecision:
    to = message.with_role(Role.TO)
    if not to:
        return LocationDecision(
            scope.location_id, False, "R9", "BCC drop without a To recipient: no counterpart"
        )
    first = to[0]
    target = _new_thread_target(message, key)
    matching = _matching_contacts(contacts, first.email)
    if matching:
        contact = matching[0]
        placement = Placement(scope.location_id, contact.contact_id, target, Direction.OUTBOUND, "R9")
        return LocationDecision(
            scope.location_id,
            True,
            "R9",
            f"BCC drop; the first To recipient {first.email} is contact {contact.contact_id}",
            contact.contact_id,
            placement,
        )
    new_contact = NewContact(
        scope.location_id, normalize_email(first.email), first.display_name, scope.user_id
    )
    placement = Placement(scope.location_id, "", target, Direction.OUTBOUND, "R9", new_contact=new_contact)
    return LocationDecision(
        scope.location_id,
        True,
        "R9",
        f"BCC drop; the first To recipient {first.email} is no contact yet: created, assigned to user {scope.user_id}",
        "",
        placement,
    )


def _matching_contacts(contacts: Iterable[Contact], email: str) -> list[Contact]:
    """Contacts with the address, oldest first (R8)."""
    wanted = normalize_email(email)
    return sorted((c for c in contacts if wanted in c.emails), key=lambda c: (c.create_time, c.contact_id))


def _oldest_contact(contacts: Iterable[Contact], email: str) -> Contact | None:
    matching = _matching_contacts(contacts, email)
    return matching[0] if matching else None


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds")
