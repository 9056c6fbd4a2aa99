"""SQLite database files (and their WAL and shared-memory files) are readable by their owner only: they hold
sealed OAuth tokens, BCC-drop tokens and mail metadata."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from sqlalchemy import text

from services.runtime.db import open_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_service_database_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = tmp_path / "data" / "auth.db"
        db = open_database(f"sqlite:///{path}")
        async with db.write() as session:
            await session.execute(text("CREATE TABLE secrets (value TEXT)"))
            await session.execute(text("INSERT INTO secrets VALUES ('sealed')"))
        async with db.read() as session:
            assert (await session.execute(text("SELECT value FROM secrets"))).scalar() == "sealed"
        files = {p.name: mode(p) for p in path.parent.iterdir() if p.name.startswith("auth.db")}
        await db.dispose()
        # Negative control: a file SQLite creates on its own under the same umask is world-readable.
        plain = tmp_path / "plain.db"
        sqlite3.connect(plain).close()
        plain_mode = mode(plain)
    finally:
        os.umask(previous)
    assert {"auth.db", "auth.db-wal", "auth.db-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, {name: oct(m) for name, m in files.items()}
    assert plain_mode == 0o644
    assert mode(path.parent) == 0o700


async def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    db = open_database(f"sqlite:///{path}")
    await db.dispose()
    assert mode(path) == 0o600
