"""The per-mailbox sync pass: under the mailbox's fenced lease, read Gmail's history from the stored cursor, fetch
new messages in small batches, normalize them, stamp the mailbox's connections, publish one event per message
with a stable Nats-Msg-Id, and move the cursor only after every publish up to it was acknowledged.

A history gap (404) clears the cursor and resyncs by listing messages since the last synced one, never before the
earliest connection start (R1), taking the new cursor from getProfile before listing, so nothing falls between
the two. Failures back the mailbox off (never other mailboxes); a dead grant pauses it until reauthorization (R12);
a mailbox with no CONNECTED connection left stops (R10, R11). An audit now and then compares Gmail's recent
messages with the published ledger and publishes what is missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import nats.errors
from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.ingest import store
from services.ingest.connection_proto import connections_to_proto
from services.ingest.domain.message import MailboxCopy
from services.ingest.history import NOT_EMAIL_LABELS, UNSYNCED_LABELS, Deletion, LabelDelta, plan_history
from services.ingest.mailboxes import AccessTokens, MailboxDirectory, MailboxInfo, sync_scope
from services.ingest.message_proto import normalized_message_to_proto
from services.ingest.normalizer import MessageNormalizer, NormalizerConfig
from services.ingest.sync_policy import (
    CheckReason,
    SyncState,
    SyncTiming,
    audit_due,
    look_again_at,
    next_check_after_success,
    plan_after_failure,
)
from services.runtime import subjects
from services.runtime.backoff import doubling_delay
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import Delivery, RetryLater
from services.runtime.db import Database
from services.runtime.faults import fault_point
from services.runtime.gmail import (
    AccessTokenRejected,
    GmailApi,
    GmailClient,
    GmailError,
    HistoryExpired,
    HistoryListing,
    PermanentAuthFailure,
    PermanentGmailError,
    RetryPolicy,
    RetryTiming,
)
from services.runtime.instruments import instruments
from services.runtime.jetstream import Outgoing, is_duplicate, publish_all
from services.runtime.protobuf_time import to_timestamp
from services.runtime.trace_links import current_traceparent

log = logging.getLogger(__name__)

BATCH_LIMIT = 25
# A pass's first messages.get batch when the mailbox's message sizes are unknown: the Google client holds a whole
# batch response in memory several times over while parsing it (25 mails of 10 MB: about 2.7 GB).
FIRST_BATCH = 2
# The first batch when the last pass's largest message was small: a few new messages of ordinary mail come in one
# round trip. Sizes are not known before the fetch, so this is also how many large mails can arrive in it after
# small ones: 4 keeps that worst case at twice the unknown-size one.
FIRST_BATCH_MAX = 4
# Raw (base64url) characters one batch should bring back, judged by the largest message seen so far in the pass.
BATCH_CHARS = 16 * 1024 * 1024


def first_batch_size(recent_message_chars: int) -> int:
    """messages.get in a pass's first batch, from the largest message of the mailbox's last pass (0: unknown)."""
    if recent_message_chars <= 0:
        return FIRST_BATCH
    return max(1, min(FIRST_BATCH_MAX, BATCH_CHARS // recent_message_chars))


SYNC_AFTER_PUBLISH = "ingest.sync.after_publish"
REASON_NAMES = {
    events_pb2.MAILBOX_CHANGE_REASON_PUSH: "PUSH",
    events_pb2.MAILBOX_CHANGE_REASON_POLL: "POLL",
    events_pb2.MAILBOX_CHANGE_REASON_RECHECK: "RECHECK",
    events_pb2.MAILBOX_CHANGE_REASON_RESYNC: "RESYNC",
    events_pb2.MAILBOX_CHANGE_REASON_AUDIT: "AUDIT",
    events_pb2.MAILBOX_CHANGE_REASON_REAUTHORIZED: "REAUTHORIZED",
}


class PublishObserver(Protocol):
    """Sees every publish attempt of a normalized message and its acknowledgement (metrics, crash tests)."""

    async def attempt(self, mailbox_id: str, gmail_message_id: str) -> None: ...

    async def acknowledged(self, mailbox_id: str, gmail_message_id: str, duplicate: bool) -> None: ...


class PassOutcome(StrEnum):
    SYNCED = "SYNCED"
    BUSY = "BUSY"
    UNKNOWN_MAILBOX = "UNKNOWN_MAILBOX"
    STOPPED = "STOPPED"
    PAUSED = "PAUSED"
    BACKING_OFF = "BACKING_OFF"
    FAILED = "FAILED"
    LEASE_LOST = "LEASE_LOST"
    TOO_SOON = "TOO_SOON"
    # A connection event changed the mailbox while the pass was stopping it: the event's own pass takes over.
    CHANGED = "CHANGED"
    # A re-check whose look at Gmail's history found nothing: nothing taken, nothing written.
    NOTHING_NEW = "NOTHING_NEW"
    # The same, made within the interval after the mailbox's last push: it looks again when the interval is over.
    NOTHING_NEW_YET = "NOTHING_NEW_YET"


@dataclass(frozen=True)
class SyncConfig:
    owner: str
    timing: SyncTiming = field(default_factory=SyncTiming)
    lease_ttl: dt.timedelta = dt.timedelta(seconds=60)
    # How soon a work item for a mailbox another worker holds comes back.
    busy_retry_seconds: float = 1.0
    # Pushes of a mailbox synced less than this ago wait and coalesce (a repeated push, or one right after a pass).
    min_push_interval: dt.timedelta = dt.timedelta(seconds=0.25)
    # Messages fetched, published and recorded per step (the ledger moves after each step).
    fetch_window: int = 100
    # messages.get batches of one mailbox in flight at once (Gmail's per-user concurrency is small).
    fetch_concurrency: int = 2
    # A resync or audit lists at most this many messages (newest first).
    resync_max_messages: int = 5000
    audit_max_messages: int = 200
    audit_window: dt.timedelta = dt.timedelta(days=7)
    # A resync lists from a little before the last synced message: internal dates are not strictly ordered.
    resync_overlap: dt.timedelta = dt.timedelta(hours=1)
    # Sends of a window's messages whose acknowledgement did not come in time (a loaded or paused server): the
    # same Nats-Msg-Ids again, in place, before the pass fails and a later pass publishes the window again.
    publish_ack_attempts: int = 3
    gmail_policy: RetryPolicy = field(default_factory=RetryPolicy)
    # How long the acks of one window's publishes are awaited (together) before the unacked are sent again.
    publish_ack_timeout: float = 10.0


@dataclass(frozen=True)
class _Candidate:
    gmail_message_id: str
    history_id: int


@dataclass(frozen=True)
class _Prepared:
    outgoing: Outgoing
    entry: store.PublishedEntry


@dataclass(frozen=True)
class _Listed:
    """Gmail's history after `cursor`, listed before the lease (a re-check's look): the pass goes on from it."""

    cursor: int
    listing: HistoryListing
    listed_at: dt.datetime
    # When the mailbox's last push came, as the row said before the listing (None: no push yet).
    last_push_at: dt.datetime | None


class _NotConnected(Exception):
    """Auth, asked during the pass, lists no CONNECTED connection of the mailbox (any more)."""

    def __init__(self, mailbox: MailboxInfo | None) -> None:
        super().__init__("the mailbox has no CONNECTED connection")
        self.awaiting_reauth = mailbox is not None and mailbox.awaiting_reauth


def _is_connected(mailbox: MailboxInfo | None) -> bool:
    return mailbox is not None and sync_scope(mailbox.connections) is not None


# A work item that must wait (a push too soon, a mailbox another pass holds) is not tried again sooner than this,
# whatever the clocks and settings say.
_SHORTEST_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class _MayStart:
    """The row allows a pass; `mailbox`: auth's answer when it was asked before the lease (else None)."""

    mailbox: MailboxInfo | None


