"""Dead letters: messages a consumer gave up on, kept in the service's database to be listed and redriven.

A redrive republishes the stored payload to its original subject with a fresh `Nats-Msg-Id` that says it is a
redrive of that record (stable per record, so a repeated redrive is absorbed by JetStream's de-duplication), and
marks the record redriven. `run_cli` is the `dead-letters list|show|redrive|discard` command every service
mounts; it reads the database as it is (the service's entry point never migrates it for this command).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import context as otel_context
from opentelemetry.trace import Link, TracerProvider, get_current_span
from sqlalchemy import delete, select, update

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database, upsert_insert
from services.runtime.instruments import instruments
from services.runtime.jetstream import extract_context, publish_payload, tracer
from services.runtime.messaging_tables import dead_letters_table

if TYPE_CHECKING:
    from services.runtime.consumer import Delivery

REDRIVE_OF_HEADER = "Mailsync-Redrive-Of"
DEAD_LETTER_ID_HEADER = "Mailsync-Dead-Letter-Id"
_ERROR_LIMIT = 4000


class DeadLetterNotFound(LookupError):
    """No dead letter has this id."""


class DeadLetterAlreadyRedriven(RuntimeError):
    """The dead letter was redriven before."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    consumer: str
    stream: str
    stream_sequence: int
    subject: str
    msg_id: str | None
    headers: dict[str, str]
    payload: bytes
    error: str
    num_delivered: int
    failed_at: dt.datetime
    redriven_at: dt.datetime | None
    redrive_msg_id: str | None


def redrive_msg_id(dead_letter_id: int, original_msg_id: str | None) -> str:
    """The Nats-Msg-Id of a redrive: new (the original id may still be in the duplicate window) and stable."""
    return f"redrive:{dead_letter_id}:{original_msg_id or ''}"


async def record_dead_letter(
    db: Database, delivery: Delivery, error: str, *, clock: Clock | None = None
) -> None:
    """Stores a delivery the consumer gives up on (once per consumer and stream sequence)."""
    values: dict[str, Any] = {
        "consumer": delivery.consumer,
        "stream": delivery.stream,
        "stream_sequence": delivery.stream_sequence,
        "subject": delivery.subject,
        "msg_id": delivery.msg_id,
        "headers": dict(delivery.headers),
        "payload": delivery.payload,
        "error": error[:_ERROR_LIMIT],
        "num_delivered": delivery.num_delivered,
        "failed_at": (clock or SystemClock()).now(),
    }
    async with db.write() as session:
        result = await session.execute(
            upsert_insert(session)(dead_letters_table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["consumer", "stream", "stream_sequence"])
        )
    if getattr(result, "rowcount", 1):
        # Counted once per message, however often it is recorded.
        instruments().dead_letters.add(
            1, {"messaging.consumer.group.name": delivery.consumer, "messaging.nats.stream": delivery.stream}
        )


async def list_dead_letters(
    db: Database, *, include_redriven: bool = False, limit: int = 100
) -> list[DeadLetter]:
    """Dead letters, oldest first; only those not yet redriven unless asked."""
    table = dead_letters_table
    query = select(table).order_by(table.c.id).limit(limit)
    if not include_redriven:
        query = query.where(table.c.redriven_at.is_(None))
    async with db.read() as session:
        rows = (await session.execute(query)).mappings().all()
    return [DeadLetter(**dict(row)) for row in rows]


