"""Which outbound processes are alive, told by locks the operating system or the database releases the instant a
process dies, so a send left in progress by a crash is taken over at once instead of after its lease.

Every process has an owner id (host, pid and a random part: never reused) and holds a lock named by it for its
whole life: on SQLite an exclusive `flock` on a file beside the database (SQLite is one host), on PostgreSQL a
session advisory lock on a connection of its own. A lock that can be taken, or is no longer held, belongs to a
dead process: the kernel drops a killed process's file locks and PostgreSQL a closed session's locks. An owner
that was never seen (another host's SQLite file cannot exist; an advisory lock is visible to every session) is
dead too. The send's lease stays as the last resort for what no lock can tell (a PostgreSQL session cut off by
the network is noticed only by TCP keepalive).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.runtime.db import Database

log = logging.getLogger(__name__)


_OWNER_ID = re.compile(r"^[A-Za-z0-9.-]{0,40}:\d+:[0-9a-f]{8}$")


def new_owner_id() -> str:
    """This process's owner id: readable in logs, unique across restarts (the pid alone repeats in containers)."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lock_judged(owners: Iterable[str]) -> set[str]:
    """The owners whose liveness a lock tells: ids of this scheme. Others (written by an older version that took
    no lock) are left to their lease, so a rolling upgrade never takes over a live old process's send."""
    return {owner for owner in owners if _OWNER_ID.match(owner)}


class ProcessLiveness(Protocol):
    """The process's own owner id, and which other owners are certainly dead."""

    owner: str

    async def dead_among(self, owners: Iterable[str]) -> set[str]: ...

    async def check(self) -> None:
        """Re-takes this process's own lock if it was lost (a database connection that broke)."""

    async def close(self) -> None: ...


class LeaseOnlyLiveness:
    """No lock to look at (an in-memory database): nobody is known dead, leases decide."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    async def dead_among(self, owners: Iterable[str]) -> set[str]:
        return set()

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FileLockLiveness:
    """SQLite: `<database>.owners/<digest of owner>.lock`, flock'ed exclusively while the process lives."""

    def __init__(self, folder: Path, owner: str) -> None:
        self.owner = owner
        self._folder = folder
        self._fd: int | None = None

    def _path(self, owner: str) -> Path:
        return self._folder / f"{hashlib.sha256(owner.encode()).hexdigest()[:32]}.lock"

    async def open(self) -> None:
        def take() -> int:
            self._folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path(self.owner), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd

        self._fd = await asyncio.to_thread(take)

    async def dead_among(self, owners: Iterable[str]) -> set[str]:
        others = [owner for owner in lock_judged(owners) if owner != self.owner]
        return {owner for owner in others if await asyncio.to_thread(self._is_dead, owner)}

    def _is_dead(self, owner: str) -> bool:
        path = self._path(owner)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        # Nobody holds it: its process is gone. The file is only a name; removing it keeps the folder small.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path(self.owner).unlink()
        os.close(self._fd)
        self._fd = None


def _advisory_key(schema: str | None, owner: str) -> int:
    digest = hashlib.sha256(f"mailsync-outbound-owner:{schema or ''}:{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_ids(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: the high and low 32 bits in classid and objid."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class AdvisoryLockLiveness:
    """PostgreSQL: a session advisory lock keyed by the owner id, held on a connection of its own."""

    def __init__(self, db: Database, owner: str) -> None:
        self.owner = owner
        self._db = db
        self._connection: AsyncConnection | None = None

    async def open(self) -> None:
        connection = await self._db.engine.connect()
        try:
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": _advisory_key(self._db.schema, self.owner)}
            )
            await connection.commit()
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def dead_among(self, owners: Iterable[str]) -> set[str]:
        others = {owner for owner in lock_judged(owners) if owner != self.owner}
        if not others:
            return set()
        async with self._db.read() as session:
            rows = await session.execute(
                text(
                    "SELECT classid::bigint AS high, objid::bigint AS low FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            held = {(int(row.high), int(row.low)) for row in rows}
        return {owner for owner in others if _lock_ids(_advisory_key(self._db.schema, owner)) not in held}

    async def check(self) -> None:
        try:
            assert self._connection is not None
            await self._connection.execute(text("SELECT 1"))
            await self._connection.commit()
            return
        except Exception as error:
            log.warning(
                "the connection holding this process's liveness lock broke; taking the lock again",
                extra={"owner": self.owner, "reason": repr(error)},
            )
        with contextlib.suppress(Exception):
            if self._connection is not None:
                await self._connection.close()
        self._connection = None
        await self.open()

    async def close(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(Exception):
            await self._connection.close()
        self._connection = None


async def open_liveness(db: Database, owner: str) -> ProcessLiveness:
    """Takes this process's lock on the database's kind of lock (it is held until `close`)."""
    if db.dialect == "postgresql":
        advisory = AdvisoryLockLiveness(db, owner)
        await advisory.open()
        return advisory
    database = db.engine.url.database
    if not database or database == ":memory:":
        return LeaseOnlyLiveness(owner)
    files = FileLockLiveness(Path(f"{database}.owners"), owner)
    await files.open()
    return files