@dataclass(frozen=True)
class _Attempt:
    """What a pass attempt came to; `retry_in`: how long a push that came too soon waits, from the row it read."""

    outcome: PassOutcome
    retry_in: float = 0.0


@dataclass
class _Pass:
    lease: store.Lease
    client: GmailClient
    cursor: int | None
    # What auth says about the mailbox: asked only when the pass needs it (a listing with something in it, a first
    # pass, a resync, an audit), once, after Gmail's listing (R3); before that, ingest's own row is enough.
    mailbox: MailboxInfo | None = None
    # The mailbox was read after the pass's Gmail listing: its connections are what the listed mail goes to.
    fresh: bool = False
    connections: list[Any] = field(default_factory=list)
    had_work: bool = False
    # Gmail's clock reading when history was listed: the audit leaves newer messages to the next pass.
    listed_at: dt.datetime | None = None
    skipped: int = 0
    # The last published window, recorded in the pass's last transaction (or before anything reads the ledger).
    unrecorded: list[store.PublishedEntry] = field(default_factory=list)
    # messages.get per batch from here on: small while message sizes are unknown or large (see BATCH_CHARS).
    batch_size: int = FIRST_BATCH
    # Raw characters of the largest message this pass fetched (0: none); the next pass's first batch is sized by it.
    largest_message_chars: int = 0

    @property
    def mailbox_id(self) -> str:
        return self.lease.mailbox_id

    @property
    def listed_at_ms(self) -> int:
        """Gmail's clock reading of the listing in milliseconds (0: not listed yet), as internalDate counts."""
        return int(self.listed_at.timestamp() * 1000) if self.listed_at else 0

    @property
    def known(self) -> MailboxInfo:
        assert self.mailbox is not None, "the pass reads the mailbox before it needs it"
        return self.mailbox

    @property
    def scope(self) -> tuple[int, dt.datetime]:
        scope = sync_scope(self.known.connections)
        assert scope is not None, "a mailbox without a CONNECTED connection ends the pass (_NotConnected)"
        return scope

    @property
    def start_history_id(self) -> int:
        return self.scope[0]

    @property
    def start_ms(self) -> int:
        return int(self.scope[1].timestamp() * 1000)


