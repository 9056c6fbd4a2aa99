"""The contact replica: versioned upserts from the CRM (a stale version never overwrites), tombstone deletes,
contacts the sync creates from BCC drops (R9), and the lookup the rules need (by normalized address)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.threading.domain.addresses import normalize_email
from services.threading.domain.model import Contact
from services.threading.store.models import ContactEmailRow, ContactRow, derived_id
from services.threading.store.sql import insert_many_new, insert_new


@dataclass(frozen=True)
class ContactEmail:
    email: str
    primary: bool = False


@dataclass(frozen=True)
class ContactRecord:
    """A contact as the API returns it."""

    contact_id: str
    location_id: str
    display_name: str
    emails: tuple[ContactEmail, ...]
    assigned_user_id: str
    create_time: dt.datetime
    version: int
    created_by_sync: bool
    deleted: bool = False


def sync_contact_id(location_id: str, email: str) -> str:
    """The id of a contact the sync creates for an address, the same on every replica (no duplicates, R9)."""
    return derived_id("contact", location_id, normalize_email(email))


async def upsert_contact(session: AsyncSession, record: ContactRecord, *, now: dt.datetime) -> bool:
    """Applies the CRM's version of a contact; False when the stored version is the same or newer."""
    values = {
        "location_id": record.location_id,
        "contact_id": record.contact_id,
        "display_name": record.display_name,
        "assigned_user_id": record.assigned_user_id,
        "create_time": record.create_time,
        "version": record.version,
        "deleted": False,
        "created_by_sync": record.created_by_sync,
        "update_time": now,
    }
    if not await insert_new(session, ContactRow.__table__, values):
        changed = await session.execute(
            update(ContactRow)
            .where(
                ContactRow.location_id == record.location_id,
                ContactRow.contact_id == record.contact_id,
                ContactRow.version < record.version,
            )
            .values(
                display_name=record.display_name,
                assigned_user_id=record.assigned_user_id,
                version=record.version,
                deleted=False,
                update_time=now,
            )
            .returning(ContactRow.contact_id)
        )
        if changed.first() is None:
            return False
    await _replace_emails(session, record.location_id, record.contact_id, record.emails)
    return True


async def delete_contact(
    session: AsyncSession, location_id: str, contact_id: str, version: int, *, now: dt.datetime
) -> bool:
    """Tombstones the contact unless the stored version is newer; a delete of an unknown contact is kept too, so a
    stale upsert arriving after it cannot create the contact."""
    values = {
        "location_id": location_id,
        "contact_id": contact_id,
        "create_time": now,
        "version": version,
        "deleted": True,
        "update_time": now,
    }
    if await insert_new(session, ContactRow.__table__, values):
        return True
    changed = await session.execute(
        update(ContactRow)
        .where(
            ContactRow.location_id == location_id,
            ContactRow.contact_id == contact_id,
            ContactRow.version <= version,
            ContactRow.deleted.is_(False),
        )
        .values(deleted=True, version=version, update_time=now)
        .returning(ContactRow.contact_id)
    )
    if changed.first() is None:
        return False
    await session.execute(
        delete(ContactEmailRow).where(
            ContactEmailRow.location_id == location_id, ContactEmailRow.contact_id == contact_id
        )
    )
    return True


async def _replace_emails(
    session: AsyncSession, location_id: str, contact_id: str, emails: Iterable[ContactEmail]
) -> None:
    await session.execute(
        delete(ContactEmailRow).where(
            ContactEmailRow.location_id == location_id, ContactEmailRow.contact_id == contact_id
        )
    )
    rows = {}
    for position, item in enumerate(emails):
        normalized = normalize_email(item.email)
        if normalized and normalized not in rows:
            rows[normalized] = {
                "location_id": location_id,
                "contact_id": contact_id,
                "normalized_email": normalized,
                "email": item.email.strip(),
                "is_primary": item.primary,
                "position": position,
            }
    await insert_many_new(session, ContactEmailRow.__table__, list(rows.values()))


