"""The send state machine: SENDING -> SENT / FAILED / UNKNOWN, never retried blindly; the Sent-folder window and
matching by the product's send id."""

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
    NotInSentFolderYet,
    SendEvent,
    SendProgress,
    SendState,
    SentCopy,
    SentFolderUnavailable,
    advance,
    after_restart,
    find_sent_copy,
    new_send,
    search_window,
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
SEND_ID = "5e4d0c1a" * 4
OURS = "<abc@mail.crm.example>"


def _copy(
    gmail: GmailIds = IDS, rfc_message_id: str = "<gmail-replaced@mail.gmail.com>", send_id: str = SEND_ID
) -> SentCopy:
    return SentCopy(gmail=gmail, rfc_message_id=rfc_message_id, send_id=send_id)


@pytest.mark.parametrize(
    ("copies", "expected"),
    [
        ((), None),
        # Gmail replaced the Message-ID: the send id header says it is ours.
        ((_copy(),), IDS),
        # The header was lost but Gmail kept our Message-ID.
        ((_copy(rfc_message_id=OURS, send_id=""),), IDS),
        # Look-alikes (same recipient, subject, Date: a follow-up sequence) of other sends are never ours.
        ((_copy(gmail=OTHER_IDS, send_id="0" * 32),), None),
        ((_copy(gmail=OTHER_IDS, send_id=""),), None),
        ((_copy(gmail=OTHER_IDS, send_id="0" * 32), _copy()), IDS),
        # Sent twice (a search that came too early): the older Gmail message, always the same one.
        (
            (_copy(gmail=GmailIds("18c0fff0", "t")), _copy(gmail=GmailIds("18c0ff01", "t"))),
            GmailIds("18c0ff01", "t"),
        ),
    ],
)
def test_the_send_is_recognised_in_the_sent_folder_by_its_send_id_only(
    copies: tuple[SentCopy, ...], expected: GmailIds | None
) -> None:
    found = find_sent_copy(copies, send_id=SEND_ID, rfc_message_id=OURS)
    assert (found.gmail if found else None) == expected


def test_the_search_window_spans_the_call_widened_by_the_clock_margin_and_proves_after_the_index_lag() -> (
    None
):
    ended = SENT_AT + dt.timedelta(seconds=3)
    window = search_window(
        call_started_at=SENT_AT,
        call_ended_by=ended,
        clock_margin=dt.timedelta(seconds=120),
        index_lag=dt.timedelta(seconds=60),
    )
    after, before = int(SENT_AT.timestamp()) - 120, int(ended.timestamp()) + 120 + 1
    assert window.queries(OURS) == [
        "in:sent rfc822msgid:abc@mail.crm.example",
        f"in:sent after:{after} before:{before}",
    ]
    assert not window.proves_absence(ended + dt.timedelta(seconds=59))
    assert window.proves_absence(ended + dt.timedelta(seconds=60))


def test_a_search_that_may_be_too_early_keeps_the_send_searching_never_calls_again() -> None:
    progress = _run(GmailCallStarted(), GmailNoAnswer("timeout"), NotInSentFolderYet("index lags"))
    assert (progress.state, progress.next_step, progress.gmail_calls) == (
        SendState.SENDING,
        NextStep.SEARCH_SENT_FOLDER,
        1,
    )
    unknown = _run(GmailCallStarted(), GmailNoAnswer("timeout"), SentFolderUnavailable("500"))
    assert advance(unknown, NotInSentFolderYet("index lags")).state is SendState.SENDING
