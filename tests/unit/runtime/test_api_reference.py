"""docs/api.md and the protos' `// Limit:` comments say what services/runtime/api_limits.py enforces."""

from __future__ import annotations

from tools import api_reference


def test_the_api_reference_and_the_proto_comments_are_up_to_date() -> None:
    assert api_reference.stale_files() == [], "run `python -m tools.api_reference` and `make protos`"


def test_every_rpc_and_its_limits_appear_in_the_reference() -> None:
    text = api_reference.render()
    for service in api_reference.SERVICES:
        for method in service.methods:
            assert f"### {method.name}" in text
    assert "### GetAccessToken (internal callers only)" in text
    assert "| `contact.emails[].email` | an RFC 5322 addr-spec" in text


def test_a_changed_limit_makes_a_proto_stale() -> None:
    """Negative control: the proto check compares with the table, so a different limit text is caught."""
    limits = api_reference._field_limits()
    path = api_reference.PROTOS / "threading.proto"
    current = path.read_text()
    assert api_reference.render_proto(current, limits) == current
    changed = dict(limits, **{"mailsync.v1.Contact.contact_id": "something else"})
    assert api_reference.render_proto(current, changed) != current
