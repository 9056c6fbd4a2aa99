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


def test_pool_sizes_come_from_the_settings_on_postgresql() -> None:
    # Creating the engine connects nothing, so no server is needed to read its pool.
    from services.runtime.db import open_database

    database = open_database("postgresql://root@127.0.0.1:5432/test", pool_size=3, max_overflow=4)
    pool = database.engine.sync_engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 4)  # type: ignore[attr-defined]
    # Negative control: the defaults are different, so the assertion above reads the arguments.
    default = open_database("postgresql://root@127.0.0.1:5432/test").engine.sync_engine.pool
    assert (default.size(), default._max_overflow) == (10, 20)  # type: ignore[attr-defined]
