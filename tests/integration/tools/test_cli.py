"""The command-line client (`python -m tools.cli`) against the stack `make run` starts (`python -m tools.run
--free-ports` as a real process): it finds the stack through var/run/stack.json, connects a Gmail mailbox with a
scripted consent, adds contacts, plays the outside world, sees the synced mail, explains it, sends from the CRM
through Gmail and SMTP, streams newly synced messages, and reports gRPC failures by their status."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.fixtures.make_run import running_make_run
from tests.fixtures.smtp_server import RecordingHandler
from tests.fixtures.stack import FAST_SETTINGS, eventually
from tools import cli
from tools.ports import free_port
from tools.run import ROOT

SYNC_TIMEOUT_SECONDS = 90.0


@dataclass
class RunningStack:
    stack_file: Path
    smtp: RecordingHandler


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`python -m tools.run --free-ports` in its own var dir, with an SMTP sink as the location's provider."""
    smtp = RecordingHandler()
    smtp_controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    smtp_controller.start()
    settings = {
        **FAST_SETTINGS,
        "MAILSYNC_OUTBOUND_SMTP_HOST": "127.0.0.1",
        "MAILSYNC_OUTBOUND_SMTP_PORT": str(smtp_controller.port),
        "MAILSYNC_OUTBOUND_SMTP_SECURITY": "NONE",
        "MAILSYNC_OUTBOUND_SMTP_SENDER_EMAIL": "news@location.test",
    }
    try:
        with running_make_run(tmp_path_factory.mktemp("cli-stack"), settings) as stack_file:
            yield RunningStack(stack_file, smtp)
    finally:
        smtp_controller.stop()


@dataclass
class Cli:
    """Runs `tools.cli.main` in this process with --json and the stack file, and reads what it printed."""

    stack: RunningStack
    capsys: pytest.CaptureFixture[str]
    location: str

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = cli.main(
            ["--stack-file", str(self.stack.stack_file), "--location", self.location, "--json", *argv]
        )
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def __call__(self, *argv: str) -> Any:
        code, out, err = self.run(*argv)
        assert code == 0, f"`cli {' '.join(argv)}` failed: {err}"
        return json.loads(out.strip().splitlines()[-1])

    def fails(self, *argv: str) -> str:
        code, _out, err = self.run(*argv)
        assert code == 1, f"`cli {' '.join(argv)}` did not fail: {err}"
        return err

    def watch_process(self, *argv: str) -> subprocess.Popen[str]:
        """`python -m tools.cli watch ...` as its own process, the way a developer runs it."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.cli",
                "--stack-file",
                str(self.stack.stack_file),
                "--location",
                self.location,
                "--json",
                "watch",
                *argv,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def run_cli(running_stack: RunningStack, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The CLI acting for a fresh location, so tests sharing the stack do not see each other's data."""
    return Cli(running_stack, capsys, f"loc-{uuid.uuid4().hex[:8]}")


def fresh(name: str, domain: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}@{domain}"


def connected_user(run_cli: Cli) -> tuple[str, str, dict[str, Any]]:
    """A sandbox mailbox, a CRM user, and the user's connection made through the CLI's scripted consent."""
    mailbox = fresh("alice", "gmail.test")
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    run_cli("mailbox", "create", mailbox)
    added = run_cli("user", "add", user_id, "--email", fresh("alice", "crm.test"), "--name", "Alice")
    assert added["applied"] and added["user"]["location_ids"] == [run_cli.location]
    connection = run_cli("connect", user_id, "--approve", mailbox)
    return user_id, mailbox, connection


def synced_conversation(run_cli: Cli, contact_id: str, count: int) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        conversations = run_cli("conversations", "--contact", contact_id)
        return next((c for c in conversations if int(c.get("message_count", 0)) >= count), None)

    return eventually(
        found, timeout=SYNC_TIMEOUT_SECONDS, what=f"{count} message(s) in {contact_id}'s conversation"
    )


def test_connect_with_approve_and_mail_from_an_assigned_contact_shows_in_conversations_messages_and_explain(
    run_cli: Cli, tmp_path: Path
) -> None:
    user_id, mailbox, connection = connected_user(run_cli)
    assert connection["state"] == "CONNECTION_STATE_CONNECTED"
    assert connection["mailbox_email"] == mailbox and connection["user_id"] == user_id
    listed = run_cli("connections")
    assert [c["connection_id"] for c in listed] == [connection["connection_id"]]

    carol = fresh("carol", "outside.test")
    contact = run_cli("contact", "add", carol, "--name", "Carol", "--assign", user_id)["contact"]
    assert [c["contact_id"] for c in run_cli("contact", "list", "--email", carol)] == [contact["contact_id"]]
    quote = tmp_path / "quote.pdf"
    quote.write_bytes(b"%PDF-1.4 quote")

    delivered = run_cli(
        "deliver", mailbox, "--from", f"Carol <{carol}>", "--subject", "Quote request",
        "--body", "Can you send a quote?", "--attach", str(quote),
    )  # fmt: skip

    conversation = synced_conversation(run_cli, contact["contact_id"], 1)
    (message,) = run_cli("messages", "--conversation", conversation["conversation_id"])
    assert run_cli("messages", "--contact", contact["contact_id"]) == [message]
    assert message["rfc_message_id"] == delivered["message_id"]
    assert message["subject"] == "Quote request" and message["rule_id"] == "R2"
    assert message["direction"] == "DIRECTION_INBOUND"
    assert "Can you send a quote?" in message["text_body"]
    assert [a["filename"] for a in message["attachments"]] == ["quote.pdf"]
    explanation = run_cli("explain", "--rfc-message-id", delivered["message_id"])
    (decision,) = explanation["decisions"]
    assert decision["synced"] and decision["rule_id"] == "R2"
    assert decision["message_id"] == message["message_id"]
    status = run_cli("sync-status", "--user", user_id)
    assert status["mailbox_email"] == mailbox and int(status["messages_published"]) >= 1


