"""`make chaos`: the real processes as `make run` starts them, under load, with kill -9 of each service and of
nats-server at random moments (seeded; the seed is printed) and Gmail faults from the sandbox's fault injector
(429/500, dropped pushes). A checker (tools.chaos_check) counts what Gmail and the CRM hold by Gmail id, by
Message-ID and by the token each case writes into every message, and every case ends with a negative control: a
second copy injected through the sandbox's admin API, which the checker must report as a duplicate.

Cases: `inbound` (N mailboxes, M messages, ingest, threading, auth and nats-server killed), `inbound-faults`
(Gmail 429/500 and dropped pushes), `sends` (one user to one recipient with one subject while outbound is
killed; each call retried with its request id until final), `sends-threading` (sends while threading is killed).
Two profiles: `ci` (a few minutes, what tests/chaos runs under `make test`) and `full` (about ten minutes, what
`make chaos` runs: the 200 sends with 10 kills of issue 11). Prints the table (case, kills, delivered, stored,
lost, duplicated, sends, Gmail copies) and exits 1 when a case fails or a control is not caught.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from mailsync.v1 import common_pb2, outbound_pb2, outbound_pb2_grpc, threading_pb2, threading_pb2_grpc
from tests.fixtures.databases import _drop_schema
from tests.fixtures.stack import AuthenticatedStub, E2EStack, running_product
from tools.chaos_check import (
    DUPLICATE_QUIET_SECONDS,
    Delivery,
    GmailCopy,
    SendOutcome,
    StoredMessage,
    Verdict,
    check_inbound,
    check_sends,
    count_settled,
    table,
)
from tools.run import SERVICES, Stack, grpc_health, tcp_health

TOKEN = re.compile(r"chaos-token:([A-Za-z0-9_.-]+)")
SEND_SUBJECT = "Following up on our call"
# What a caller sees while the process it talks to is dead or restarting: retried with the same request id.
PROCESS_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# Reconnect quickly to a restarted process (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
RESTART_TIMEOUT_SECONDS = 90.0
# A control's one injected copy: synced within a minute, plus the wait that tells a lasting duplicate (settle).
CONTROL_TIMEOUT_SECONDS = 60.0 + DUPLICATE_QUIET_SECONDS
# Settings of the chaos stack on top of the end-to-end tier's fast ones: enough send quota for the sequence, a
# safety poll that picks up what a dropped push left behind within seconds, a lease a killed ingest gives up
# soon, and outbound proving a send absent from Sent only after the sandbox's search index lag.
CHAOS_ENV = {
    "MAILSYNC_OUTBOUND_DEFAULT_DAILY_LIMIT": "2000",
    "MAILSYNC_INGEST_SAFETY_POLL_SECONDS": "5",
    "MAILSYNC_INGEST_LEASE_SECONDS": "10",
    "MAILSYNC_OUTBOUND_SENT_SEARCH_INDEX_LAG_SECONDS": "6",
    "MAILSYNC_OUTBOUND_RECOVERY_INTERVAL_SECONDS": "1",
}
SANDBOX_SETTINGS = {"replace_message_id": True, "search_index_lag_ms": 1000}


@dataclass(frozen=True)
class Profile:
    mailboxes: int
    messages_per_mailbox: int
    # Messages the outside world delivers per second (the kills fall while they arrive).
    delivery_rate: float
    inbound_kills: dict[str, int]
    fault_mailboxes: int
    fault_messages_per_mailbox: int
    fault_shares: dict[str, float]
    sends: int
    send_kills: int
    threading_sends: int
    threading_kills: int
    send_workers: int = 4
    settle_timeout: float = 240.0


PROFILES = {
    "ci": Profile(
        mailboxes=4,
        messages_per_mailbox=20,
        delivery_rate=6.0,
        inbound_kills={"ingest": 1, "threading": 1, "nats": 1, "auth": 1},
        fault_mailboxes=3,
        fault_messages_per_mailbox=15,
        fault_shares={"rate_limit_share": 0.2, "backend_error_share": 0.2, "push_drop_share": 0.2},
        sends=30,
        send_kills=3,
        threading_sends=16,
        threading_kills=2,
    ),
    "full": Profile(
        mailboxes=20,
        messages_per_mailbox=40,
        delivery_rate=12.0,
        inbound_kills={"ingest": 3, "threading": 3, "nats": 3, "auth": 2},
        fault_mailboxes=10,
        fault_messages_per_mailbox=30,
        fault_shares={"rate_limit_share": 0.2, "backend_error_share": 0.2, "push_drop_share": 0.2},
        sends=200,
        send_kills=10,
        threading_sends=40,
        threading_kills=3,
        settle_timeout=360.0,
    ),
}
CASES = ("inbound", "inbound-faults", "sends", "sends-threading")


@dataclass
class CaseResult:
    """A case's verdict and its negative control's (which must have failed)."""

    verdict: Verdict
    control: Verdict

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.control.ok and self.control.duplicated > 0


# ---- processes ------------------------------------------------------------------------------------------------


class ProcessExited(RuntimeError):
    """A process of the stack exited that the driver did not kill: mail can no longer sync, so the case stops."""


def exit_description(status: int) -> str:
    """`exited with status 1`, or `was stopped by SIGTERM` for a process a signal ended (a negative status)."""
    if status < 0:
        try:
            return f"was stopped by {signal.Signals(-status).name} (status {status})"
        except ValueError:
            return f"was stopped by signal {-status}"
    return f"exited with status {status}"


@dataclass
class Killer:
    """Kills processes of the running stack with SIGKILL and starts them again, counting the kills; and tells a
    process that exited on its own (`check_processes`) from one it is restarting."""

    runner: Stack
    log: Callable[[str], None]
    kills: Counter[str] = field(default_factory=Counter)
    # The processes being killed and restarted right now (the kill thread adds and removes them).
    restarting: set[str] = field(default_factory=set)

    def kill_and_restart(self, name: str) -> None:
        managed = self.runner.managed(name)
        assert managed is not None and managed.process is not None, f"no process {name}"
        self.restarting.add(name)
        try:
            os.kill(managed.pid, signal.SIGKILL)
            managed.process.wait(timeout=30)
            self.kills[name] += 1
            self.log(f"killed {name} (-9), restarting")
            managed.start()
            deadline = time.monotonic() + RESTART_TIMEOUT_SECONDS
            while not self._healthy(managed.name, managed.address):
                status = managed.exited()
                if status is not None:
                    raise ProcessExited(
                        f"{name} {exit_description(status)} after its restart; the end of "
                        f"{managed.log_path}:\n{managed.log_tail(30)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not healthy {RESTART_TIMEOUT_SECONDS:g} s after its restart")
                time.sleep(0.2)
        finally:
            self.restarting.discard(name)

    def check_processes(self) -> None:
        """Raises ProcessExited when a process exited that is not being restarted by this killer."""
        for managed in self.runner.processes:
            status = managed.exited()
            if status is not None and managed.name not in self.restarting:
                raise ProcessExited(
                    f"{managed.name} {exit_description(status)}, and the chaos driver did not kill it; the end "
                    f"of {managed.log_path}:\n{managed.log_tail(30)}"
                )

    @staticmethod
    def _healthy(name: str, address: str) -> bool:
        if name == "nats":
            return tcp_health(int(address.rsplit(":", 1)[1])) == "SERVING"
        return grpc_health(address) == "SERVING"


def kill_plan(rng: random.Random, kills: dict[str, int]) -> list[tuple[float, str]]:
    """(progress, process) pairs: each kill at a random share of the case's load, in a random order."""
    targets = [name for name, count in sorted(kills.items()) for _ in range(count)]
    rng.shuffle(targets)
    moments = sorted(rng.uniform(0.05, 0.9) for _ in targets)
    return list(zip(moments, targets, strict=True))


