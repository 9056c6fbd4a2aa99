"""Gmail's bundled discovery document (shipped with google-api-python-client): the scopes of every method."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import googleapiclient


@functools.cache
def gmail_discovery() -> dict[str, Any]:
    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "gmail.v1.json"
    return json.loads(path.read_text())


@functools.cache
def method_scopes() -> dict[str, frozenset[str]]:
    """Method id (e.g. `gmail.users.messages.get`) -> the scopes any one of which allows the call."""
    found: dict[str, frozenset[str]] = {}

    def walk(resource: dict[str, Any]) -> None:
        for method in resource.get("methods", {}).values():
            found[method["id"]] = frozenset(method.get("scopes", []))
        for child in resource.get("resources", {}).values():
            walk(child)

    walk(gmail_discovery())
    return found
