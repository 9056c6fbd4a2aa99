"""Planning a sync pass from Gmail history records (R1, R17)."""

from __future__ import annotations

from typing import Any

from services.ingest.history import SkipReason, plan_history


def added(record_id: int, gmail_id: str, *labels: str, thread: str = "t") -> dict[str, Any]:
    return {
        "id": str(record_id),
        "messagesAdded": [{"message": {"id": gmail_id, "threadId": thread, "labelIds": list(labels)}}],
    }


def labels(record_id: int, gmail_id: str, key: str, *label_ids: str) -> dict[str, Any]:
    return {"id": str(record_id), key: [{"message": {"id": gmail_id}, "labelIds": list(label_ids)}]}


def deleted(record_id: int, gmail_id: str) -> dict[str, Any]:
    return {"id": str(record_id), "messagesDeleted": [{"message": {"id": gmail_id}}]}


def test_added_messages_are_fetched_once_in_history_order() -> None:
    plan = plan_history(
        [added(120, "b", "INBOX"), added(110, "a", "INBOX"), added(121, "a", "INBOX")],
        earliest_start_history_id=100,
        published=set(),
    )
    assert [(m.gmail_message_id, m.added_history_id) for m in plan.fetch] == [("a", 110), ("b", 120)]


def test_R1_messages_added_at_or_before_the_earliest_connection_start_are_skipped() -> None:
    plan = plan_history(
        [added(100, "old"), added(101, "new")], earliest_start_history_id=100, published=set()
    )
    assert [m.gmail_message_id for m in plan.fetch] == ["new"]
    assert plan.skipped == {"old": SkipReason.BEFORE_CONNECTION}


def test_R1_drafts_and_chats_are_not_email() -> None:
    plan = plan_history(
        [added(101, "d", "DRAFT"), added(102, "c", "CHAT"), added(103, "m", "INBOX")],
        earliest_start_history_id=1,
        published=set(),
    )
    assert [m.gmail_message_id for m in plan.fetch] == ["m"]
    assert plan.skipped == {"d": SkipReason.NOT_EMAIL, "c": SkipReason.NOT_EMAIL}


def test_R1_spam_and_trash_are_fetched_without_content_for_the_explanation() -> None:
    plan = plan_history([added(101, "s", "SPAM")], earliest_start_history_id=1, published=set())
    assert plan.fetch[0].content_withheld


def test_R1_a_message_moved_out_of_spam_after_the_start_is_fetched_as_mail() -> None:
    record = {
        "id": "150",
        "labelsRemoved": [
            {"message": {"id": "s", "threadId": "t9", "labelIds": ["INBOX"]}, "labelIds": ["SPAM"]}
        ],
    }
    plan = plan_history([record], earliest_start_history_id=100, published=set())
    assert [(m.gmail_message_id, m.content_withheld, m.added_history_id) for m in plan.fetch] == [
        ("s", False, 150)
    ]


def test_a_message_added_then_deleted_in_the_same_pass_is_not_fetched() -> None:
    plan = plan_history([added(101, "x"), deleted(102, "x")], earliest_start_history_id=1, published=set())
    assert plan.fetch == []
    assert plan.skipped == {"x": SkipReason.DELETED_BEFORE_FETCH}


def test_labels_changed_before_the_fetch_are_folded_into_the_fetch() -> None:
    plan = plan_history(
        [added(101, "x", "INBOX", "UNREAD"), labels(102, "x", "labelsRemoved", "UNREAD")],
        earliest_start_history_id=1,
        published=set(),
    )
    assert plan.fetch[0].label_ids == {"INBOX"}
    assert plan.label_deltas == []


def test_R17_label_changes_of_published_messages_are_merged_per_message() -> None:
    plan = plan_history(
        [
            labels(101, "p", "labelsRemoved", "UNREAD"),
            labels(102, "p", "labelsAdded", "TRASH"),
            labels(103, "p", "labelsAdded", "UNREAD"),
            labels(104, "unknown", "labelsAdded", "TRASH"),
        ],
        earliest_start_history_id=1,
        published={"p"},
    )
    assert [(d.gmail_message_id, d.added, d.removed, d.history_id) for d in plan.label_deltas] == [
        ("p", {"TRASH", "UNREAD"}, frozenset(), 103)
    ]


def test_R17_deletion_of_a_published_message_is_reported_and_unknown_ones_ignored() -> None:
    plan = plan_history(
        [labels(101, "p", "labelsAdded", "TRASH"), deleted(102, "p"), deleted(103, "never-seen")],
        earliest_start_history_id=1,
        published={"p"},
    )
    assert [(d.gmail_message_id, d.history_id) for d in plan.deletions] == [("p", 102)]
    assert plan.label_deltas == []


def test_R15_a_replayed_add_of_a_published_message_is_not_fetched_again() -> None:
    plan = plan_history([added(101, "p")], earliest_start_history_id=1, published={"p"})
    assert plan.fetch == []
    assert plan.skipped == {"p": SkipReason.ALREADY_PUBLISHED}
