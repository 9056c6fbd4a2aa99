"""The life of one Gmail send: SENDING -> SENT / FAILED / UNKNOWN, and the rule that a send is never retried
blindly.

A Gmail call that got no answer (timeout, 5xx, lost connection, or a crash of the process that made it) may
have sent the message, so the next step is always to look for it in the mailbox's Sent folder by its Message-ID
and recipients; only a search that proves it absent allows another call. When the search itself cannot be done,
the caller is told UNKNOWN and the search is repeated later.
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
    pass


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


@dataclass(frozen=True)
class SentCopy:
    """A message of the mailbox's Sent folder, as far as matching needs it."""

    gmail: GmailIds
    rfc_message_id: str
    recipients: frozenset[str]
    subject: str
    date: dt.datetime | None


def sent_folder_queries(rfc_message_id: str, recipients: Iterable[str], sent_after: dt.datetime) -> list[str]:
    """Gmail search queries that find the send: by Message-ID, then (Gmail may replace it) by a recipient and time."""
    queries = [f"in:sent rfc822msgid:{rfc_message_id.strip().strip('<>')}"]
    first_recipient = next(iter(recipients), None)
    if first_recipient is not None:
        since = int(sent_after.timestamp()) - 60
        queries.append(f"in:sent to:{first_recipient} after:{since}")
    return queries


def find_sent_copy(
    copies: Iterable[SentCopy],
    *,
    rfc_message_id: str,
    recipients: Iterable[str],
    subject: str,
    date: dt.datetime,
) -> SentCopy | None:
    """Our send among Sent-folder copies: the same Message-ID, or (when Gmail replaced the Message-ID) the same
    recipients, subject and Date header, which together only our message carries."""
    wanted_recipients = frozenset(address.lower() for address in recipients)
    fallback = None
    for copy in copies:
        if copy.rfc_message_id.strip() == rfc_message_id.strip():
            return copy
        same_recipients = frozenset(address.lower() for address in copy.recipients) == wanted_recipients
        same_date = copy.date is not None and copy.date.replace(microsecond=0) == date.replace(microsecond=0)
        if fallback is None and same_recipients and copy.subject == subject and same_date:
            fallback = copy
    return fallback
