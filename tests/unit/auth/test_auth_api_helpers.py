"""The auth servicer's translation helpers: allowed return URLs (no open redirect), page tokens, the refusals a
client sees for each flow error, and the browser's way back to the CRM."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from services.auth.access_tokens import RefreshBusy
from services.auth.api import (
    ReturnUrlNotAllowed,
    after_id,
    check_return_url,
    page_size,
    page_token_after,
    require,
)
from services.auth.connections import CompletedConnect
from services.auth.domain import (
    GMAIL_SEND,
    Connection,
    ConnectionState,
    ConnectOutcome,
    ConsentDenied,
    MissingScopes,
    ReconnectRequired,
    StateRejected,
    is_workspace_address,
)
from services.auth.errors import as_domain_error, short_scope
from services.auth.oauth_http import with_outcome
from services.runtime.errors import InvalidArgument

ORIGINS = ["https://crm.example.com", "http://localhost:3000"]


@pytest.mark.parametrize(
    "url",
    ["https://crm.example.com/settings?tab=mail", "http://localhost:3000/", "HTTPS://CRM.example.com/x"],
)
def test_return_urls_on_an_allowed_origin_pass(url: str) -> None:
    assert check_return_url(url, ORIGINS) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com.evil.test/",
        "https://evil.test/?https://crm.example.com",
        "http://crm.example.com/",
        "https://crm.example.com:8443/",
        "javascript:alert(1)",
        "//crm.example.com/",
    ],
)
def test_return_urls_elsewhere_are_refused(url: str) -> None:
    with pytest.raises(ReturnUrlNotAllowed, match="is not allowed"):
        check_return_url(url, ORIGINS)


def test_no_return_url_is_always_fine_and_no_origin_allows_none() -> None:
    assert check_return_url("", []) == ""
    with pytest.raises(ReturnUrlNotAllowed):
        check_return_url("https://crm.example.com/", [])


def test_page_tokens_round_trip_and_foreign_ones_are_refused() -> None:
    assert after_id(page_token_after("user/42")) == "user/42"
    assert after_id("") is None
    with pytest.raises(InvalidArgument, match="pass next_page_token unchanged"):
        after_id("%%%")


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0) == 100 and page_size(7) == 7 and page_size(10_000) == 500
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_a_missing_field_says_which_and_how_to_fill_it() -> None:
    with pytest.raises(InvalidArgument, match="user_id is required: name the user") as caught:
        require("  ", "user_id", "name the user")
    assert caught.value.metadata == {"field": "user_id"}


def test_flow_errors_become_refusals_a_client_can_act_on() -> None:
    reauth = as_domain_error(ReconnectRequired("mb1", "invalid_grant"))
    assert reauth is not None and reauth.code == grpc.StatusCode.FAILED_PRECONDITION
    assert reauth.reason == "REAUTH_REQUIRED" and "connect Gmail again" in reauth.message

    unticked = as_domain_error(MissingScopes([GMAIL_SEND]))
    assert unticked is not None and unticked.reason == "SCOPES_NOT_GRANTED"
    assert unticked.message == "you unticked: gmail.send - please connect again and allow every permission"

    state = as_domain_error(StateRejected("state expired"))
    assert state is not None and state.code == grpc.StatusCode.INVALID_ARGUMENT
    assert state.reason == "OAUTH_STATE_REJECTED"

    denied = as_domain_error(ConsentDenied("access_denied"))
    assert denied is not None and denied.reason == "CONSENT_DENIED"

    busy = as_domain_error(RefreshBusy("another replica refreshes"))
    assert busy is not None and busy.code == grpc.StatusCode.UNAVAILABLE

    assert as_domain_error(ValueError("a bug")) is None


def test_scope_names_are_shown_as_on_the_consent_page() -> None:
    assert short_scope(GMAIL_SEND) == "gmail.send" and short_scope("openid") == "openid"


def test_the_browser_returns_with_the_outcome_and_the_crm_query_kept() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    connection = Connection("c1", "u1", "l1", "m1", ConnectionState.CONNECTED, 5, now, now)
    completed = CompletedConnect(ConnectOutcome.NEW, connection, "a@example.com", None, None)

    assert (
        with_outcome("https://crm.example.com/s?tab=mail#top", completed)
        == "https://crm.example.com/s?tab=mail&mailsync_connect=connected&connection_id=c1#top"
    )


def test_workspace_mailboxes_are_those_outside_consumer_gmail() -> None:
    assert not is_workspace_address("Someone@GMAIL.com") and not is_workspace_address("x@googlemail.com")
    assert is_workspace_address("sales@acme.example")