class MailboxSyncer:
    """Runs sync passes; `handle` is the work stream consumer's handler."""

    def __init__(
        self,
        *,
        db: Database,
        js: JetStreamContext,
        directory: MailboxDirectory,
        tokens: AccessTokens,
        gmail_api: GmailApi,
        config: SyncConfig,
        clock: Clock | None = None,
        observer: PublishObserver | None = None,
        gmail_timing: RetryTiming | None = None,
        normalizer: MessageNormalizer | None = None,
        expect_check_in: Callable[[float], None] | None = None,
    ) -> None:
        self._db = db
        self._js = js
        self._directory = directory
        self._tokens = tokens
        self._api = gmail_api
        self._config = config
        self._clock = clock or SystemClock()
        self._observer = observer
        self._gmail_timing = gmail_timing or RetryTiming(clock=self._clock)
        self._passes = 0
        # Without a pool of its own (tests), everything is parsed inline.
        self._normalizer = normalizer or MessageNormalizer(NormalizerConfig(processes=0))
        # Told when a pass set a re-check, so the scheduler queues it on time rather than at its next tick.
        self._expect_check_in = expect_check_in

    async def handle(self, delivery: Delivery) -> None:
        item = delivery.parse(events_pb2.MailboxChanged)
        attempt = await self._attempt(item.mailbox_id, REASON_NAMES.get(item.reason, "PUSH"))
        if attempt.outcome is PassOutcome.BUSY:
            raise RetryLater(
                self._busy_wait_seconds(delivery.num_delivered), "another worker holds the mailbox"
            )
        if attempt.outcome is PassOutcome.TOO_SOON:
            raise RetryLater(attempt.retry_in, "synced a moment ago")
        if attempt.outcome is PassOutcome.NOTHING_NEW_YET:
            # The work item itself comes back (nothing written); a push meanwhile replaces it on its subject.
            raise RetryLater(
                attempt.retry_in, "Gmail may yet have dropped a notification of the last push's interval"
            )

    def _busy_wait_seconds(self, num_delivered: int) -> float:
        """A pass holds the mailbox: soon first (most passes are short, and a push that came during one that found
        nothing is the only word of new mail), then doubling up to `busy_retry_seconds` while a long pass runs."""
        ceiling = self._config.busy_retry_seconds
        # Never 0 (a re-check delay of 0 is allowed): the item would come straight back while the pass runs.
        first = min(max(self._config.timing.recheck_delay.total_seconds(), _SHORTEST_WAIT_SECONDS), ceiling)
        return doubling_delay(first, ceiling, num_delivered)

    def _push_wait_seconds(self, last_sync: dt.datetime, now: dt.datetime) -> float:
        """How long a push that came too soon waits: what is left of the interval since the last pass, not a whole
        interval (a push 0.9 s after a pass waited a further second, most of steady sync's latency)."""
        interval = self._config.min_push_interval
        left = interval - (now - last_sync)
        return min(max(left.total_seconds(), _SHORTEST_WAIT_SECONDS), interval.total_seconds())

    async def sync(self, mailbox_id: str, reason: str = "POLL") -> PassOutcome:
        """One pass over the mailbox; never raises for Gmail trouble (that is recorded on the mailbox)."""
        return (await self._attempt(mailbox_id, reason)).outcome

    async def _attempt(self, mailbox_id: str, reason: str) -> _Attempt:
        now = self._clock.now()
        resync = reason == "RESYNC"
        mailbox: MailboxInfo | None = None
        started: store.StartedPass | None = None
        # A re-check looks at Gmail first; finding nothing, it ends here with nothing written.
        listed = await self._look_before_leasing(mailbox_id, now) if reason == "RECHECK" else None
        if listed is not None and not listed.listing.records:
            return self._nothing_new(listed)
        if not resync:
            # Most passes need nothing decided before the lease: one statement takes it only when the row says the
            # pass may run, and brings the row back (a read of its own cost a transaction per pass).
            readiness = store.Readiness.SCHEDULED_FOR_PUSH if reason == "PUSH" else store.Readiness.SCHEDULED
            started = await self._start_pass(mailbox_id, now, resync, readiness)
        if started is None:
            # Why not (stopped, too soon, another worker's lease), or a pass that asks auth first: the row decides.
            checked = await self._check_before_pass(mailbox_id, reason, now)
            if isinstance(checked, _Attempt):
                return checked
            mailbox = checked.mailbox
            started = await self._start_pass(mailbox_id, now, resync, store.Readiness.LEASE_FREE)
            if started is None:
                return _Attempt(PassOutcome.BUSY)
        lease = started.lease
        outcome: PassOutcome | None = None
        try:
            outcome = await self._leased_pass(lease, started.row, mailbox, resync, listed=listed)
            return _Attempt(outcome)
        except store.LeaseLost:
            log.warning("lease lost mid-pass", extra={"mailbox_id": mailbox_id})
            return _Attempt(PassOutcome.LEASE_LOST)
        finally:
            # A pass that ended well gave the lease up in its last transaction.
            if outcome is not PassOutcome.SYNCED:
                async with self._db.write() as session:
                    await store.release_lease(session, lease)

    async def _look_before_leasing(self, mailbox_id: str, now: dt.datetime) -> _Listed | None:
        """A re-check lists Gmail's history from the cursor before it takes the lease. Most re-checks end a busy
        spell with nothing new, and such a one writes nothing (a pass would take the lease and give it back: two
        write transactions on SQLite's one writer). With something new, the pass goes on from this listing. None:
        the row asks for a pass of its own (not idle, no cursor, leased, audit due) or Gmail could not be asked;
        the pass then runs as any other, and lists again."""
        async with self._db.read() as session:
            row = await store.get_sync_row(session, mailbox_id)
        if (
            row is None
            or row.state != SyncState.IDLE
            or row.history_cursor is None
            or not store.lease_is_free(row, now)
            or audit_due(_aware(row.last_audit_at), now, self._config.timing)
        ):
            return None
        listed_at = self._clock.now()
        try:
            listing = await self._gmail_client(mailbox_id).list_history(str(row.history_cursor))
        except Exception as error:
            log.info(
                "a re-check could not look at Gmail first",
                extra={"mailbox_id": mailbox_id, "error": repr(error)},
            )
            return None
        return _Listed(row.history_cursor, listing, listed_at, _aware(row.last_push_at))

    def _nothing_new(self, listed: _Listed) -> _Attempt:
        """A re-check's look found nothing: the re-checks end, or it looks again (sync_policy.look_again_at)."""
        again = look_again_at(listed.last_push_at, listed.listed_at, self._config.timing)
        if again is None:
            return _Attempt(PassOutcome.NOTHING_NEW)
        wait = (again - self._clock.now()).total_seconds()
        return _Attempt(PassOutcome.NOTHING_NEW_YET, max(wait, _SHORTEST_WAIT_SECONDS))

    def _gmail_client(self, mailbox_id: str) -> GmailClient:
        return GmailClient(
            self._api,
            self._token_source(mailbox_id),
            policy=self._config.gmail_policy,
            timing=self._gmail_timing,
            on_token_rejected=self._token_rejected_hook(mailbox_id),
        )

    async def _start_pass(
        self, mailbox_id: str, now: dt.datetime, resync: bool, readiness: store.Readiness
    ) -> store.StartedPass | None:
        # A holder name per pass: two workers of one process must not take the lease from each other.
        self._passes += 1
        # Named before the wait for the write transaction: passes that waited together read the counter after
        # it, got one name, and the lease, which is free for its own holder's name, went from one to the other.
        owner = f"{self._config.owner}:{self._passes}"
        async with self._db.write(brief=True) as session:
            return await store.start_pass(
                session,
                mailbox_id,
                owner,
                now=now,
                ttl=self._config.lease_ttl,
                state=SyncState.RESYNCING if resync else SyncState.SYNCING,
                safety_check_at=now + self._config.timing.safety_poll_interval,
                caused_by=current_traceparent(),
                readiness=readiness,
                push_interval=self._config.min_push_interval,
            )

    async def _check_before_pass(
        self, mailbox_id: str, reason: str, now: dt.datetime
    ) -> _Attempt | _MayStart:
        """What the mailbox's row (made if missing) says before a pass: the outcome when there is none to run;
        else the mailbox as auth knows it when a first pass or a resync needed asking."""
        async with self._db.read() as session:
            row = await store.get_sync_row(session, mailbox_id)
        mailbox: MailboxInfo | None = None
        if row is None:
            # Ingest has no row yet (no push or connection event made one): auth says whether it exists.
            mailbox = await self._ask_auth(mailbox_id)
            if mailbox is None:
                return _Attempt(PassOutcome.UNKNOWN_MAILBOX)
            async with self._db.write() as session:
                await store.ensure_mailbox(session, mailbox.mailbox_id, mailbox.email)
                row = await store.get_sync_row(session, mailbox_id)
            assert row is not None
        last_sync = _aware(row.last_sync_at)
        if reason == "PUSH" and last_sync is not None and now - last_sync < self._config.min_push_interval:
            return _Attempt(PassOutcome.TOO_SOON, self._push_wait_seconds(last_sync, now))
        if row.state in store.UNSCHEDULED_STATES:
            # R10/R11 stopped, R12 paused: only a connection event (connected, reauthorized) resumes the mailbox.
            return _Attempt(
                PassOutcome.PAUSED if row.state == SyncState.PAUSED_REAUTH else PassOutcome.STOPPED
            )
        waiting_until = _aware(row.next_attempt_at)
        if (
            reason == "PUSH"
            and row.state in store.RETRY_WAIT_STATES
            and waiting_until is not None
            and waiting_until > now
        ):
            # A failing mailbox is not hammered by its pushes; its retry is already scheduled.
            return _Attempt(PassOutcome.BACKING_OFF)
        if reason == "RESYNC" or row.history_cursor is None:
            # Where Gmail is read from (the earliest connection's start, R1) is needed before the listing.
            if not _is_connected(mailbox):
                mailbox = await self._ask_auth(mailbox_id)
            if not _is_connected(mailbox):
                # Asked after the row was read: an event that resumes the mailbox later changes the row's version.
                mailbox = await self._ask_auth(mailbox_id, fresh=True)
            if not _is_connected(mailbox):
                stopped = await self._stop(mailbox_id, _NotConnected(mailbox), seen_version=row.state_version)
                return _Attempt(stopped)
        return _MayStart(mailbox)

    async def _ask_auth(self, mailbox_id: str, *, fresh: bool = False) -> MailboxInfo | None:
        try:
            return await self._directory.get_mailbox(mailbox_id=mailbox_id, fresh=fresh)
        except GmailError as error:
            raise RetryLater(self._config.timing.backoff_base.total_seconds(), str(error)) from error

    async def _stop(self, mailbox_id: str, reason: _NotConnected, *, seen_version: int) -> PassOutcome:
        """R10/R11: no CONNECTED connection left; R12: paused until one is reauthorized. Auth's answer was asked
        of auth itself (never a kept one) after the pass read the row at `seen_version`, so a connection event
        that resumed the mailbox since then wins: the pass ends CHANGED and the event's own pass runs."""
        state = SyncState.PAUSED_REAUTH if reason.awaiting_reauth else SyncState.STOPPED
        async with self._db.write() as session:
            stopped = await store.stop_unless_changed(session, mailbox_id, state, seen_version=seen_version)
        if not stopped:
            log.info(
                "a connection event changed the mailbox while a pass was stopping it",
                extra={"mailbox_id": mailbox_id},
            )
            return PassOutcome.CHANGED
        return PassOutcome.PAUSED if state is SyncState.PAUSED_REAUTH else PassOutcome.STOPPED

    async def _leased_pass(
        self,
        lease: store.Lease,
        row: store.SyncRow,
        mailbox: MailboxInfo | None,
        resync: bool,
        *,
        listed: _Listed | None = None,
    ) -> PassOutcome:
        timing = self._config.timing
        cursor, failures, last_audit = row.history_cursor, row.consecutive_failures, row.last_audit_at
        mailbox_id = lease.mailbox_id
        work = _Pass(
            lease=lease,
            client=self._gmail_client(mailbox_id),
            cursor=cursor,
            mailbox=mailbox,
            batch_size=first_batch_size(row.recent_message_chars),
        )
        try:
            if resync:
                await self._resync(work, last_synced_ms=row.last_synced_internal_ms)
            else:
                try:
                    start = cursor if cursor is not None else work.start_history_id
                    # The look before the lease is used only if no pass moved the cursor since.
                    await self._history_pass(
                        work, start, listed if listed and listed.cursor == start else None
                    )
                except HistoryExpired:
                    async with self._db.write() as session:
                        await store.clear_cursor(session, lease)
                    work.cursor = None
                    await self._resync(work, last_synced_ms=row.last_synced_internal_ms)
            if audit_due(_aware(last_audit), self._clock.now(), timing):
                await self._audit(work)
        except _NotConnected as stopped:
            await self._record_unrecorded(work)
            return await self._stop(mailbox_id, stopped, seen_version=row.state_version)
        except PermanentAuthFailure as error:
            await self._record_unrecorded(work)
            await self._record_failure(lease, SyncState.PAUSED_REAUTH, error, failures + 1, None)
            return PassOutcome.PAUSED
        except store.LeaseLost:
            raise
        except (GmailError, nats.errors.Error, TimeoutError, OSError, BrokenProcessPool) as error:
            if isinstance(error, AccessTokenRejected):
                # Gmail refused a token the directory may still have cached: the next pass asks for a new one.
                self._tokens.forget_token(mailbox_id)
            await self._record_unrecorded(work)
            plan = plan_after_failure(failures + 1, self._clock.now(), timing)
            await self._record_failure(lease, plan.state, error, failures + 1, plan.retry_at)
            return PassOutcome.FAILED
        finished_at = self._clock.now()
        next_at, next_reason = next_check_after_success(
            work.had_work,
            finished_at,
            timing,
            last_push_at=_aware(row.last_push_at),
            listed_at=work.listed_at,
        )
        # One transaction: the last window's ledger entries, the cursor (every publish up to it is acknowledged),
        # the next check, the lease given up.
        async with self._db.write() as session:
            await store.finish_pass(
                session,
                work.lease,
                published=work.unrecorded,
                history_cursor=work.cursor,
                skipped=work.skipped,
                latest_seen_history_id=work.cursor or 0,
                now=self._clock.now(),
                next_check_at=next_at,
                next_check_reason=next_reason,
                caused_by=current_traceparent(),
                recent_message_chars=work.largest_message_chars or row.recent_message_chars,
            )
        if next_reason is CheckReason.RECHECK and self._expect_check_in is not None:
            self._expect_check_in((next_at - finished_at).total_seconds())
        return PassOutcome.SYNCED

    async def _record_unrecorded(self, work: _Pass) -> None:
        """Writes the published window kept for the pass's last transaction (before the ledger is read, or when
        the pass ends otherwise), and renews the lease with it."""
        if not work.unrecorded:
            return
        async with self._db.write() as session:
            await store.record_progress(
                session,
                work.lease,
                published=work.unrecorded,
                history_cursor=work.cursor,
                skipped=work.skipped,
                latest_seen_history_id=0,
                now=self._clock.now(),
                lease_until=self._clock.now() + self._config.lease_ttl,
            )
        work.unrecorded, work.skipped = [], 0

    async def _record_failure(
        self,
        lease: store.Lease,
        state: SyncState,
        error: Exception,
        failures: int,
        retry_at: dt.datetime | None,
    ) -> None:
        log.warning(
            "sync pass failed",
            extra={
                "mailbox_id": lease.mailbox_id,
                "state": str(state),
                "error": f"{type(error).__name__}: {error}",
            },
        )
        async with self._db.write() as session:
            await store.record_failure(
                session,
                lease,
                state=state,
                error=f"{type(error).__name__}: {error}",
                failures=failures,
                retry_at=retry_at,
                now=self._clock.now(),
                caused_by=current_traceparent(),
            )

    def _token_rejected_hook(self, mailbox_id: str) -> Callable[[str], None]:
        """Tells the token directory which token Gmail refused, so the refetch gets a new one."""
        return lambda token: self._tokens.forget_token(mailbox_id, token)

    def _token_source(self, mailbox_id: str) -> Callable[[], Awaitable[str]]:
        async def token() -> str:
            return await self._tokens.access_token(mailbox_id)

        return token

    # History --------------------------------------------------------------------------------------------------

    async def _history_pass(self, work: _Pass, cursor: int, listed: _Listed | None = None) -> None:
        if listed is not None:
            work.listed_at, listing = listed.listed_at, listed.listing
        else:
            work.listed_at = self._clock.now()
            listing = await work.client.list_history(str(cursor))
        if not listing.records:
            work.cursor = int(listing.history_id)
            return
        # Read after the listing: a location connected meanwhile gets the listed mail (R3), a disconnected mailbox
        # publishes nothing (R10, R11), and R1's earliest start is the current one.
        await self._refresh_connections(work)
        mentioned = {
            change.get("message", {}).get("id")
            for record in listing.records
            for key in ("messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved")
            for change in record.get(key, ())
        }
        mentioned.discard(None)
        async with self._db.read() as session:
            published = await store.published_among(session, work.mailbox_id, mentioned)
        plan = plan_history(
            listing.records, earliest_start_history_id=work.start_history_id, published=published
        )
        await self._publish_changes(work, plan.label_deltas, plan.deletions)
        candidates = [_Candidate(m.gmail_message_id, m.added_history_id) for m in plan.fetch]
        await self._fetch_and_publish(work, candidates, check_start_time=False)
        work.had_work = work.had_work or bool(plan.fetch or plan.label_deltas or plan.deletions)
        work.skipped += len(plan.skipped)
        # Stored at the end of the pass, with the lease given up in the same transaction.
        work.cursor = int(listing.history_id)

    async def _publish_changes(
        self, work: _Pass, deltas: Sequence[LabelDelta], deletions: Sequence[Deletion]
    ) -> None:
        """R17: label changes and deletions of published messages, acknowledged before the cursor moves."""
        mailbox_id = work.mailbox_id
        now = to_timestamp(self._clock.now())
        events: list[tuple[str, events_pb2.MessageChanged]] = []
        for delta in deltas:
            events.append(
                (
                    f"chg:{mailbox_id}:{delta.gmail_message_id}:{delta.history_id}",
                    events_pb2.MessageChanged(
                        mailbox_id=mailbox_id,
                        gmail_message_id=delta.gmail_message_id,
                        history_id=delta.history_id,
                        kind=events_pb2.MESSAGE_CHANGE_KIND_LABELS_CHANGED,
                        observe_time=now,
                        labels_added=sorted(delta.added),
                        labels_removed=sorted(delta.removed),
                    ),
                )
            )
        for deletion in deletions:
            events.append(
                (
                    f"del:{mailbox_id}:{deletion.gmail_message_id}",
                    events_pb2.MessageChanged(
                        mailbox_id=mailbox_id,
                        gmail_message_id=deletion.gmail_message_id,
                        history_id=deletion.history_id,
                        kind=events_pb2.MESSAGE_CHANGE_KIND_DELETED,
                        observe_time=now,
                    ),
                )
            )
        subject = subjects.message_changed(mailbox_id)
        await publish_all(
            self._js,
            [Outgoing(subject, event, key) for key, event in events],
            ack_timeout=self._config.publish_ack_timeout,
            attempts=self._config.publish_ack_attempts,
        )

    # Fetch, normalize, publish ----------------------------------------------------------------------------------

    async def _fetch_and_publish(
        self,
        work: _Pass,
        candidates: Sequence[_Candidate],
        *,
        check_start_time: bool,
        msg_id_suffix: str = "",
        received_before_ms: int | None = None,
    ) -> int:
        """Publishes the candidates window by window; the ledger (not the cursor) moves after each window."""
        published_total = 0
        if candidates and not work.fresh:
            await self._refresh_connections(work)
        window = max(1, self._config.fetch_window)
        for start in range(0, len(candidates), window):
            chunk = candidates[start : start + window]
            bodies = await self._fetch_raw(work, [c.gmail_message_id for c in chunk])
            # Parsed first (large messages in the worker pool), then published together: no ack waits on parsing.
            prepared = await asyncio.gather(
                *(
                    self._prepare_message(
                        work,
                        candidate,
                        bodies.pop(candidate.gmail_message_id),
                        check_start_time,
                        msg_id_suffix,
                        received_before_ms,
                    )
                    for candidate in chunk
                    if candidate.gmail_message_id in bodies
                )
            )
            del bodies
            entries = await self._publish_prepared(work, [ready for ready in prepared if ready is not None])
            # Crash tests: every publish of the window acknowledged, none recorded in the ledger yet.
            fault_point(SYNC_AFTER_PUBLISH)
            # The previous window goes to the ledger now; this one waits for the next, or the pass's last
            # transaction: a pass of one window costs no write of its own for it.
            await self._record_unrecorded(work)
            work.unrecorded = entries
            work.skipped += len(chunk) - len(entries)
            published_total += len(entries)
            work.had_work = work.had_work or bool(entries)
        return published_total

    async def _refresh_connections(self, work: _Pass) -> None:
        """The locations a message goes to are read after Gmail listed it, not when the pass began: a location
        connected between the two (R3) would otherwise miss mail delivered after its connect. Auth down is a
        failure of the pass (it backs off): nothing is published without a current snapshot."""
        mailbox = await self._directory.get_mailbox(mailbox_id=work.mailbox_id)
        if not _is_connected(mailbox):
            # A stop is decided on auth's answer now, never on a kept one (see `_stop`).
            mailbox = await self._directory.get_mailbox(mailbox_id=work.mailbox_id, fresh=True)
        if mailbox is None or not _is_connected(mailbox):
            raise _NotConnected(mailbox)
        work.mailbox = mailbox
        work.connections = connections_to_proto(mailbox.connections)
        work.fresh = True

    async def _fetch_raw(self, work: _Pass, ids: list[str]) -> dict[str, dict[str, Any]]:
        """messages.get format=raw in batches of at most 25, a bounded number in flight for this mailbox.

        The pass starts with one small batch (sized by the largest message of the mailbox's last pass,
        `first_batch_size`) and sizes the next ones by the largest message seen, so a burst of large mail is
        fetched a few at a time (bounded memory) and ordinary mail 25 at a time.

        Messages Gmail no longer has are left out (deleted before we got to them), and so are messages Gmail
        refuses for good (logged); any other failure after the adapter's retries fails the pass, so the cursor
        stays and the next pass tries again."""
        found: dict[str, dict[str, Any]] = {}
        failures: list[GmailError] = []

        async def fetch(batch_ids: list[str]) -> int:
            batch = await work.client.get_messages_raw(batch_ids)
            found.update(batch.messages)
            failures.extend(batch.failed.values())
            return max((len(str(body.get("raw", ""))) for body in batch.messages.values()), default=0)

        pending = list(ids)
        while pending:
            size = max(1, min(work.batch_size, BATCH_LIMIT))
            in_flight = 1 if work.batch_size < BATCH_LIMIT else max(1, self._config.fetch_concurrency)
            batches = [pending[i * size : (i + 1) * size] for i in range(in_flight)]
            batches = [batch for batch in batches if batch]
            pending = pending[sum(len(batch) for batch in batches) :]
            largest = max(await asyncio.gather(*(fetch(batch) for batch in batches)))
            work.largest_message_chars = max(work.largest_message_chars, largest)
            work.batch_size = max(1, min(BATCH_LIMIT, BATCH_CHARS // max(largest, 1)))
            if any(not isinstance(failure, PermanentGmailError) for failure in failures):
                break  # the pass fails below; the rest is fetched by the next one
        auth = [f for f in failures if isinstance(f, PermanentAuthFailure)]
        if auth:
            raise auth[0]
        transient = [f for f in failures if not isinstance(f, PermanentGmailError)]
        if transient:
            raise transient[0]
        for failure in failures:
            # A message Gmail refuses for good must not stall its mailbox: it is left out (and logged).
            log.error("message cannot be fetched", extra={"error": f"{type(failure).__name__}: {failure}"})
        return found

    async def _prepare_message(
        self,
        work: _Pass,
        candidate: _Candidate,
        body: dict[str, Any],
        check_start_time: bool,
        msg_id_suffix: str,
        received_before_ms: int | None,
    ) -> _Prepared | None:
        """The event to publish for one fetched message, or None when the message is not published at all."""
        labels = tuple(body.get("labelIds", ()))
        internal_ms = int(body.get("internalDate", 0) or 0)
        if set(labels) & NOT_EMAIL_LABELS:
            return None
        if received_before_ms is not None and internal_ms >= received_before_ms:
            return None
        if check_start_time and internal_ms <= work.start_ms:
            # R1 on a resync: without history ids, the connection's start time decides.
            return None
        mailbox_id = work.mailbox_id
        gmail_id = candidate.gmail_message_id
        history_id = candidate.history_id or int(body.get("historyId", 0) or 0)
        mail = await self._normalizer.normalize(
            str(body.get("raw", "")),
            MailboxCopy(
                mailbox_id=mailbox_id,
                mailbox_email=work.known.email,
                gmail_message_id=gmail_id,
                gmail_thread_id=str(body.get("threadId", "")),
                history_id=history_id,
                label_ids=labels,
                internal_time=dt.datetime.fromtimestamp(internal_ms / 1000, tz=dt.UTC)
                if internal_ms
                else None,
            ),
        )
        event = normalized_message_to_proto(
            mail,
            connections=work.connections,
            observe_time=self._clock.now(),
            mailbox_account_type=work.known.account_type,
        )
        if set(labels) & UNSYNCED_LABELS:
            _withhold_content(event)
        return _Prepared(
            Outgoing(subjects.normalized(mailbox_id), event, f"norm:{mailbox_id}:{gmail_id}{msg_id_suffix}"),
            store.PublishedEntry(gmail_id, mail.rfc_message_id, history_id, internal_ms),
        )

    async def _publish_prepared(
        self, work: _Pass, prepared: Sequence[_Prepared]
    ) -> list[store.PublishedEntry]:
        """Publishes a window's events pipelined and returns their ledger entries once every ack is in."""
        mailbox_id = work.mailbox_id
        if self._observer is not None:
            for ready in prepared:
                await self._observer.attempt(mailbox_id, ready.entry.gmail_message_id)
        acks = await publish_all(
            self._js,
            [ready.outgoing for ready in prepared],
            ack_timeout=self._config.publish_ack_timeout,
            attempts=self._config.publish_ack_attempts,
        )
        normalized = sum(1 for ack in acks if not is_duplicate(ack))
        if normalized:
            instruments().messages_normalized.add(normalized, {"mailsync.source": "gmail"})
        if self._observer is not None:
            for ready, ack in zip(prepared, acks, strict=True):
                await self._observer.acknowledged(mailbox_id, ready.entry.gmail_message_id, is_duplicate(ack))
        return [ready.entry for ready in prepared]

    # Resync and audit -------------------------------------------------------------------------------------------

    async def _resync(self, work: _Pass, *, last_synced_ms: int) -> None:
        """After a history gap (or on demand): the new cursor first, then every message since the last synced
        one (never before the earliest connection start) that was not published yet."""
        if work.mailbox is None:
            await self._refresh_connections(work)
        work.listed_at = self._clock.now()
        profile = await work.client.get_profile()
        since_ms = max(
            work.start_ms, last_synced_ms - int(self._config.resync_overlap.total_seconds() * 1000)
        )
        missing = await self._unpublished_since(work, since_ms, self._config.resync_max_messages)
        work.fresh = False  # the listing is newer than the snapshot that gave its start
        await self._fetch_and_publish(work, missing, check_start_time=True)
        new_cursor = int(profile.history_id)
        async with self._db.write() as session:
            await store.record_progress(
                session,
                work.lease,
                published=work.unrecorded,
                history_cursor=new_cursor,
                skipped=0,
                latest_seen_history_id=new_cursor,
                now=self._clock.now(),
            )
        work.cursor, work.unrecorded = new_cursor, []

    async def _audit(self, work: _Pass) -> None:
        """Compares Gmail's recent messages with the published ledger; publishes (and counts) what is missing.

        Repairs carry their own Nats-Msg-Id: the original id may still sit in the duplicate window although the
        message never reached its consumer; threading stores a message once whatever the id (R15)."""
        if work.mailbox is None:
            # Read after the pass's history listing, which is older than every message the audit may publish.
            await self._refresh_connections(work)
        now = self._clock.now()
        since_ms = max(work.start_ms, int((now - self._config.audit_window).timestamp() * 1000))
        missing = await self._unpublished_since(work, since_ms, self._config.audit_max_messages)
        repaired = await self._fetch_and_publish(
            work,
            missing,
            check_start_time=True,
            msg_id_suffix=f":audit:{int(now.timestamp())}",
            # Newer than the history listing: not missing, merely not listed yet; the next pass gets them.
            received_before_ms=work.listed_at_ms or None,
        )
        if repaired:
            log.warning(
                "audit repaired messages missing from the ledger",
                extra={"mailbox_id": work.mailbox_id, "missing": repaired},
            )
        async with self._db.write() as session:
            await store.record_audit(session, work.lease, now=now, missing=repaired)

    async def _unpublished_since(self, work: _Pass, since_ms: int, limit: int) -> list[_Candidate]:
        # Gmail's after: takes seconds; the exact start is checked per message on its internalDate.
        stubs = await work.client.list_messages(f"after:{max(since_ms // 1000 - 1, 0)}", limit=limit)
        ids = [stub["id"] for stub in stubs if "id" in stub]
        # What this pass published is compared too.
        await self._record_unrecorded(work)
        async with self._db.read() as session:
            published = await store.published_among(session, work.mailbox_id, ids)
        # Listed newest first; published oldest first.
        return [_Candidate(gmail_id, 0) for gmail_id in reversed(ids) if gmail_id not in published]


def _withhold_content(event: events_pb2.NormalizedMessage) -> None:
    """Spam and trash travel without content: only what explaining the decision needs (R16, R18)."""
    event.subject = ""
    event.text_body = ""
    event.html_body = ""
    event.snippet = ""
    event.body_truncated = False
    del event.attachments[:]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
