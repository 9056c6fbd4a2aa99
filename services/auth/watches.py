"""Gmail watch renewal (RenewWatches and the service's periodic task): every mailbox with a live grant gets its
watch renewed well before the 7-day expiry, with a status per mailbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.auth.access_tokens import AccessTokens, UnknownMailbox
from services.auth.domain import WATCH_RENEWAL_MARGIN, ReconnectRequired, watch_renewal_due
from services.auth.store import get_mailbox, mailboxes_with_watch_expiring, record_watch
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.gmail import GmailApi, GmailClient, GmailError, fixed_access_token

log = logging.getLogger(__name__)


class WatchRenewalOutcome(StrEnum):
    RENEWED = "RENEWED"
    NOT_DUE = "NOT_DUE"
    FAILED = "FAILED"
    REAUTH_REQUIRED = "REAUTH_REQUIRED"


@dataclass(frozen=True)
class WatchStatus:
    mailbox_id: str
    mailbox_email: str
    outcome: WatchRenewalOutcome
    watch_expires_at: dt.datetime | None
    error: str = ""


@dataclass
class WatchRenewal:
    db: Database
    api: GmailApi
    access_tokens: AccessTokens
    clock: Clock
    topic: str
    label_ids: tuple[str, ...] = ()
    margin: dt.timedelta = WATCH_RENEWAL_MARGIN

    async def renew(self, mailbox_ids: Sequence[str] = (), *, force: bool = False) -> list[WatchStatus]:
        """Renews the given mailboxes' watches (or every due one); one mailbox failing never stops the others."""
        now = self.clock.now()
        if not mailbox_ids:
            async with self.db.read() as session:
                mailbox_ids = await mailboxes_with_watch_expiring(session, before=now + self.margin)
        return [await self._renew_one(mailbox_id, now=now, force=force) for mailbox_id in mailbox_ids]

    async def renew_forever(self, every: dt.timedelta = dt.timedelta(hours=1)) -> None:
        """The periodic task: renews what is due, then sleeps; cancel it to stop."""
        while True:
            try:
                statuses = await self.renew()
                failed = [s.mailbox_id for s in statuses if s.outcome is WatchRenewalOutcome.FAILED]
                if failed:
                    log.warning("watch renewal failed for %d mailboxes", len(failed))
            except Exception:
                log.exception("watch renewal pass failed")
            await asyncio.sleep(every.total_seconds())

    async def _renew_one(self, mailbox_id: str, *, now: dt.datetime, force: bool) -> WatchStatus:
        async with self.db.read() as session:
            mailbox = await get_mailbox(session, mailbox_id)
        if mailbox is None:
            raise UnknownMailbox(mailbox_id)
        if not force and not watch_renewal_due(mailbox.watch_expires_at, now=now, margin=self.margin):
            return WatchStatus(
                mailbox_id, mailbox.email, WatchRenewalOutcome.NOT_DUE, mailbox.watch_expires_at
            )
        try:
            issued = await self.access_tokens.access_token(mailbox_id)
            gmail = GmailClient(self.api, fixed_access_token(issued.token.reveal()))
            started = await gmail.watch(self.topic, label_ids=self.label_ids or None)
        except ReconnectRequired as exc:
            return WatchStatus(
                mailbox_id,
                mailbox.email,
                WatchRenewalOutcome.REAUTH_REQUIRED,
                mailbox.watch_expires_at,
                exc.reason,
            )
        except GmailError as exc:
            error = f"{type(exc).__name__}: {exc.message}"
            async with self.db.write() as session:
                await record_watch(session, mailbox_id, expires_at=None, error=error)
            return WatchStatus(
                mailbox_id, mailbox.email, WatchRenewalOutcome.FAILED, mailbox.watch_expires_at, error
            )
        async with self.db.write() as session:
            await record_watch(
                session, mailbox_id, expires_at=started.expiration, history_id=int(started.history_id)
            )
        return WatchStatus(mailbox_id, mailbox.email, WatchRenewalOutcome.RENEWED, started.expiration)
