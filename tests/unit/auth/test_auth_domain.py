"""The auth domain's rules, table-driven: OAuth state, PKCE, the authorization URL, scopes, redirect URIs and the
connection state machine (R1, R3, R10, R11, R12)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from services.auth.domain import (
    GMAIL_COMPOSE,
    GMAIL_MODIFY,
    GMAIL_READONLY,
    GMAIL_SEND,
    MAIL_GOOGLE_COM,
    TRANSITIONS,
    Connection,
    ConnectionAction,
    ConnectionEventKind,
    ConnectionState,
    ConnectOutcome,
    IllegalTransition,
    MissingScopes,
    RedirectUriMismatch,
    StateRejected,
    accept_state,
    access_token_needs_refresh,
    authorization_url,
    begin_connect,
    check_granted_scopes,
    check_redirect_uri,
    code_challenge_s256,
    mailbox_used_by_others,
    new_code_verifier,
    plan_connect,
    plan_disconnect,
    plan_reauth_required,
    state_digest,
    transition,
)

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
REDIRECT = "https://crm.example/oauth/callback"
S = ConnectionState


def counting_bytes():
    counter = iter(range(256))

    def random_bytes(n: int) -> bytes:
        return bytes([next(counter)]) * n

    return random_bytes


def conn(
    cid: str, user: str, location: str, mailbox: str, state: ConnectionState = S.CONNECTED, start: int = 100
) -> Connection:
    return Connection(cid, user, location, mailbox, state, start, T0, T0)


# OAuth state --------------------------------------------------------------------------------------------------


def begun():
    return begin_connect(
        user_id="u1", location_id="L1", redirect_uri=REDIRECT, now=T0, random_bytes=counting_bytes()
    )


def test_state_is_stored_only_as_a_digest() -> None:
    flow = begun()
    assert flow.record.digest == state_digest(flow.state)
    assert flow.state not in repr(flow) and flow.record.code_verifier not in repr(flow.record)


def test_states_differ_between_flows() -> None:
    first = begin_connect(user_id="u1", location_id="L1", redirect_uri=REDIRECT, now=T0)
    second = begin_connect(user_id="u1", location_id="L1", redirect_uri=REDIRECT, now=T0)
    assert first.state != second.state and first.record.code_verifier != second.record.code_verifier


def test_a_fresh_state_is_accepted_once_and_marked_used() -> None:
    flow = begun()
    used = accept_state(
        flow.record, flow.state, now=T0 + dt.timedelta(minutes=1), user_id="u1", location_id="L1"
    )
    assert used.used_at == T0 + dt.timedelta(minutes=1)
    with pytest.raises(StateRejected, match="already used"):
        accept_state(used, flow.state, now=T0 + dt.timedelta(minutes=2))


@pytest.mark.parametrize(
    ("presented", "found", "now", "user", "location", "why"),
    [
        ("forged", False, T0, None, None, "unknown state"),
        ("forged", True, T0, None, None, "unknown state"),
        (None, True, T0 + dt.timedelta(minutes=10), None, None, "state expired"),
        (None, True, T0, "u2", None, "another user"),
        (None, True, T0, None, "L2", "another location"),
    ],
    ids=["not-found", "digest-mismatch", "expired", "other-user", "other-location"],
)
def test_bad_states_are_refused(presented, found, now, user, location, why) -> None:
    flow = begun()
    with pytest.raises(StateRejected, match=why):
        accept_state(
            flow.record if found else None,
            presented or flow.state,
            now=now,
            user_id=user,
            location_id=location,
        )


# PKCE and the authorization URL ----------------------------------------------------------------------------------


def test_pkce_s256_matches_rfc7636_appendix_b() -> None:
    assert (
        code_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_code_verifier_is_43_url_safe_characters() -> None:
    verifier = new_code_verifier()
    assert len(verifier) == 43
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_authorization_url_asks_for_offline_consented_minimal_access_with_pkce() -> None:
    verifier = new_code_verifier()
    url = authorization_url(client_id="cid", redirect_uri=REDIRECT, state="st", code_verifier=verifier)
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://accounts.google.com/o/oauth2/v2/auth"
    assert query["response_type"] == "code"
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["include_granted_scopes"] == "true"
    assert query["redirect_uri"] == REDIRECT and query["state"] == "st" and query["client_id"] == "cid"
    assert set(query["scope"].split()) == {"openid", "email", GMAIL_READONLY, GMAIL_SEND}
    assert query["code_challenge_method"] == "S256"
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert query["code_challenge"] == expected
    assert verifier not in url


def test_authorization_url_can_point_at_the_sandbox() -> None:
    url = authorization_url(
        client_id="cid",
        redirect_uri=REDIRECT,
        state="st",
        code_verifier="v" * 43,
        endpoint="http://127.0.0.1:9/o/oauth2/v2/auth",
    )
    assert url.startswith("http://127.0.0.1:9/o/oauth2/v2/auth?")


@pytest.mark.parametrize(
    "presented",
    [
        REDIRECT + "/",
        REDIRECT.upper(),
        REDIRECT + "?next=/",
        "https://crm.example/oauth/callback2",
        "http://crm.example/oauth/callback",
    ],
    ids=["trailing-slash", "case", "query", "prefix", "scheme"],
)
def test_redirect_uri_must_match_exactly(presented: str) -> None:
    assert check_redirect_uri(REDIRECT, [REDIRECT]) == REDIRECT
    with pytest.raises(RedirectUriMismatch):
        check_redirect_uri(presented, [REDIRECT])


@pytest.mark.parametrize(
    ("granted", "missing"),
    [
        (f"openid email {GMAIL_READONLY} {GMAIL_SEND}", None),
        (f"openid {GMAIL_MODIFY}", None),
        (MAIL_GOOGLE_COM, None),
        (f"{GMAIL_READONLY} {GMAIL_COMPOSE}", None),
        (f"openid email {GMAIL_READONLY}", (GMAIL_SEND,)),
        (f"openid email {GMAIL_SEND}", (GMAIL_READONLY,)),
        ("openid email", (GMAIL_READONLY, GMAIL_SEND)),
        ("", (GMAIL_READONLY, GMAIL_SEND)),
    ],
    ids=[
        "all",
        "modify-covers-both",
        "full-mail",
        "compose-covers-send",
        "send-unticked",
        "read-unticked",
        "identity-only",
        "nothing",
    ],
)
def test_granted_scopes_must_cover_reading_and_sending(granted: str, missing: tuple[str, ...] | None) -> None:
    if missing is None:
        assert check_granted_scopes(granted)
        return
    with pytest.raises(MissingScopes) as refused:
        check_granted_scopes(granted)
    assert refused.value.missing == missing
    for scope in missing:
        assert scope in str(refused.value)


@pytest.mark.parametrize(
    ("expiry", "needs"),
    [
        (None, True),
        (T0 + dt.timedelta(minutes=30), False),
        (T0 + dt.timedelta(minutes=4), True),
        (T0 - dt.timedelta(seconds=1), True),
    ],
    ids=["no-token", "fresh", "within-margin", "expired"],
)
def test_access_token_is_refreshed_with_margin(expiry, needs: bool) -> None:
    assert access_token_needs_refresh(expiry, now=T0) is needs


# Connection state machine --------------------------------------------------------------------------------------

ALL_MOVES = [(state, action) for state in ConnectionState for action in ConnectionAction]


@pytest.mark.parametrize(("state", "action"), ALL_MOVES, ids=[f"{s}-{a.name}" for s, a in ALL_MOVES])
def test_R10_R11_R12_connection_transitions(state: ConnectionState, action: ConnectionAction) -> None:
    legal = {
        (S.CONNECTED, ConnectionAction.REQUIRE_REAUTH): S.REAUTH_REQUIRED,
        (S.REAUTH_REQUIRED, ConnectionAction.REAUTHORIZE): S.CONNECTED,
        (S.CONNECTED, ConnectionAction.REPLACE): S.REPLACED,
        (S.REAUTH_REQUIRED, ConnectionAction.REPLACE): S.REPLACED,
        (S.CONNECTED, ConnectionAction.DISCONNECT): S.DISCONNECTED,
        (S.REAUTH_REQUIRED, ConnectionAction.DISCONNECT): S.DISCONNECTED,
    }
    assert set(TRANSITIONS) == set(legal)
    before = conn("c1", "u1", "L1", "m1", state)
    if (state, action) in legal:
        change = transition(before, action, now=T0 + dt.timedelta(hours=1), reason="invalid_grant")
        assert change.connection.state is legal[(state, action)]
        assert change.connection.state_change_time == T0 + dt.timedelta(hours=1)
        assert change.connection.start_history_id == before.start_history_id
    else:
        with pytest.raises(IllegalTransition):
            transition(before, action, now=T0)


def test_R1_new_connection_starts_at_the_mailbox_history_id_and_time() -> None:
    plan = plan_connect(
        user_id="u1",
        location_id="L1",
        mailbox_id="m1",
        new_connection_id="c1",
        start_history_id=555,
        now=T0,
        known=[],
    )
    assert plan.outcome is ConnectOutcome.NEW
    assert (plan.connection.start_history_id, plan.connection.start_time) == (555, T0)
    assert [c.event for c in plan.changes] == [ConnectionEventKind.CONNECTED]
    assert plan.release_mailbox_id is None


def test_R3_same_mailbox_in_another_location_gets_its_own_later_start() -> None:
    first = conn("c1", "u1", "L1", "m1", start=100)
    later = T0 + dt.timedelta(days=1)
    plan = plan_connect(
        user_id="u1",
        location_id="L2",
        mailbox_id="m1",
        new_connection_id="c2",
        start_history_id=900,
        now=later,
        known=[first],
    )
    assert plan.outcome is ConnectOutcome.NEW
    assert plan.connection.location_id == "L2"
    assert (plan.connection.start_history_id, plan.connection.start_time) == (900, later)
    assert all(change.connection.connection_id != "c1" for change in plan.changes)


@pytest.mark.parametrize(
    ("others", "released"),
    [
        ([], "m-old"),
        ([conn("c9", "u1", "L2", "m-old")], None),
        ([conn("c9", "u1", "L2", "m-old", S.DISCONNECTED)], "m-old"),
    ],
    ids=["alone", "used-in-another-location", "other-use-ended"],
)
def test_R10_update_email_replaces_the_old_connection_and_releases_only_an_unused_mailbox(
    others, released
) -> None:
    old = conn("c1", "u1", "L1", "m-old")
    plan = plan_connect(
        user_id="u1",
        location_id="L1",
        mailbox_id="m-new",
        new_connection_id="c2",
        start_history_id=7,
        now=T0,
        known=[old, *others],
    )
    assert plan.outcome is ConnectOutcome.UPDATE_EMAIL
    assert plan.connection.mailbox_id == "m-new" and plan.connection.state is S.CONNECTED
    replaced = [c.connection for c in plan.changes if c.event is ConnectionEventKind.REPLACED]
    assert [(c.connection_id, c.state, c.replaced_by_connection_id) for c in replaced] == [
        ("c1", S.REPLACED, "c2")
    ]
    assert plan.release_mailbox_id == released


def test_R12_reconnect_after_reauth_required_keeps_the_connection_and_its_start() -> None:
    waiting = conn("c1", "u1", "L1", "m1", S.REAUTH_REQUIRED, start=100)
    elsewhere = conn("c2", "u1", "L2", "m1", S.REAUTH_REQUIRED, start=300)
    plan = plan_connect(
        user_id="u1",
        location_id="L1",
        mailbox_id="m1",
        new_connection_id="unused",
        start_history_id=999,
        now=T0,
        known=[waiting, elsewhere],
    )
    assert plan.outcome is ConnectOutcome.SAME_MAILBOX
    assert plan.connection.connection_id == "c1" and plan.connection.state is S.CONNECTED
    assert plan.connection.start_history_id == 100
    revived = {c.connection.connection_id: c for c in plan.changes}
    assert set(revived) == {"c1", "c2"}
    assert all(
        c.event is ConnectionEventKind.REAUTHORIZED and c.connection.state is S.CONNECTED
        for c in revived.values()
    )
    assert revived["c2"].connection.start_history_id == 300


def test_reconnecting_a_connected_mailbox_changes_no_connection() -> None:
    current = conn("c1", "u1", "L1", "m1")
    plan = plan_connect(
        user_id="u1",
        location_id="L1",
        mailbox_id="m1",
        new_connection_id="c2",
        start_history_id=999,
        now=T0,
        known=[current],
    )
    assert plan.outcome is ConnectOutcome.SAME_MAILBOX
    assert plan.connection == current and plan.changes == ()


@pytest.mark.parametrize(
    ("others", "released"),
    [
        ([], "m1"),
        ([conn("c2", "u1", "L2", "m1")], None),
        ([conn("c2", "u1", "L2", "m1", S.REAUTH_REQUIRED)], None),
        ([conn("c2", "u1", "L2", "m1", S.REPLACED)], "m1"),
        ([conn("c2", "u1", "L2", "m2")], "m1"),
    ],
    ids=[
        "alone",
        "other-location-connected",
        "other-location-waiting-reauth",
        "other-replaced",
        "other-mailbox",
    ],
)
def test_R11_disconnect_releases_the_mailbox_only_when_no_other_connection_uses_it(others, released) -> None:
    ending = conn("c1", "u1", "L1", "m1")
    plan = plan_disconnect(ending, now=T0, mailbox_connections=[ending, *others])
    assert plan.change.connection.state is S.DISCONNECTED
    assert plan.change.event is ConnectionEventKind.DISCONNECTED
    assert plan.release_mailbox_id == released


def test_R11_disconnecting_twice_is_refused() -> None:
    ended = conn("c1", "u1", "L1", "m1", S.DISCONNECTED)
    with pytest.raises(IllegalTransition):
        plan_disconnect(ended, now=T0, mailbox_connections=[ended])


def test_R12_invalid_grant_moves_every_connected_connection_of_the_mailbox_once() -> None:
    connections = [
        conn("c1", "u1", "L1", "m1"),
        conn("c2", "u1", "L2", "m1"),
        conn("c3", "u1", "L3", "m1", S.REAUTH_REQUIRED),
        conn("c4", "u1", "L4", "m1", S.DISCONNECTED),
    ]
    changes = plan_reauth_required(connections, now=T0, reason="invalid_grant")
    assert [(c.connection.connection_id, c.event) for c in changes] == [
        ("c1", ConnectionEventKind.REAUTH_REQUIRED),
        ("c2", ConnectionEventKind.REAUTH_REQUIRED),
    ]
    assert all(c.connection.last_error == "invalid_grant" for c in changes)
    again = plan_reauth_required([c.connection for c in changes], now=T0, reason="invalid_grant")
    assert again == ()


def test_mailbox_use_ignores_the_ending_connections() -> None:
    connections = [conn("c1", "u1", "L1", "m1"), conn("c2", "u2", "L1", "m1")]
    assert mailbox_used_by_others("m1", connections, ending=["c1"])
    assert not mailbox_used_by_others("m1", connections, ending=["c1", "c2"])