@contextmanager
def killing(
    killer: Killer, plan: list[tuple[float, str]], progress: Callable[[], float]
) -> Iterator[list[BaseException]]:
    """Runs the kill plan beside the load (each kill once progress passes its moment); errors are collected."""
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            for moment, name in plan:
                while progress() < moment and not done.is_set():
                    time.sleep(0.05)
                if done.is_set():
                    return
                killer.kill_and_restart(name)
        except BaseException as error:  # reported by the case, never lost in a thread
            errors.append(error)

    worker = threading.Thread(target=run, name="chaos-killer", daemon=True)
    worker.start()
    try:
        yield errors
    except BaseException:
        # The load stopped (a process exited, say): its progress will not reach the remaining kill moments.
        done.set()
        raise
    finally:
        worker.join(timeout=RESTART_TIMEOUT_SECONDS * 2)
        done.set()


# ---- the CRM's view ---------------------------------------------------------------------------------------------


def stub(stack: E2EStack, name: str, factory: Callable[[grpc.Channel], Any]) -> Any:
    address = stack.runner.managed(name).address  # type: ignore[union-attr]
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    stack.channels.append(channel)
    return AuthenticatedStub(factory(channel), stack.crm_token)


def token_of(*texts: str) -> str:
    for text in texts:
        found = TOKEN.search(text)
        if found:
            return found.group(1)
    return ""


