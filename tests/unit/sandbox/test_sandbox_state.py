"""Unit: the sandbox's pure mail model (delivery, threading, history, send limit) and MIME helpers."""

from __future__ import annotations

import itertools
import random

import pytest

from sandbox import mime
from sandbox.errors import GoogleApiError
from sandbox.grants import DEFAULT_CLIENT_ID, GrantRegistry, OAuthError
from sandbox.quota import QuotaLedger
from sandbox.state import MailState


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def world() -> tuple[MailState, FakeClock]:
    clock = FakeClock()
    state = MailState(clock, random.Random(7))
    state.create_mailbox("alice@example.com", "pw")
    state.create_mailbox("bob@example.com", "pw", workspace=True)
    return state, clock


def raw(subject: str = "Hi", to: str = "bob@example.com", **headers: str) -> bytes:
    return mime.build_message("alice@example.com", [to], subject, "body", extra_headers=headers or None)


def test_history_ids_increase_with_gaps(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    before = alice.history_id
    ids = [state.deliver_inbound("alice@example.com", raw(f"s{i}")).history_id for i in range(20)]
    assert ids == sorted(set(ids)) and ids[0] > before
    assert any(b - a > 1 for a, b in itertools.pairwise(ids))


def test_send_keeps_bcc_only_in_the_senders_copy(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    result = state.send(alice, raw(Bcc="eve@outside.test"), None, replace_message_id=True)
    assert b"Bcc: eve@outside.test" in result.sent.raw
    [(bob, copy)] = result.deliveries
    assert bob.address == "bob@example.com" and b"Bcc" not in copy.raw
    assert result.outbox is not None and result.outbox.recipients == ["eve@outside.test"]


def test_send_to_self_is_one_message_with_sent_and_inbox(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    result = state.send(alice, raw(to="alice@example.com"), None, replace_message_id=False)
    assert set(result.sent.label_ids) >= {"SENT", "INBOX"} and result.deliveries == []
    assert len(alice.messages) == 1


def test_sender_from_is_rewritten_to_the_mailbox_address(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    forged = mime.build_message("mallory@evil.test", ["bob@example.com"], "x", "y")
    result = state.send(alice, forged, None, replace_message_id=False)
    assert "alice@example.com" in (result.sent.parsed.header("From") or "")


def test_send_with_unknown_thread_id_is_not_found(world) -> None:
    state, _ = world
    with pytest.raises(GoogleApiError) as missing:
        state.send(state.mailbox("alice@example.com"), raw(), "ffff", replace_message_id=False)
    assert missing.value.code == 404


def test_daily_send_limit_rolls_over_24_hours(world) -> None:
    state, clock = world
    alice = state.mailbox("alice@example.com")
    alice.daily_send_limit = 1
    state.send(alice, raw(), None, replace_message_id=False)
    with pytest.raises(GoogleApiError) as limited:
        state.send(alice, raw(), None, replace_message_id=False)
    assert limited.value.code == 429 and "(Mail sending)" in limited.value.message
    clock.ms += 86_400_001
    state.send(alice, raw(), None, replace_message_id=False)


def test_history_listing_filters_pages_and_404s_below_the_floor(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    start = alice.history_id
    first = state.deliver_inbound("alice@example.com", raw())
    state.modify(alice, first.id, ["STARRED"], ["UNREAD"])
    records, cursor = state.list_history(alice, start, None, None, 2)
    assert [r.kind for r in records] == ["messageAdded", "labelAdded"] and cursor == records[-1].id
    rest, cursor = state.list_history(alice, start, None, None, 2, after=cursor)
    assert [r.kind for r in rest] == ["labelRemoved"] and cursor is None
    only_starred, _ = state.list_history(alice, start, None, "STARRED", 10)
    assert [r.kind for r in only_starred] == ["labelAdded", "labelRemoved"]
    state.expire_history("alice@example.com", first.history_id)
    with pytest.raises(GoogleApiError) as expired:
        state.list_history(alice, start, None, None, 10)
    assert expired.value.code == 404


def test_deleted_message_stays_in_history_but_get_is_404(world) -> None:
    state, _ = world
    alice = state.mailbox("alice@example.com")
    start = alice.history_id
    message = state.deliver_inbound("alice@example.com", raw())
    state.delete(alice, message.id)
    records, _ = state.list_history(alice, start, {"messageAdded"}, None, 10)
    assert records[0].message["id"] == message.id
    with pytest.raises(GoogleApiError):
        alice.message(message.id)


@pytest.mark.parametrize(
    ("subject", "normalized"),
    [
        ("Re: Quote", "quote"),
        ("RE: re: Quote", "quote"),
        ("Fwd: Quote", "quote"),
        ("AW:  Quote  42", "quote 42"),
        ("Quote", "quote"),
    ],
)
def test_subject_normalization_strips_reply_prefixes(subject: str, normalized: str) -> None:
    assert mime.normalized_subject(subject) == normalized


def test_edit_headers_keeps_the_body_byte_identical() -> None:
    original = b"From: a@x\r\nMessage-ID: <1@x>\r\nSubject: s\r\n\r\nline1\r\n\r\nline2\n"
    edited = mime.edit_headers(original, {"message-id"}, [("Message-ID", "<2@y>")])
    assert edited.endswith(b"\r\n\r\nline1\r\n\r\nline2\n") and b"<1@x>" not in edited and b"<2@y>" in edited


def test_base64_forms_padded_raw_and_unpadded_data() -> None:
    assert mime.b64url(b"ab").endswith("=") and not mime.b64url_unpadded(b"ab").endswith("=")
    assert mime.b64url_decode(mime.b64url_unpadded(b"\xff\xfe")) == b"\xff\xfe"


def test_quota_tables_and_window_enforcement() -> None:
    now = [0.0]
    ledger = QuotaLedger(lambda: now[0])
    assert ledger.cost("legacy", "gmail.users.messages.get") == 5
    assert ledger.cost("2026", "gmail.users.messages.get") == 20
    assert ledger.cost("2026", "gmail.users.threads.get") == 40
    ledger.charge("u", "gmail.users.messages.send", "legacy", True, 150, 1.0)
    with pytest.raises(GoogleApiError):
        ledger.charge("u", "gmail.users.messages.send", "legacy", True, 150, 1.0)
    now[0] = 1.5
    ledger.charge("u", "gmail.users.messages.send", "legacy", True, 150, 1.0)
    assert ledger.report()["users"]["u"]["methods"]["gmail.users.messages.send"] == {"units": 200, "calls": 2}


def test_101st_refresh_token_silently_ends_the_oldest(world) -> None:
    state, clock = world
    registry = GrantRegistry(state, clock)
    tokens = [registry.grant_directly("alice@example.com", DEFAULT_CLIENT_ID, ["openid"]) for _ in range(101)]
    client = registry.client(DEFAULT_CLIENT_ID, None, check_secret=False)
    with pytest.raises(OAuthError):
        registry.refresh(tokens[0].refresh_token or "", client, None)
    assert registry.refresh(tokens[1].refresh_token or "", client, None).access.token


def test_restamped_copy_has_a_new_message_id_and_the_same_bytes_otherwise() -> None:
    original = raw("Seeded")
    copy = mime.restamp_message_id(original)
    old_id = mime.parse(original).header("Message-ID")
    new_id = mime.parse(copy).header("Message-ID")
    assert old_id and new_id and new_id != old_id
    assert new_id.endswith("@example.com>")
    assert copy.replace(new_id.encode(), old_id.encode()) == original
    without = b"From: a@b.test\r\nSubject: none\r\n\r\nMessage-ID: <in@body.test>\r\n"
    assert mime.restamp_message_id(without) == without
