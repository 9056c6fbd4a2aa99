"""The chaos tier's checker: what the outside world did (deliveries, sends) against what Gmail and the CRM hold
afterwards, counted by Gmail id, by Message-ID and by the token each case writes into every message. Pure: it
reads the observations `tools.chaos` collected and says what was lost and what was duplicated, so the negative
controls (and the unit tests) can feed it a world with one copy too many or one too few.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Delivery:
    """One message the outside world put into a mailbox: its token (in the subject), Gmail id and Message-ID,
    and the conversation it belongs in (the contact it came from)."""

    token: str
    gmail_id: str
    rfc_message_id: str
    contact_id: str


@dataclass(frozen=True)
class StoredMessage:
    """One CRM message as threading's ListMessages shows it."""

    message_id: str
    token: str
    rfc_message_id: str
    contact_id: str
    gmail_ids: tuple[str, ...]
    send_id: str = ""
    # The sync rule that placed it (R2, R5, R6, ...): says which path made a duplicate.
    rule_id: str = ""


@dataclass(frozen=True)
class SendOutcome:
    """One CRM send as the caller last saw it: its token (in the body), send id, final state, and the Gmail
    message it claims."""

    token: str
    send_id: str
    sent: bool
    gmail_id: str


@dataclass(frozen=True)
class GmailCopy:
    """One copy of a send in Gmail (the sender's Sent folder or the recipient's inbox)."""

    gmail_id: str
    rfc_message_id: str


@dataclass
class Verdict:
    """What one case's checker found; `problems` says each difference in words."""

    case: str
    kills: int = 0
    delivered: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    sends: int = 0
    gmail_copies: int = 0
    problems: list[str] = field(default_factory=list)
    # A negative control: a world with a copy injected on purpose, which the checker must fail.
    control: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> tuple[str, ...]:
        return (
            self.case,
            str(self.kills),
            str(self.delivered),
            str(self.stored),
            str(self.lost),
            str(self.duplicated),
            str(self.sends),
            str(self.gmail_copies),
            self.result,
        )

    @property
    def result(self) -> str:
        if self.control:
            return "caught" if not self.ok and self.duplicated else "MISSED"
        return "ok" if self.ok else "FAIL"


TABLE_HEADER = (
    "case",
    "kills",
    "delivered",
    "stored",
    "lost",
    "duplicated",
    "sends",
    "gmail copies",
    "result",
)


# How long a CRM message count must stay unchanged before it is read: at the expected count, and above it. A count
# above the expected one may be transient (a send's Sent copy placed by R5 before its `sent` record, merged into
# the send's R6 message once threading's 30 s ack wait redelivers that record), so it only counts as a duplicate
# once it held longer than that wait.
SETTLED_QUIET_SECONDS = 4.0
DUPLICATE_QUIET_SECONDS = 45.0


def count_settled(
    count: int,
    expected: int,
    unchanged_for: float,
    *,
    quiet: float = SETTLED_QUIET_SECONDS,
    duplicate_quiet: float = DUPLICATE_QUIET_SECONDS,
) -> bool:
    """Whether a count that has been `count` for `unchanged_for` seconds is final enough to check."""
    if count < expected:
        return False
    return unchanged_for >= (quiet if count == expected else duplicate_quiet)