def stored_messages(threading_stub: Any, location_id: str) -> list[StoredMessage]:
    """Every CRM message of the location, page by page, with the conversation's contact."""
    found: list[StoredMessage] = []
    conversations: list[threading_pb2.Conversation] = []
    token = ""
    while True:
        page = threading_stub.ListConversations(
            threading_pb2.ListConversationsRequest(location_id=location_id, page_size=100, page_token=token)
        )
        conversations += page.conversations
        token = page.next_page_token
        if not token:
            break
    for conversation in conversations:
        token = ""
        while True:
            page = threading_stub.ListMessages(
                threading_pb2.ListMessagesRequest(
                    location_id=location_id,
                    conversation_id=conversation.conversation_id,
                    page_size=100,
                    page_token=token,
                )
            )
            found += [
                StoredMessage(
                    message_id=m.message_id,
                    token=token_of(m.subject, m.text_body),
                    rfc_message_id=m.rfc_message_id,
                    contact_id=conversation.contact_id,
                    gmail_ids=tuple(c.gmail_message_id for c in m.mailbox_copies if c.gmail_message_id),
                    send_id=m.send_id,
                    rule_id=m.rule_id,
                )
                for m in page.messages
            ]
            token = page.next_page_token
            if not token:
                break
    return found


def stored_count(threading_stub: Any, location_id: str) -> int:
    """The location's message count from its conversations (cheap to poll); -1 while threading restarts."""
    total, token = 0, ""
    try:
        while True:
            page = threading_stub.ListConversations(
                threading_pb2.ListConversationsRequest(
                    location_id=location_id, page_size=100, page_token=token
                )
            )
            total += sum(c.message_count for c in page.conversations)
            token = page.next_page_token
            if not token:
                return total
    except grpc.RpcError as error:
        if error.code() in PROCESS_GONE:
            return -1
        raise


def settle(
    count: Callable[[], int], expected: int, timeout: float, *, check: Callable[[], None] = lambda: None
) -> None:
    """Waits (bounded) until `count` reached `expected` and stayed unchanged long enough (`count_settled`), so a
    late duplicate is counted too and a transient one is not; `check` raises when waiting longer is pointless."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        check()
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif count_settled(now, expected, time.monotonic() - since):
            return
        time.sleep(0.5)


def read_stored(
    threading_stub: Any, location_id: str, *, check: Callable[[], None] = lambda: None
) -> list[StoredMessage]:
    """The location's messages, retried while threading restarts."""
    for _ in range(60):
        check()
        try:
            return stored_messages(threading_stub, location_id)
        except grpc.RpcError as error:
            if error.code() not in PROCESS_GONE:
                raise
            time.sleep(1)
    return stored_messages(threading_stub, location_id)


# ---- cases ------------------------------------------------------------------------------------------------------


