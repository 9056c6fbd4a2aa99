"""The life of one Gmail send: SENDING -> SENT / FAILED / UNKNOWN, and the rule that a send is never retried
blindly.

A Gmail call that got no answer (timeout, 5xx, lost connection, or a crash of the process that made it) may
have sent the message, so the next step is always to look for it in the mailbox's Sent folder by the send id the
product puts in every message it sends (SEND_ID_HEADER); only a search made after Gmail's search index had time
proves it absent and allows another call (SearchWindow). When the search itself cannot be done, the caller is
told UNKNOWN and the search is repeated later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum


class SendState(Enum):
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


class NextStep(Enum):
    CALL_GMAIL = "CALL_GMAIL"
    # A call was started; its answer is awaited. Found like this after a restart, the send is searched for.
    AWAIT_GMAIL_ANSWER = "AWAIT_GMAIL_ANSWER"
    SEARCH_SENT_FOLDER = "SEARCH_SENT_FOLDER"
    NOTHING = "NOTHING"


@dataclass(frozen=True)
class GmailIds:
    message_id: str
    thread_id: str


@dataclass(frozen=True)
class SendProgress:
    state: SendState
    next_step: NextStep
    gmail_calls: int = 0
    gmail: GmailIds | None = None
    reason: str = ""


@dataclass(frozen=True)
class GmailCallStarted:
    """Recorded (committed) right before messages.send is called."""


@dataclass(frozen=True)
class GmailAccepted:
    gmail: GmailIds


@dataclass(frozen=True)
class GmailRefused:
    """A definite no from Gmail (4xx other than a timeout, including the sending limit): nothing was sent."""

    reason: str


@dataclass(frozen=True)
class GmailNoAnswer:
    """No answer that says what happened: timeout, 5xx, connection lost."""

    reason: str


@dataclass(frozen=True)
class FoundInSentFolder:
    gmail: GmailIds


@dataclass(frozen=True)
class NotInSentFolder:
    """A search made after Gmail's search index had time did not find the send: it certainly did not go out."""


@dataclass(frozen=True)
class NotInSentFolderYet:
    """A search did not find the send, but Gmail's index may not show it yet: it is searched for again later."""

    reason: str


@dataclass(frozen=True)
class SentFolderUnavailable:
    reason: str


SendEvent = (
    GmailCallStarted
    | GmailAccepted
    | GmailRefused
    | GmailNoAnswer
    | FoundInSentFolder
    | NotInSentFolder
    | NotInSentFolderYet
    | SentFolderUnavailable
)


class InvalidSendTransition(Exception):
    """An event that cannot happen in the send's current step (a bug in the caller, never user input)."""


def new_send() -> SendProgress:
    return SendProgress(state=SendState.SENDING, next_step=NextStep.CALL_GMAIL)


def after_restart(progress: SendProgress) -> SendProgress:
    """What a send left behind by a crashed process does next: a started call is searched for, never repeated."""
    if progress.next_step is NextStep.AWAIT_GMAIL_ANSWER:
        return advance(progress, GmailNoAnswer("the process making the Gmail call stopped before its answer"))
    return progress


def advance(progress: SendProgress, event: SendEvent, *, max_gmail_calls: int = 3) -> SendProgress:
    """The send's progress after `event`; raises InvalidSendTransition when the event does not fit the step."""
    step = progress.next_step
    if step is NextStep.CALL_GMAIL and isinstance(event, GmailCallStarted):
        return replace(progress, next_step=NextStep.AWAIT_GMAIL_ANSWER, gmail_calls=progress.gmail_calls + 1)
    if step is NextStep.AWAIT_GMAIL_ANSWER:
        if isinstance(event, GmailAccepted):
            return _sent(progress, event.gmail)
        if isinstance(event, GmailRefused):
            return replace(progress, state=SendState.FAILED, next_step=NextStep.NOTHING, reason=event.reason)
        if isinstance(event, GmailNoAnswer):
            return replace(progress, next_step=NextStep.SEARCH_SENT_FOLDER, reason=event.reason)
    if step is NextStep.SEARCH_SENT_FOLDER:
        if isinstance(event, FoundInSentFolder):
            return _sent(progress, event.gmail)
        if isinstance(event, NotInSentFolder):
            if progress.gmail_calls >= max_gmail_calls:
                return replace(
                    progress,
                    state=SendState.FAILED,
                    next_step=NextStep.NOTHING,
                    reason=f"not in the Sent folder after {progress.gmail_calls} Gmail calls without an answer",
                )
            return replace(progress, state=SendState.SENDING, next_step=NextStep.CALL_GMAIL)
        if isinstance(event, NotInSentFolderYet):
            return replace(progress, state=SendState.SENDING, reason=event.reason)
        if isinstance(event, SentFolderUnavailable):
            return replace(progress, state=SendState.UNKNOWN, reason=event.reason)
    if progress.state is SendState.SENT and isinstance(event, GmailAccepted | FoundInSentFolder):
        if event.gmail == progress.gmail:
            return progress
    raise InvalidSendTransition(
        f"{type(event).__name__} cannot happen while {progress.state.value}/{step.value}"
    )


