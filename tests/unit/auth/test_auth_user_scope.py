"""Users are global, tokens are scoped: a caller changes only the memberships of the locations it names, never a
shared user's name or address, and sees only its own locations' memberships (issue 13's takeover)."""

from __future__ import annotations

import pytest

from services.auth.domain import UserRecord, UserSharedWithOtherLocations, plan_user_upsert

BOB = UserRecord("bob", "bob@crm.test", "Bob", ("loc-b",), 5)
SHARED = UserRecord("sam", "sam@crm.test", "Sam", ("loc-a", "loc-b"), 5)
A_ONLY = frozenset({"loc-a"})


def request(user: UserRecord, **changes: object) -> UserRecord:
    return UserRecord(**{**user.__dict__, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stored", "requested", "scope", "applied", "written"),
    [
        # A new user: created as asked.
        (None, request(BOB, location_ids=("loc-a",)), A_ONLY, True, request(BOB, location_ids=("loc-a",))),
        # An all-locations caller: the CRM's monotonic version decides, as before.
        (
            BOB,
            request(BOB, display_name="Robert", version=6),
            None,
            True,
            request(BOB, display_name="Robert", version=6),
        ),
        (BOB, request(BOB, display_name="Robert", version=5), None, False, None),
        # A scoped caller and a user only of its locations: the same.
        (
            request(BOB, location_ids=("loc-a",)),
            request(BOB, display_name="Robert", location_ids=("loc-a",), version=6),
            A_ONLY,
            True,
            request(BOB, display_name="Robert", location_ids=("loc-a",), version=6),
        ),
        # Issue 13: loc-a's caller adds bob (of loc-b) to loc-a with a huge version: loc-b is kept, and the
        # version is not raised (it would lock the CRM's later updates out).
        (
            BOB,
            request(BOB, location_ids=("loc-a",), version=999),
            A_ONLY,
            True,
            request(BOB, location_ids=("loc-a", "loc-b")),
        ),
        # ... and removing loc-a again keeps loc-b.
        (
            SHARED,
            request(SHARED, location_ids=(), version=5),
            A_ONLY,
            True,
            request(SHARED, location_ids=("loc-b",)),
        ),
        # A stale request still changes nothing.
        (BOB, request(BOB, location_ids=("loc-a",), version=4), A_ONLY, False, None),
    ],
)
def test_a_scoped_caller_changes_only_its_own_memberships(
    stored: UserRecord | None,
    requested: UserRecord,
    scope: frozenset[str] | None,
    applied: bool,
    written: UserRecord | None,
) -> None:
    plan = plan_user_upsert(stored, requested, scope)
    assert (plan.applied, plan.write) == (applied, written)


@pytest.mark.parametrize("change", [{"display_name": "Owned"}, {"crm_email": "attacker@crm.test"}])
def test_a_scoped_caller_may_not_rename_a_user_of_other_locations(change: dict[str, str]) -> None:
    with pytest.raises(UserSharedWithOtherLocations, match="token for all of them"):
        plan_user_upsert(BOB, request(BOB, location_ids=("loc-a",), version=999, **change), A_ONLY)
    # Negative control: the same change from a caller for every location applies.
    assert plan_user_upsert(BOB, request(BOB, version=6, **change), None).applied


def test_a_caller_sees_only_the_memberships_of_its_locations() -> None:
    assert SHARED.seen_by(A_ONLY).location_ids == ("loc-a",)
    assert SHARED.seen_by(frozenset({"loc-c"})).location_ids == ()
    assert SHARED.seen_by(None) == SHARED