@dataclass
class Chaos:
    stack: E2EStack
    profile: Profile
    seed: int
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.killer = Killer(self.stack.runner, self.log)
        self.threading = stub(self.stack, "threading", threading_pb2_grpc.ThreadingServiceStub)
        self.outbound = stub(self.stack, "outbound", outbound_pb2_grpc.OutboundServiceStub)
        self.stack.sandbox.settings(**SANDBOX_SETTINGS)

    def run(self, case: str) -> CaseResult:
        runners = {
            "inbound": self.inbound,
            "inbound-faults": self.inbound_faults,
            "sends": self.sends,
            "sends-threading": self.sends_while_threading_restarts,
        }
        started = time.monotonic()
        result = runners[case]()
        self.log(f"{case}: {time.monotonic() - started:.0f} s, {'ok' if result.ok else 'FAILED'}")
        for problem in result.verdict.problems:
            self.log(f"  {problem}")
        return result

    def _read_stored(self, location: str) -> list[StoredMessage]:
        return read_stored(self.threading, location, check=self.killer.check_processes)

    # inbound ------------------------------------------------------------------------------------------------

    def inbound(self) -> CaseResult:
        p = self.profile
        return self._inbound("inbound", p.mailboxes, p.messages_per_mailbox, p.inbound_kills, {})

    def inbound_faults(self) -> CaseResult:
        p = self.profile
        return self._inbound(
            "inbound-faults", p.fault_mailboxes, p.fault_messages_per_mailbox, {}, p.fault_shares
        )

    def _inbound(
        self, case: str, mailboxes: int, per_mailbox: int, kills: dict[str, int], faults: dict[str, float]
    ) -> CaseResult:
        stack = self.stack
        location = stack.new_id("chaos")
        senders = []
        for _ in range(mailboxes):
            user = stack.create_user([location])
            address = stack.new_address("chaos")
            stack.connect_gmail(user.user_id, location, address)
            contact_address = stack.new_address("customer", "outside.test")
            contact = stack.upsert_contact(location, contact_address, assigned_user_id=user.user_id)
            senders.append((address, contact_address, contact.contact_id))
        plan = [(i % mailboxes, i) for i in range(mailboxes * per_mailbox)]
        self.rng.shuffle(plan)
        deliveries: list[Delivery] = []
        before = Counter(self.killer.kills)
        drop_share = faults.get("push_drop_share", 0.0)
        pushes_before = len(stack.sandbox.push_report()["deliveries"])
        gmail_faults = {k: v for k, v in faults.items() if k != "push_drop_share"}
        if gmail_faults:
            stack.sandbox.set_faults("*", **gmail_faults)
        if drop_share:
            stack.sandbox.settings(push_drop_share=drop_share)
        try:
            with killing(
                self.killer, kill_plan(self.rng, kills), lambda: len(deliveries) / len(plan)
            ) as errors:
                for mailbox_index, number in plan:
                    self.killer.check_processes()
                    address, contact_address, contact_id = senders[mailbox_index]
                    token = f"{case}-{number}"
                    answer = stack.deliver(
                        address, contact_address, f"Order {number}", f"Hello, chaos-token:{token} here"
                    )
                    deliveries.append(Delivery(token, answer["id"], answer["message_id"], contact_id))
                    # Paced, so the kills fall while mail arrives.
                    time.sleep(1 / self.profile.delivery_rate)
            if errors:
                raise errors[0]
            settle(
                lambda: stored_count(self.threading, location),
                len(deliveries),
                self.profile.settle_timeout,
                check=self.killer.check_processes,
            )
        finally:
            if faults:
                self.log(f"{case}: faults injected {self._faults_injected(pushes_before)}")
            if gmail_faults:
                stack.sandbox.clear_faults()
            if drop_share:
                stack.sandbox.settings(push_drop_share=0.0)
        killed = sum((self.killer.kills - before).values())
        verdict = check_inbound(case, deliveries, self._read_stored(location), kills=killed)
        # Negative control: the first message arrives a second time (same sender, same token, a new Message-ID):
        # the same email shown twice, which the checker must count.
        first = deliveries[0]
        address, contact_address, _ = next(s for s in senders if s[2] == first.contact_id)
        number = first.token.rsplit("-", 1)[1]
        stack.deliver(address, contact_address, f"Order {number}", f"Hello, chaos-token:{first.token} here")
        settle(
            lambda: stored_count(self.threading, location),
            len(deliveries) + 1,
            CONTROL_TIMEOUT_SECONDS,
            check=self.killer.check_processes,
        )
        control = check_inbound(f"{case} (control)", deliveries, self._read_stored(location), kills=0)
        control.control = True
        return CaseResult(verdict, control)

    def _faults_injected(self, pushes_before: int) -> dict[str, int]:
        """What the sandbox's fault injector did in this case: Gmail errors by reason and pushes dropped."""
        injected = dict(self.stack.sandbox.request("GET", "/admin/faults")["injected"])
        deliveries = self.stack.sandbox.push_report()["deliveries"][pushes_before:]
        injected["pushes dropped"] = sum(1 for d in deliveries if d.get("dropped"))
        injected["pushes"] = len(deliveries)
        return injected

    # sends --------------------------------------------------------------------------------------------------

    def sends(self) -> CaseResult:
        return self._sends("sends", self.profile.sends, {"outbound": self.profile.send_kills})

    def sends_while_threading_restarts(self) -> CaseResult:
        return self._sends(
            "sends-threading", self.profile.threading_sends, {"threading": self.profile.threading_kills}
        )

    def _sends(self, case: str, count: int, kills: dict[str, int]) -> CaseResult:
        stack = self.stack
        location = stack.new_id("chaos")
        user = stack.create_user([location])
        sender = stack.new_address("chaos")
        stack.connect_gmail(user.user_id, location, sender)
        recipient = stack.new_address("customer")
        stack.ensure_mailbox(recipient)
        # The recipient is the location's contact, so threading places every send in its conversation (R6).
        stack.upsert_contact(location, recipient, assigned_user_id=user.user_id)
        completed: list[int] = []
        before = Counter(self.killer.kills)

        def request(index: int) -> outbound_pb2.SendEmailRequest:
            return outbound_pb2.SendEmailRequest(
                request_id=f"{location}-{index}",
                location_id=location,
                user_id=user.user_id,
                kind=common_pb2.SEND_KIND_INDIVIDUAL,
                to=[common_pb2.EmailAddress(email=recipient)],
                subject=SEND_SUBJECT,
                text_body=f"Step {index} of the sequence. chaos-token:{case}-{index}",
            )

        def send(index: int) -> SendOutcome:
            answer = send_until_final(
                self.outbound,
                request(index),
                within=self.profile.settle_timeout,
                check=self.killer.check_processes,
            )
            completed.append(index)
            sent = answer.state == outbound_pb2.SEND_STATE_SENT
            return SendOutcome(f"{case}-{index}", answer.send_id, sent, answer.gmail_message_id)

        with killing(self.killer, kill_plan(self.rng, kills), lambda: len(completed) / count) as errors:
            with concurrent.futures.ThreadPoolExecutor(self.profile.send_workers) as pool:
                outcomes = list(pool.map(send, range(count)))
        if errors:
            raise errors[0]
        killed = sum((self.killer.kills - before).values())

        def crm_count() -> int:
            return stored_count(self.threading, location)

        settle(crm_count, count, self.profile.settle_timeout, check=self.killer.check_processes)
        verdict = self._check_sends(
            case, location, user.user_id, sender, recipient, outbound=outcomes, kills=killed
        )
        # Negative control: the user sends step 0 again from Gmail's own UI: a second copy in Sent, in the
        # recipient's inbox and (by R5) in the CRM, which the checker must count.
        stack.sandbox.user_send(
            sender, to=[recipient], subject=SEND_SUBJECT, body=f"Step 0 of the sequence. chaos-token:{case}-0"
        )
        settle(crm_count, count + 1, CONTROL_TIMEOUT_SECONDS, check=self.killer.check_processes)
        control = self._check_sends(
            f"{case} (control)", location, user.user_id, sender, recipient, outbound=outcomes, kills=0
        )
        control.control = True
        return CaseResult(verdict, control)

    def _check_sends(
        self,
        case: str,
        location: str,
        user_id: str,
        sender: str,
        recipient: str,
        *,
        outbound: list[SendOutcome],
        kills: int,
    ) -> Verdict:
        def copies(address: str, label: str) -> list[GmailCopy]:
            return [
                GmailCopy(m["id"], m["message_id"])
                for m in self.stack.sandbox.messages(address)
                if label in m["labelIds"] and m["subject"] == SEND_SUBJECT
            ]

        quota = call_until_answered(
            lambda: self.outbound.GetQuota(
                outbound_pb2.GetQuotaRequest(location_id=location, user_id=user_id)
            )
        )
        return check_sends(
            case,
            outbound,
            copies(sender, "SENT"),
            copies(recipient, "INBOX"),
            self._read_stored(location),
            quota.used,
            kills=kills,
        )