class Watcher:
    """Lines printed by a running `watch` process, read on a thread so waiting for one has a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def test_reply_sent_from_the_cli_goes_out_through_gmail_counts_in_the_quota_and_is_watched(
    run_cli: Cli,
) -> None:
    user_id, mailbox, _connection = connected_user(run_cli)
    dave = fresh("dave", "outside.test")
    contact = run_cli("contact", "add", dave, "--assign", user_id)["contact"]
    # The stream starts with what syncs after it subscribed: mail keeps arriving until the watcher sees one.
    watcher = Watcher(run_cli.watch_process())
    try:
        first = None
        for attempt in range(int(SYNC_TIMEOUT_SECONDS)):
            run_cli("deliver", mailbox, "--from", dave, "--subject", f"Offer {attempt}", "--body", "Offer?")
            first = watcher.next(timeout=1.0)
            if first is not None:
                break
        assert first is not None, "`watch` printed nothing while mail kept syncing"
        assert first["synced"]["contact_id"] == contact["contact_id"]
        assert first["synced"]["direction"] == "DIRECTION_INBOUND"
        parent_id = first["synced"]["message_id"]

        send = run_cli("send", user_id, "--reply-to", parent_id, "--to", dave, "--body", "Here it is")

        def reply_watched() -> dict[str, Any] | None:
            watched = watcher.next(timeout=1.0)
            return watched if watched and watched["synced"]["direction"] == "DIRECTION_OUTBOUND" else None

        reply = eventually(reply_watched, timeout=SYNC_TIMEOUT_SECONDS, what="the reply in `watch`")["synced"]
    finally:
        watcher.stop()
    assert send["state"] == "SEND_STATE_SENT" and send["mailbox_email"] == mailbox
    assert reply["rule_id"] == "R6" and reply["message_id"]
    assert reply["conversation_id"] == first["synced"]["conversation_id"]
    parent = next(
        m
        for m in run_cli("messages", "--conversation", reply["conversation_id"])
        if m["message_id"] == parent_id
    )
    assert send["gmail_thread_id"] == parent["mailbox_copies"][0]["gmail_thread_id"]
    # Resuming after the first message's cursor replays what synced since, the reply among it.
    resumed = Watcher(run_cli.watch_process("--after", first["cursor"]))
    try:
        replayed = eventually(
            lambda: (
                (item := resumed.next(timeout=1.0)) and item["synced"]["message_id"] == reply["message_id"]
            ),
            what="the reply replayed after the cursor",
        )
    finally:
        resumed.stop()
    assert replayed
    quota = run_cli("quota", user_id)
    assert quota["mailbox_email"] == mailbox and quota["used"] == 1


def test_bulk_send_goes_through_the_locations_smtp_provider(run_cli: Cli) -> None:
    user_id, _mailbox, _connection = connected_user(run_cli)
    erin = fresh("erin", "outside.test")

    send = run_cli("send", user_id, "--bulk", "--to", erin, "--subject", "News", "--body", "Spring offers")

    assert send["kind"] == "SEND_KIND_BULK"
    received = eventually(
        lambda: [m for m in run_cli.stack.smtp.received if erin in m.rcpt_tos],
        what="the bulk mail at the SMTP provider",
    )
    assert b"Spring offers" in received[0].content


def test_a_denied_consent_connects_nothing(run_cli: Cli) -> None:
    mailbox = fresh("frank", "gmail.test")
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    run_cli("mailbox", "create", mailbox)
    run_cli("user", "add", user_id, "--email", fresh("frank", "crm.test"))

    denied = run_cli("connect", user_id, "--approve", mailbox, "--decision", "deny")

    assert "callback_status" in denied
    assert run_cli("connections", "--user", user_id) == []
    # The same user can still connect afterwards: the denial was the only thing missing.
    assert run_cli("connect", user_id, "--approve", mailbox)["state"] == "CONNECTION_STATE_CONNECTED"


def test_failures_print_the_grpc_status_and_message(run_cli: Cli, tmp_path: Path) -> None:
    unknown = run_cli.fails("explain", "--rfc-message-id", "<never-seen@outside.test>")
    assert unknown.startswith("error: NOT_FOUND: ")
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    run_cli("user", "add", user_id, "--email", fresh("bob", "crm.test"))
    not_connected = run_cli.fails("quota", user_id)
    assert not_connected.startswith("error: ") and len(not_connected.split(": ", 2)) == 3
    other_token = run_cli.fails("--token", "not-a-token", "contact", "list")
    assert other_token.startswith("error: UNAUTHENTICATED: ")
    missing = cli.main(["--stack-file", str(tmp_path / "absent.json"), "connections"])
    assert missing == 1
    assert "is `make run` running?" in run_cli.capsys.readouterr().err