async def get_dead_letter(db: Database, dead_letter_id: int) -> DeadLetter:
    async with db.read() as session:
        row = (
            (
                await session.execute(
                    select(dead_letters_table).where(dead_letters_table.c.id == dead_letter_id)
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
    return DeadLetter(**dict(row))


async def discard(db: Database, dead_letter_id: int) -> DeadLetter:
    """Deletes a dead letter the operator decided is not worth redriving; returns what was deleted."""
    letter = await get_dead_letter(db, dead_letter_id)
    async with db.write() as session:
        await session.execute(delete(dead_letters_table).where(dead_letters_table.c.id == letter.id))
    return letter


# The payload type of each kind of subject (events.proto), to show a dead letter's payload readably.
PAYLOAD_TYPES: dict[str, type[ProtoMessage]] = {
    subjects.MAILBOX_CHANGED_ALL: events_pb2.MailboxChanged,
    subjects.NORMALIZED_ALL: events_pb2.NormalizedMessage,
    subjects.MESSAGE_CHANGED_ALL: events_pb2.MessageChanged,
    subjects.SEND_PENDING_ALL: events_pb2.PendingSend,
    subjects.SEND_SENT_ALL: events_pb2.SentMessage,
    subjects.SEND_FAILED_ALL: events_pb2.SendFailed,
    subjects.CONNECTION_ALL: events_pb2.ConnectionEvent,
    subjects.CONTACT_CREATED_ALL: events_pb2.ContactCreated,
    subjects.MESSAGE_SYNCED_ALL: events_pb2.MessageSynced,
}


def _matches(pattern: str, subject: str) -> bool:
    wanted, got = pattern.split("."), subject.split(".")
    return len(wanted) == len(got) and all(w in ("*", g) for w, g in zip(wanted, got, strict=True))


def describe_payload(subject: str, payload: bytes) -> dict[str, Any]:
    """The payload as JSON of its event type when it parses as one, else its bytes in base64."""
    for pattern, message_type in PAYLOAD_TYPES.items():
        if _matches(pattern, subject):
            try:
                message = message_type.FromString(payload)
            except DecodeError:
                break
            return {
                "type": message_type.DESCRIPTOR.full_name,
                "value": json_format.MessageToDict(message, preserving_proto_field_name=True),
            }
    return {"type": "bytes", "base64": base64.b64encode(payload).decode()}


def show_document(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "state": "redriven" if letter.redriven_at else "dead",
        "consumer": letter.consumer,
        "stream": letter.stream,
        "stream_sequence": letter.stream_sequence,
        "subject": letter.subject,
        "msg_id": letter.msg_id,
        "num_delivered": letter.num_delivered,
        "failed_at": letter.failed_at.isoformat(),
        "redriven_at": letter.redriven_at.isoformat() if letter.redriven_at else None,
        "redrive_msg_id": letter.redrive_msg_id,
        "error": letter.error,
        "headers": letter.headers,
        "payload": describe_payload(letter.subject, letter.payload),
    }


async def redrive(
    db: Database,
    js: JetStreamContext,
    dead_letter_id: int,
    *,
    clock: Clock | None = None,
    tracer_provider: TracerProvider | None = None,
) -> PubAck:
    """Republishes a dead letter to its subject and marks it redriven.

    The redrive is a trace of its own (`redrive <kind>`) with a span link to the trace the message was part of:
    it happens long after, on an operator's command, and would otherwise stretch that trace over days."""
    letter = await get_dead_letter(db, dead_letter_id)
    if letter.redriven_at is not None:
        raise DeadLetterAlreadyRedriven(f"dead letter {dead_letter_id} was redriven at {letter.redriven_at}")
    msg_id = redrive_msg_id(letter.id, letter.msg_id)
    extra = {DEAD_LETTER_ID_HEADER: str(letter.id)}
    if letter.msg_id:
        extra[REDRIVE_OF_HEADER] = letter.msg_id
    original = get_current_span(extract_context(letter.headers)).get_span_context()
    with tracer(tracer_provider).start_as_current_span(
        f"redrive {subjects.kind_of(letter.subject)}",
        context=otel_context.Context(),
        links=[Link(original)] if original.is_valid else [],
        attributes={
            **subjects.key_attributes(letter.subject),
            "mailsync.dead_letter_id": letter.id,
            "messaging.consumer.group.name": letter.consumer,
            "messaging.destination.name": letter.subject,
        },
    ):
        # Publish first, then mark: a crash in between leaves the record redrivable, and the repeat is a duplicate.
        ack = await publish_payload(
            js,
            letter.subject,
            letter.payload,
            msg_id=msg_id,
            extra_headers=extra,
            tracer_provider=tracer_provider,
        )
    async with db.write() as session:
        await session.execute(
            update(dead_letters_table)
            .where(dead_letters_table.c.id == letter.id)
            .values(redriven_at=(clock or SystemClock()).now(), redrive_msg_id=msg_id)
        )
    return ack


def build_parser(prog: str = "dead-letters") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="List, show, redrive or discard this service's dead letters (the database is never migrated).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="dead letters not yet redriven")
    listing.add_argument("--all", action="store_true", help="include redriven ones")
    listing.add_argument("--limit", type=int, default=100)
    showing = commands.add_parser(
        "show", help="one dead letter with its headers, error and decoded payload (JSON)"
    )
    showing.add_argument("id", type=int)
    redriving = commands.add_parser("redrive", help="republish a dead letter to its subject")
    redriving.add_argument("id", type=int)
    discarding = commands.add_parser("discard", help="delete a dead letter that is not to be redriven")
    discarding.add_argument("id", type=int)
    return parser


async def run_cli(
    argv: Sequence[str],
    *,
    db: Database | None,
    nats_url: str,
    out: TextIO = sys.stdout,
    prog: str = "dead-letters",
) -> int:
    """`dead-letters list [--all] | show ID | redrive ID | discard ID`; returns the process exit code. `db` may
    be None only for --help (argparse exits before it is used)."""
    args = build_parser(prog).parse_args(list(argv))
    assert db is not None, "a database is needed for every dead-letters command"
    if args.command in ("show", "discard"):
        try:
            letter = await (get_dead_letter(db, args.id) if args.command == "show" else discard(db, args.id))
        except DeadLetterNotFound as exc:
            out.write(f"{exc}\n")
            return 1
        if args.command == "show":
            out.write(json.dumps(show_document(letter), indent=2) + "\n")
        else:
            out.write(f"discarded dead letter {letter.id} ({letter.subject}, seq={letter.stream_sequence})\n")
        return 0
    if args.command == "list":
        letters = await list_dead_letters(db, include_redriven=args.all, limit=args.limit)
        for letter in letters:
            state = f"redriven {letter.redriven_at:%Y-%m-%dT%H:%M:%SZ}" if letter.redriven_at else "dead"
            out.write(
                f"{letter.id}\t{state}\t{letter.failed_at:%Y-%m-%dT%H:%M:%SZ}\t{letter.consumer}\t"
                f"{letter.subject}\tseq={letter.stream_sequence}\tmsg_id={letter.msg_id}\t"
                f"deliveries={letter.num_delivered}\t{letter.error.splitlines()[0] if letter.error else ''}\n"
            )
        if not letters:
            out.write("no dead letters\n")
        return 0
    from services.runtime.nats_client import connect

    if not nats_url:
        out.write("redrive publishes to NATS: set MAILSYNC_NATS_URL (e.g. nats://127.0.0.1:4222)\n")
        return 2
    client = await connect(nats_url, name="mailsync-dead-letters")
    try:
        ack = await redrive(db, client.jetstream(), args.id)
    except (DeadLetterNotFound, DeadLetterAlreadyRedriven) as exc:
        out.write(f"{exc}\n")
        return 1
    finally:
        await client.drain()
    out.write(f"redriven dead letter {args.id} as {ack.stream} seq {ack.seq}\n")
    return 0