def call_until_answered(call: Callable[[], Any], within: float = 120.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() not in PROCESS_GONE or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def send_until_final(
    outbound: Any,
    request: outbound_pb2.SendEmailRequest,
    within: float,
    *,
    check: Callable[[], None] = lambda: None,
) -> outbound_pb2.Send:
    """SendEmail with the same request id until the send is final (SENT or FAILED), through kills."""
    deadline = time.monotonic() + within
    last: outbound_pb2.Send | None = None
    while time.monotonic() < deadline:
        check()
        try:
            last = outbound.SendEmail(request).send
        except grpc.RpcError as error:
            if error.code() not in PROCESS_GONE:
                raise
        else:
            if last.state in (outbound_pb2.SEND_STATE_SENT, outbound_pb2.SEND_STATE_FAILED):
                return last
        time.sleep(0.3)
    if last is None:
        raise TimeoutError(f"send {request.request_id} got no answer within {within:g} s")
    return last


# ---- running it -------------------------------------------------------------------------------------------------


@contextmanager
def chaos_stack(var_dir: Path, postgres_url: str | None = None) -> Iterator[E2EStack]:
    """The product as `make run` starts it (tools.run.Stack through the end-to-end tier's launcher), with the
    chaos settings and no second outbound replica; on PostgreSQL (fresh schemas, dropped after) when
    `postgres_url` is given, on SQLite files under `var_dir` otherwise."""
    env = dict(CHAOS_ENV)
    schemas: list[str] = []
    if postgres_url:
        run_id = uuid.uuid4().hex[:8]
        env["MAILSYNC_DATABASE_URL"] = postgres_url
        for service in SERVICES:
            schemas.append(f"chaos_{run_id}_{service}")
            env[f"MAILSYNC_{service.upper()}_DATABASE_SCHEMA"] = schemas[-1]
    try:
        with running_product(var_dir, extra_env=env, replica=False) as stack:
            yield stack
    finally:
        for schema in schemas:
            assert postgres_url is not None
            _drop_schema(postgres_url, schema)


def run_cases(stack: E2EStack, profile: Profile, seed: int, cases: list[str]) -> list[CaseResult]:
    chaos = Chaos(stack, profile, seed)
    return [chaos.run(case) for case in cases]


def report(results: list[CaseResult]) -> str:
    verdicts = [v for r in results for v in (r.verdict, r.control)]
    return table(verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--seed", type=int, default=None, help="replays a run's kill moments and faults")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--sends", type=int, default=None, help="sends of the `sends` case")
    parser.add_argument("--send-kills", type=int, default=None, help="outbound kills of the `sends` case")
    parser.add_argument("--var-dir", type=Path, default=None, help="where the stack's data and logs go")
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="run the services on this PostgreSQL server (fresh schemas, dropped after); SQLite files otherwise",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    profile = PROFILES[args.profile]
    if args.sends is not None:
        profile = replace(profile, sends=args.sends)
    if args.send_kills is not None:
        profile = replace(profile, send_kills=args.send_kills)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    print(f"chaos: profile {args.profile}, seed {seed} (--seed {seed} replays it)", flush=True)
    var_dir = args.var_dir or Path(tempfile.mkdtemp(prefix="mailsync-chaos-"))
    print(f"chaos: stack data and logs under {var_dir}", flush=True)
    print(f"chaos: database {'PostgreSQL' if args.postgres_url else 'SQLite'}", flush=True)
    started = time.monotonic()
    with chaos_stack(var_dir.resolve(), args.postgres_url) as stack:
        results = run_cases(stack, profile, seed, cases)
    print()
    print(report(results))
    print(f"\nseed {seed}, {time.monotonic() - started:.0f} s")
    failed = [r for r in results if not r.ok]
    for result in failed:
        if not result.verdict.ok:
            print(f"{result.verdict.case}: " + "; ".join(result.verdict.problems), file=sys.stderr)
        if result.control.ok:
            print(f"{result.control.case}: the checker missed the injected duplicate", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
