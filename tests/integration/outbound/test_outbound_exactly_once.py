"""Exactly once to the customer under kill -9 (issue 11): a follow-up sequence (one user, one contact, one subject)
sent while outbound is killed at its fault points (right before Gmail's messages.send, between Gmail's answer and
its record, during a recovery's Sent-folder search) and restarted, each call retried with its request id until
final, the sandbox replacing Message-IDs and its search index lagging as Gmail's does. The checker counts by Gmail
id and by the product's send id header: N copies in Sent and N in the customer's inbox, every send claiming a
distinct copy that carries its own id, N sent events, GetQuota.used = N. The negative control recovers with no
regard for the index lag and the checker finds the duplicate.

Defaults keep the run well under two minutes; OUTBOUND_CRASH_SENDS and OUTBOUND_CRASH_KILLS make it the issue's
200 sends with 10 kills.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Any

import pytest

from mailsync.v1 import outbound_pb2
from services.outbound.domain.send_state import SEND_ID_HEADER
from services.outbound.sending import AFTER_GMAIL_ANSWER, AFTER_SENT_SEARCH, BEFORE_GMAIL_SEND
from services.runtime.service import stop_service
from tests.fixtures.outbound_world import LOCATION, OutboundWorld, individual
from tests.integration.outbound.crashing_outbound import CrashingOutbound, send_until_final

ALICE = "alice@gmail.com"
CUSTOMER = "customer@example.com"
SUBJECT = "Following up on our call"
SENDS = int(os.environ.get("OUTBOUND_CRASH_SENDS", "60"))
KILLS = int(os.environ.get("OUTBOUND_CRASH_KILLS", "6"))
WORKERS = 4
# Bounds against a hang, not speed checks: sends through six kills and restarts on a shared two-core machine.
pytestmark = pytest.mark.timeout(900)


async def _crashing_outbound(
    world: OutboundWorld,
    outbound_processes: Any,
    tmp_path: Path,
    *,
    sandbox_index_lag_ms: int,
    **settings: Any,
) -> CrashingOutbound:
    assert world.service is not None
    await stop_service(world.service)
    world.sandbox.create_mailbox(CUSTOMER)
    await world.connect("u1", ALICE)
    world.sandbox.admin.settings(replace_message_id=True, search_index_lag_ms=sandbox_index_lag_ms)
    # A ten-minute lease: a crashed process's sends can only be taken over this fast because it is known dead.
    outbound = CrashingOutbound(
        world,
        outbound_processes,
        world.settings.model_copy(update={"send_lease_seconds": 600.0, **settings}),
        tmp_path,
    )
    await outbound.start()
    return outbound


def _request(index: int) -> outbound_pb2.SendEmailRequest:
    return individual(f"sequence-{index}", CUSTOMER, subject=SUBJECT, body=f"Step {index} of the sequence.")


async def _send_all(outbound: CrashingOutbound, count: int, completed: list[int]) -> list[outbound_pb2.Send]:
    """Sends `count` emails from WORKERS concurrent callers, noting each completed index in `completed`."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    sends: dict[int, outbound_pb2.Send] = {}

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            sends[index] = await send_until_final(outbound, _request(index))
            completed.append(index)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return [sends[index] for index in range(count)]


