"""Subject builders, stream table and consumer policy: pure checks, no broker."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy

from services.runtime import subjects
from services.runtime.consumer import ConsumerSpec
from services.runtime.streams import ALL_STREAMS, WORK


def test_subjects_carry_the_partition_key_last() -> None:
    assert subjects.normalized("mbx-1") == "mailsync.v1.message.normalized.mbx-1"
    assert subjects.mailbox_changed("mbx-1") == "mailsync.v1.mailbox.changed.mbx-1"
    assert subjects.connection("reauth_required", "mbx-1") == "mailsync.v1.connection.reauth_required.mbx-1"
    assert subjects.contact_created("loc-9") == "mailsync.v1.contact.created.loc-9"
    assert subjects.message_synced("loc-9") == "mailsync.v1.message.synced.loc-9"
    assert subjects.send_failed("mbx-1") == "mailsync.v1.send.failed.mbx-1"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "mbx.*", "x\n", "a\tb", "é"])
def test_ids_that_would_change_the_subject_are_refused(bad: str) -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.normalized(bad)


def test_unknown_connection_event_kinds_are_refused() -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.connection("exploded", "mbx-1")


def test_every_subject_builder_lands_in_exactly_one_stream() -> None:
    built = [
        subjects.mailbox_changed("m"),
        subjects.normalized("m"),
        subjects.message_changed("m"),
        subjects.send_pending("m"),
        subjects.send_sent("m"),
        subjects.send_failed("m"),
        subjects.connection("connected", "m"),
        subjects.contact_created("l"),
        subjects.message_synced("l"),
    ]
    for subject in built:
        owners = [spec.name for spec in ALL_STREAMS if any(_matches(f, subject) for f in spec.subjects)]
        assert len(owners) == 1, (subject, owners)


def _matches(subject_filter: str, subject: str) -> bool:
    wanted, tokens = subject_filter.split("."), subject.split(".")
    return len(wanted) == len(tokens) and all(w in ("*", t) for w, t in zip(wanted, tokens, strict=True))


def test_streams_never_silently_drop_old_messages() -> None:
    for spec in ALL_STREAMS:
        config = spec.config()
        assert config.discard == DiscardPolicy.NEW, spec.name
        assert config.retention == RetentionPolicy.WORK_QUEUE or config.max_age, spec.name
    assert WORK.config().max_msgs_per_subject == 1


def test_consumer_retry_delay_doubles_up_to_its_cap_and_waits_extend_the_server_limit() -> None:
    spec = ConsumerSpec(stream="S", durable="d", filter_subjects=("x.*",), retry_delay=0.5, max_retry_delay=3)
    assert [spec.retry_delay_after(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3, 3]
    waiting = ConsumerSpec(stream="S", durable="d", filter_subjects=("x.*",), max_deliver=5, max_waits=40)
    assert waiting.config().max_deliver == 45
