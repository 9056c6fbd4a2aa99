"""The send state machine: SENDING -> SENT / FAILED / UNKNOWN, never retried blindly; Sent-folder matching."""

from __future__ import annotations

import datetime as dt

import pytest

from services.outbound.domain.send_state import (
    FoundInSentFolder,
    GmailAccepted,
    GmailCallStarted,
    GmailIds,
    GmailNoAnswer,
    GmailRefused,
    InvalidSendTransition,
    NextStep,
    NotInSentFolder,
    SendEvent,
    SendProgress,
    SendState,
    SentCopy,
    SentFolderUnavailable,
    advance,
    after_restart,
    find_sent_copy,
    new_send,
    sent_folder_queries,
)

IDS = GmailIds("18c0ffee", "18c0ff00")
OTHER_IDS = GmailIds("18dead", "18beef")


def _run(*events: SendEvent) -> SendProgress:
    progress = new_send()
    for event in events:
        progress = advance(progress, event)
    return progress


@pytest.mark.parametrize(
    ("events", "state", "next_step", "calls"),
    [
        ((), SendState.SENDING, NextStep.CALL_GMAIL, 0),
        ((GmailCallStarted(),), SendState.SENDING, NextStep.AWAIT_GMAIL_ANSWER, 1),
        ((GmailCallStarted(), GmailAccepted(IDS)), SendState.SENT, NextStep.NOTHING, 1),
        ((GmailCallStarted(), GmailRefused("400 invalid To")), SendState.FAILED, NextStep.NOTHING, 1),
        ((GmailCallStarted(), GmailNoAnswer("timeout")), SendState.SENDING, NextStep.SEARCH_SENT_FOLDER, 1),
        (
            (GmailCallStarted(), GmailNoAnswer("timeout"), FoundInSentFolder(IDS)),
            SendState.SENT,
            NextStep.NOTHING,
            1,
        ),
        (
            (GmailCallStarted(), GmailNoAnswer("timeout"), NotInSentFolder()),
            SendState.SENDING,
            NextStep.CALL_GMAIL,
            1,
        ),
        (
            (GmailCallStarted(), GmailNoAnswer("503"), SentFolderUnavailable("token revoked")),
            SendState.UNKNOWN,
            NextStep.SEARCH_SENT_FOLDER,
            1,
        ),
        (
            (GmailCallStarted(), GmailNoAnswer("503"), SentFolderUnavailable("down"), FoundInSentFolder(IDS)),
            SendState.SENT,
            NextStep.NOTHING,
            1,
        ),
        (
            (GmailCallStarted(), GmailNoAnswer("503"), SentFolderUnavailable("down"), NotInSentFolder()),
            SendState.SENDING,
            NextStep.CALL_GMAIL,
            1,
        ),
        (
            (
                GmailCallStarted(),
                GmailNoAnswer("timeout"),
                NotInSentFolder(),
                GmailCallStarted(),
                GmailAccepted(IDS),
            ),
            SendState.SENT,
            NextStep.NOTHING,
            2,
        ),
        (
            (
                GmailCallStarted(),
                GmailNoAnswer("t1"),
                NotInSentFolder(),
                GmailCallStarted(),
                GmailNoAnswer("t2"),
                NotInSentFolder(),
                GmailCallStarted(),
                GmailNoAnswer("t3"),
                NotInSentFolder(),
            ),
            SendState.FAILED,
            NextStep.NOTHING,
            3,
        ),
    ],
)
def test_send_transitions(
    events: tuple[SendEvent, ...], state: SendState, next_step: NextStep, calls: int
) -> None:
    progress = _run(*events)
    assert (progress.state, progress.next_step, progress.gmail_calls) == (state, next_step, calls)
    if state is SendState.SENT:
        assert progress.gmail == IDS