async def contacts_matching(
    session: AsyncSession, location_ids: Iterable[str], emails: Iterable[str]
) -> tuple[Contact, ...]:
    """The live contacts of these locations that have any of these addresses, as the rules see them."""
    locations = sorted(set(location_ids))
    wanted = sorted({normalize_email(e) for e in emails if e})
    if not locations or not wanted:
        return ()
    rows = (
        (
            await session.execute(
                select(ContactRow)
                .join(
                    ContactEmailRow,
                    and_(
                        ContactEmailRow.location_id == ContactRow.location_id,
                        ContactEmailRow.contact_id == ContactRow.contact_id,
                    ),
                )
                .where(
                    ContactEmailRow.location_id.in_(locations),
                    ContactEmailRow.normalized_email.in_(wanted),
                    ContactRow.deleted.is_(False),
                )
                .distinct()
            )
        )
        .scalars()
        .all()
    )
    if not rows:
        return ()
    emails_by_contact = await _emails_of(session, [(r.location_id, r.contact_id) for r in rows])
    return tuple(
        Contact(
            r.contact_id,
            r.location_id,
            frozenset(e.email for e in emails_by_contact.get((r.location_id, r.contact_id), ())),
            r.create_time,
            r.assigned_user_id,
        )
        for r in rows
    )


async def _emails_of(
    session: AsyncSession, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], list[ContactEmail]]:
    if not keys:
        return {}
    locations = sorted({k[0] for k in keys})
    ids = sorted({k[1] for k in keys})
    rows = (
        (
            await session.execute(
                select(ContactEmailRow)
                .where(ContactEmailRow.location_id.in_(locations), ContactEmailRow.contact_id.in_(ids))
                .order_by(ContactEmailRow.position)
            )
        )
        .scalars()
        .all()
    )
    result: dict[tuple[str, str], list[ContactEmail]] = {}
    for row in rows:
        result.setdefault((row.location_id, row.contact_id), []).append(
            ContactEmail(row.email, row.is_primary)
        )
    return result


async def get_contact(session: AsyncSession, location_id: str, contact_id: str) -> ContactRecord | None:
    row = await session.get(ContactRow, (location_id, contact_id))
    if row is None:
        return None
    emails = await _emails_of(session, [(location_id, contact_id)])
    return _record(row, emails.get((location_id, contact_id), []))


async def list_contacts(
    session: AsyncSession,
    location_id: str,
    *,
    email: str = "",
    limit: int,
    after: tuple[dt.datetime, str] | None,
) -> list[ContactRecord]:
    """Live contacts of a location, oldest first, keyset-paged by (create_time, contact_id)."""
    query = select(ContactRow).where(ContactRow.location_id == location_id, ContactRow.deleted.is_(False))
    if email:
        query = query.where(
            ContactRow.contact_id.in_(
                select(ContactEmailRow.contact_id).where(
                    ContactEmailRow.location_id == location_id,
                    ContactEmailRow.normalized_email == normalize_email(email),
                )
            )
        )
    if after is not None:
        when, contact_id = after
        query = query.where(
            (ContactRow.create_time > when)
            | ((ContactRow.create_time == when) & (ContactRow.contact_id > contact_id))
        )
    rows = (
        (await session.execute(query.order_by(ContactRow.create_time, ContactRow.contact_id).limit(limit)))
        .scalars()
        .all()
    )
    emails = await _emails_of(session, [(r.location_id, r.contact_id) for r in rows])
    return [_record(r, emails.get((r.location_id, r.contact_id), [])) for r in rows]


def _record(row: ContactRow, emails: list[ContactEmail]) -> ContactRecord:
    return ContactRecord(
        contact_id=row.contact_id,
        location_id=row.location_id,
        display_name=row.display_name,
        emails=tuple(emails),
        assigned_user_id=row.assigned_user_id,
        create_time=row.create_time,
        version=row.version,
        created_by_sync=row.created_by_sync,
        deleted=row.deleted,
    )
