"""The database URL handling every service relies on."""

import pytest

from services.runtime.db import DatabaseConfigError, normalize_url


@pytest.mark.parametrize(
    ("given", "expected_driver"),
    [
        ("sqlite:///var/x.db", "sqlite+aiosqlite"),
        ("postgresql://root@127.0.0.1:5432/test", "postgresql+psycopg"),
        ("postgresql+psycopg://root@127.0.0.1/test", "postgresql+psycopg"),
    ],
)
def test_plain_urls_get_the_asyncio_driver(given: str, expected_driver: str) -> None:
    assert normalize_url(given).startswith(expected_driver + "://")


@pytest.mark.parametrize("bad", ["not a url", "mysql://x/y", "://"])
def test_bad_urls_fail_with_a_message_naming_the_url(bad: str) -> None:
    with pytest.raises(DatabaseConfigError) as info:
        normalize_url(bad)
    assert bad in str(info.value)