def table(verdicts: Iterable[Verdict]) -> str:
    rows = [TABLE_HEADER, *(v.row() for v in verdicts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def _over(counts: Counter[str]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def check_inbound(
    case: str, deliveries: list[Delivery], stored: list[StoredMessage], *, kills: int = 0
) -> Verdict:
    """Every delivery stored once, in its contact's conversation, carrying its Gmail id; nothing else stored."""
    verdict = Verdict(case, kills=kills, delivered=len(deliveries), stored=len(stored))
    expected = {d.token: d for d in deliveries}
    by_token = Counter(m.token for m in stored)
    by_rfc = Counter(m.rfc_message_id for m in stored)
    gmail_ids = Counter(g for m in stored for g in m.gmail_ids)
    lost = sorted(token for token in expected if by_token[token] == 0)
    verdict.lost = len(lost)
    # A token twice is the same email shown twice (whatever its Message-ID); a Message-ID twice, or a Gmail id
    # claimed by two CRM messages, is the same Gmail message stored twice.
    duplicated_tokens = sorted(t for t, n in by_token.items() if n > 1)
    verdict.duplicated = max(_over(by_token), _over(by_rfc), _over(gmail_ids))
    unexpected = sorted({m.token for m in stored} - set(expected))
    misplaced = sorted(
        m.token for m in stored if m.token in expected and m.contact_id != expected[m.token].contact_id
    )
    without_copy = sorted(d.token for d in deliveries if by_token[d.token] and d.gmail_id not in gmail_ids)
    if lost:
        verdict.problems.append(f"{len(lost)} delivered, never stored: {lost[:5]}")
    if verdict.duplicated:
        verdict.problems.append(
            f"{verdict.duplicated} stored more than once: tokens {duplicated_tokens[:5]}, "
            f"Message-IDs {[r for r, n in by_rfc.items() if n > 1][:5]}"
        )
    if unexpected:
        verdict.problems.append(f"{len(unexpected)} stored that nobody delivered: {unexpected[:5]}")
    if misplaced:
        verdict.problems.append(f"{len(misplaced)} in the wrong conversation: {misplaced[:5]}")
    if without_copy:
        verdict.problems.append(f"{len(without_copy)} stored without their Gmail copy: {without_copy[:5]}")
    return verdict


def check_sends(
    case: str,
    sends: list[SendOutcome],
    sent_folder: list[GmailCopy],
    recipient_inbox: list[GmailCopy],
    stored: list[StoredMessage],
    quota_used: int,
    *,
    kills: int = 0,
) -> Verdict:
    """Every send SENT and exactly once in Gmail (the sender's Sent folder and the recipient's inbox, one copy
    each, claimed by that send alone), exactly once in the CRM, and GetQuota.used equal to the copies sent."""
    verdict = Verdict(
        case,
        kills=kills,
        sends=len(sends),
        delivered=len(recipient_inbox),
        stored=len(stored),
        gmail_copies=len(sent_folder),
    )
    sent_ids = Counter(c.gmail_id for c in sent_folder)
    sent_rfc = Counter(c.rfc_message_id for c in sent_folder)
    claimed = Counter(s.gmail_id for s in sends if s.sent)
    unsent = sorted(s.token for s in sends if not s.sent)
    unclaimed_copies = sorted(set(sent_ids) - set(claimed))
    missing_copies = sorted(s.token for s in sends if s.sent and s.gmail_id not in sent_ids)
    crm_by_send = Counter(m.send_id for m in stored if m.send_id)
    crm_by_token = Counter(m.token for m in stored)
    crm_by_rfc = Counter(m.rfc_message_id for m in stored)
    crm_lost = sorted(s.token for s in sends if crm_by_token[s.token] == 0)
    # Sends that claim the same Gmail message: all but one have no copy of their own.
    claimants: dict[str, list[str]] = {}
    for send in sends:
        if send.sent:
            claimants.setdefault(send.gmail_id, []).append(send.token)
    sharing = {token for tokens in claimants.values() for token in tokens[1:]}
    verdict.lost = len(set(unsent) | set(missing_copies) | set(crm_lost) | sharing)
    gmail_extra = max(len(sent_folder) - len(sends), _over(sent_rfc), len(unclaimed_copies), 0)
    inbox_extra = max(len(recipient_inbox) - len(sends), 0)
    crm_extra = max(_over(crm_by_token), _over(crm_by_send), _over(crm_by_rfc), len(stored) - len(sends), 0)
    verdict.duplicated = max(gmail_extra, inbox_extra, crm_extra, _over(claimed))
    if unsent:
        verdict.problems.append(f"{len(unsent)} sends never SENT: {unsent[:5]}")
    if missing_copies:
        verdict.problems.append(
            f"{len(missing_copies)} sends claim a Gmail id not in Sent: {missing_copies[:5]}"
        )
    if len(sent_folder) != len(sends) or unclaimed_copies:
        verdict.problems.append(
            f"Gmail's Sent folder holds {len(sent_folder)} copies for {len(sends)} sends "
            f"({len(unclaimed_copies)} claimed by no send)"
        )
    if len(recipient_inbox) != len(sends):
        verdict.problems.append(f"the recipient got {len(recipient_inbox)} copies for {len(sends)} sends")
    if _over(claimed):
        verdict.problems.append(f"{_over(claimed)} sends claim a Gmail message another send claims")
    if crm_lost:
        verdict.problems.append(f"{len(crm_lost)} sends not in the CRM: {crm_lost[:5]}")
    if crm_extra:
        twice = sorted(t for t, n in crm_by_token.items() if n > 1)
        rules = Counter(m.rule_id or "?" for m in stored if m.token in twice)
        verdict.problems.append(
            f"the CRM shows {len(stored)} messages for {len(sends)} sends: {len(twice)} sends twice "
            f"({twice[:5]}; their messages by rule {dict(sorted(rules.items()))})"
        )
    if quota_used != len(sends):
        verdict.problems.append(f"GetQuota.used is {quota_used} for {len(sends)} sends")
    return verdict