async def _kill_during(outbound: CrashingOutbound, completed: list[int], count: int, kills: int) -> None:
    """Arms a fault point every count/(kills+1) completed sends and restarts the process it kills."""
    cycle = [BEFORE_GMAIL_SEND, AFTER_GMAIL_ANSWER, AFTER_SENT_SEARCH]
    for kill in range(kills):
        await _wait_for_completed(completed, (kill + 1) * count // (kills + 1))
        point = cycle[kill % len(cycle)]
        if point == AFTER_SENT_SEARCH:
            # A crash during the recovery of a crash: killed after Gmail's answer, then again during the
            # restarted process's search for that send (its recovery runs at start, so it is armed from then).
            outbound.arm(AFTER_GMAIL_ANSWER)
            await outbound.restart_after_crash(AFTER_GMAIL_ANSWER, arm_next=AFTER_SENT_SEARCH)
            outbound.kills.remove(AFTER_GMAIL_ANSWER)
            if AFTER_SENT_SEARCH not in outbound.kills[-1:]:
                await outbound.restart_after_crash(AFTER_SENT_SEARCH)
            continue
        outbound.arm(point)
        await outbound.restart_after_crash(point)


async def _wait_for_completed(completed: list[int], count: int, within: float = 600.0) -> None:
    async with asyncio.timeout(within):
        while len(completed) < count:  # noqa: ASYNC110 - another task appends to the list
            await asyncio.sleep(0.05)


def _copies(world: OutboundWorld, address: str, label: str) -> list[dict[str, Any]]:
    return [m for m in world.sandbox.admin.messages(address) if label in m["labelIds"]]


def _send_id_headers(world: OutboundWorld, gmail_ids: list[str]) -> dict[str, str]:
    """The product's send id header on each Sent copy, read through the Gmail API."""
    gmail = world.sandbox.gmail(ALICE)
    headers = {}
    for gmail_id in gmail_ids:
        message = (
            gmail.users()
            .messages()
            .get(userId="me", id=gmail_id, format="metadata", metadataHeaders=[SEND_ID_HEADER])
            .execute()
        )
        values = [
            h["value"] for h in message["payload"]["headers"] if h["name"].lower() == SEND_ID_HEADER.lower()
        ]
        headers[gmail_id] = values[0] if values else ""
    return headers


async def test_R15_a_follow_up_sequence_reaches_the_customer_exactly_once_while_outbound_is_killed(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    # Gmail's index lags 1 s; outbound proves a send absent only 6 s after its call could have been accepted (the
    # margin covers a request the loaded sandbox handles late).
    outbound = await _crashing_outbound(
        world, outbound_processes, tmp_path, sandbox_index_lag_ms=1000, sent_search_index_lag_seconds=6.0
    )

    completed: list[int] = []
    sending = asyncio.create_task(_send_all(outbound, SENDS, completed))
    await _kill_during(outbound, completed, SENDS, KILLS)
    sends = await sending

    assert len(outbound.kills) == KILLS, outbound.kills
    sent_copies = _copies(world, ALICE, "SENT")
    inbox_copies = _copies(world, CUSTOMER, "INBOX")
    claimed = [send.gmail_message_id for send in sends]
    assert len(sent_copies) == SENDS, _duplicates(world, sent_copies, sends)
    assert len(inbox_copies) == SENDS
    assert len(set(claimed)) == SENDS and set(claimed) == {m["id"] for m in sent_copies}
    headers = _send_id_headers(world, claimed)
    assert all(headers[send.gmail_message_id] == send.send_id for send in sends)
    quota = await outbound.stub().GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert quota.used == SENDS
    sent_events = await world.events.wait_for("sent", SENDS, within=300)
    assert collections.Counter(event.send.send_id for event in sent_events) == collections.Counter(
        send.send_id for send in sends
    )
    assert {event.gmail_message_id for event in sent_events} == set(claimed)
    log = (tmp_path / "outbound.log").read_text(errors="replace")
    # For the record (pytest -s): what the kills left to recover and how it was settled.
    print(
        {
            "sends": SENDS,
            "kills": dict(collections.Counter(outbound.kills)),
            "sent_copies": len(sent_copies),
            "inbox_copies": len(inbox_copies),
            "quota_used": quota.used,
            "recoveries": log.count("recovering a send left unsettled"),
            "found_in_sent": log.count("found a send of unknown outcome in the Sent folder"),
            "sent_again_after_proof": log.count("is not in the Sent folder: it is sent again"),
        }
    )


def _duplicates(world: OutboundWorld, copies: list[dict[str, Any]], sends: list[outbound_pb2.Send]) -> str:
    headers = _send_id_headers(world, [m["id"] for m in copies])
    counted = collections.Counter(headers.values())
    return f"send ids in Sent more than once: {[s for s, n in counted.items() if n > 1]}; sends: {len(sends)}"


async def test_R15_negative_control_a_recovery_that_ignores_the_index_lag_sends_a_second_copy(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    # Gmail's index shows a message only after the test is over (a 30 s lag was outlived by a restart on a loaded
    # machine); outbound takes any empty search as proof.
    outbound = await _crashing_outbound(
        world, outbound_processes, tmp_path, sandbox_index_lag_ms=3_600_000, sent_search_index_lag_seconds=0.0
    )
    first = await send_until_final(outbound, _request(0))
    outbound.arm(AFTER_GMAIL_ANSWER)

    crashed = asyncio.create_task(send_until_final(outbound, _request(1)))
    await outbound.restart_after_crash(AFTER_GMAIL_ANSWER)
    second = await crashed

    # The checker of the test above: two sends, three copies, one send id twice.
    sent_copies = _copies(world, ALICE, "SENT")
    assert len(sent_copies) == 3
    headers = _send_id_headers(world, [m["id"] for m in sent_copies])
    assert collections.Counter(headers.values()) == {first.send_id: 1, second.send_id: 2}