@pytest.mark.parametrize(
    ("events", "illegal"),
    [
        # Never retried blindly: after a call without an answer, only a Sent-folder search may come next.
        ((GmailCallStarted(), GmailNoAnswer("timeout")), GmailCallStarted()),
        ((GmailCallStarted(), GmailNoAnswer("503"), SentFolderUnavailable("down")), GmailCallStarted()),
        # An answer needs a call.
        ((), GmailAccepted(IDS)),
        ((), GmailNoAnswer("timeout")),
        # A call cannot start while another's answer is awaited.
        ((GmailCallStarted(),), GmailCallStarted()),
        # Final states stay final.
        ((GmailCallStarted(), GmailRefused("400")), GmailCallStarted()),
        ((GmailCallStarted(), GmailRefused("400")), FoundInSentFolder(IDS)),
        ((GmailCallStarted(), GmailAccepted(IDS)), GmailCallStarted()),
        ((GmailCallStarted(), GmailAccepted(IDS)), FoundInSentFolder(OTHER_IDS)),
        ((GmailCallStarted(), GmailAccepted(IDS)), GmailRefused("400")),
        ((), NotInSentFolder()),
    ],
)
def test_impossible_events_are_refused(events: tuple[SendEvent, ...], illegal: SendEvent) -> None:
    with pytest.raises(InvalidSendTransition):
        advance(_run(*events), illegal)


def test_the_same_success_reported_twice_changes_nothing() -> None:
    sent = _run(GmailCallStarted(), GmailAccepted(IDS))
    assert advance(sent, GmailAccepted(IDS)) == sent
    assert advance(sent, FoundInSentFolder(IDS)) == sent


def test_a_send_whose_call_was_in_flight_at_a_crash_is_searched_for_not_resent() -> None:
    in_flight = _run(GmailCallStarted())
    recovered = after_restart(in_flight)
    assert recovered.next_step is NextStep.SEARCH_SENT_FOLDER
    assert recovered.state is SendState.SENDING


@pytest.mark.parametrize(
    "progress",
    [new_send(), _run(GmailCallStarted(), GmailAccepted(IDS)), _run(GmailCallStarted(), GmailNoAnswer("t"))],
)
def test_other_sends_resume_where_they_were_after_a_restart(progress: SendProgress) -> None:
    assert after_restart(progress) == progress


def test_the_number_of_calls_is_bounded() -> None:
    progress = _run(GmailCallStarted(), GmailNoAnswer("t1"))
    assert advance(progress, NotInSentFolder(), max_gmail_calls=1).state is SendState.FAILED


SENT_AT = dt.datetime(2026, 11, 26, 21, 0, 5, tzinfo=dt.UTC)


def _copy(**overrides: object) -> SentCopy:
    values: dict[str, object] = {
        "gmail": IDS,
        "rfc_message_id": "<abc@mail.crm.example>",
        "recipients": frozenset({"bob@example.org", "carol@example.net"}),
        "subject": "Re: Proposal",
        "date": SENT_AT,
    }
    values.update(overrides)
    return SentCopy(**values)  # type: ignore[arg-type]


def _find(*copies: SentCopy) -> SentCopy | None:
    return find_sent_copy(
        copies,
        rfc_message_id="<abc@mail.crm.example>",
        recipients=["Bob@example.org", "carol@example.net"],
        subject="Re: Proposal",
        date=SENT_AT,
    )


@pytest.mark.parametrize(
    ("copies", "expected"),
    [
        ((), None),
        ((_copy(),), IDS),
        ((_copy(recipients=frozenset({"someone@else.example"}), subject="other"),), IDS),
        ((_copy(rfc_message_id="<gmail-replaced@mail.gmail.com>"),), IDS),
        ((_copy(gmail=OTHER_IDS, rfc_message_id="<x@y>", subject="Re: Other"),), None),
        ((_copy(gmail=OTHER_IDS, rfc_message_id="<x@y>", date=SENT_AT + dt.timedelta(minutes=1)),), None),
        ((_copy(gmail=OTHER_IDS, rfc_message_id="<x@y>", recipients=frozenset({"bob@example.org"})),), None),
        ((_copy(gmail=OTHER_IDS, rfc_message_id="<x@y>", date=None),), None),
        # The exact Message-ID wins over a look-alike that comes first.
        ((_copy(gmail=OTHER_IDS, rfc_message_id="<x@y>"), _copy()), IDS),
    ],
)
def test_the_send_is_recognised_in_the_sent_folder(
    copies: tuple[SentCopy, ...], expected: GmailIds | None
) -> None:
    found = _find(*copies)
    assert (found.gmail if found else None) == expected


def test_sent_folder_queries_search_by_message_id_then_recipient_and_time() -> None:
    queries = sent_folder_queries("<abc@mail.crm.example>", ["bob@example.org"], SENT_AT)
    assert queries == [
        "in:sent rfc822msgid:abc@mail.crm.example",
        f"in:sent to:bob@example.org after:{int(SENT_AT.timestamp()) - 60}",
    ]