def _sent(progress: SendProgress, gmail: GmailIds) -> SendProgress:
    return replace(progress, state=SendState.SENT, next_step=NextStep.NOTHING, gmail=gmail, reason="")


# The product's own header on every message it sends: Gmail keeps it on the Sent copy whatever it does to the
# Message-ID, so a send can always be recognised in the Sent folder by it.
SEND_ID_HEADER = "X-Mailsync-Send-Id"


@dataclass(frozen=True)
class SentCopy:
    """A message of the mailbox's Sent folder, as far as recognising a send needs it."""

    gmail: GmailIds
    rfc_message_id: str
    # The value of SEND_ID_HEADER ("" when the message has none: sent from Gmail itself, or by another product).
    send_id: str


@dataclass(frozen=True)
class SearchWindow:
    """Where in the Sent folder a send whose Gmail call may have happened can be, and when a search that does
    not find it proves it absent.

    Gmail accepts a message at some instant between the start of the call and `call_ended_by` (the call's
    error, or the moment its process was known dead); its internal date is that instant. Both edges are widened
    by the clock margin (our clock against Google's). Gmail's search index lags behind what it accepted, so a
    search proves absence only once `index_lag` has passed after `call_ended_by`.
    """

    after: dt.datetime
    before: dt.datetime
    proof_time: dt.datetime

    def queries(self, rfc_message_id: str) -> list[str]:
        """By the Message-ID (cheap, exact when Gmail kept ours), then every Sent message of the window."""
        bare = rfc_message_id.strip().removeprefix("<").removesuffix(">")
        # after: and before: take epoch seconds; `before` is rounded up so the window's last second is inside.
        first = int(self.after.timestamp())
        last = -int(-self.before.timestamp() // 1) + 1
        return [f"in:sent rfc822msgid:{bare}", f"in:sent after:{first} before:{last}"]

    def proves_absence(self, searched_at: dt.datetime) -> bool:
        return searched_at >= self.proof_time


def search_window(
    *,
    call_started_at: dt.datetime,
    call_ended_by: dt.datetime,
    clock_margin: dt.timedelta,
    index_lag: dt.timedelta,
) -> SearchWindow:
    return SearchWindow(
        after=call_started_at - clock_margin,
        before=max(call_ended_by, call_started_at) + clock_margin,
        proof_time=max(call_ended_by, call_started_at) + index_lag,
    )


def find_sent_copy(copies: Iterable[SentCopy], *, send_id: str, rfc_message_id: str) -> SentCopy | None:
    """Our send among Sent-folder copies: the one that carries its send id, or (a copy whose header was lost)
    exactly its Message-ID. Nothing else identifies it: recipients, subject and Date are shared by look-alikes
    (a follow-up sequence sends many), so they are never used."""
    wanted_id = rfc_message_id.strip()
    matches = [c for c in copies if c.send_id.strip() == send_id or c.rfc_message_id.strip() == wanted_id]
    # Deterministic when a send went out twice (a search that came too early): the lowest Gmail id, Gmail's
    # ids growing with time.
    return min(matches, key=lambda c: (len(c.gmail.message_id), c.gmail.message_id), default=None)
