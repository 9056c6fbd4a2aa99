"""Optional JSON state file, so a demo's mailboxes, grants and settings survive a sandbox restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sandbox import mime
from sandbox.core import SandboxCore
from sandbox.grants import AccessToken, Client, Grant
from sandbox.keys import SigningKey
from sandbox.push import PushTarget, Watch
from sandbox.state import HistoryRecord, Label, OutboxEntry, StoredMessage

AUTOSAVE_INTERVAL_S = 3.0


def dump(core: SandboxCore) -> dict[str, Any]:
    mailboxes = []
    for box in core.mail.mailboxes.values():
        mailboxes.append(
            {
                "address": box.address,
                "password": box.password,
                "workspace": box.workspace,
                "daily_send_limit": box.daily_send_limit,
                "display_name": box.display_name,
                "credential_epoch": box.credential_epoch,
                "history_id": box.history_id,
                "history_floor": box.history_floor,
                "sends_ms": list(box.sends_ms),
                "labels": [asdict(label) for label in box.labels.values() if label.type == "user"],
                "messages": [
                    {
                        "id": m.id,
                        "thread_id": m.thread_id,
                        "label_ids": m.label_ids,
                        "raw": mime.b64url(m.raw),
                        "internal_date_ms": m.internal_date_ms,
                        "history_id": m.history_id,
                    }
                    for m in box.messages.values()
                ],
                "history": [asdict(record) for record in box.history],
            }
        )
    return {
        "version": 1,
        "settings": core.settings.as_json(),
        "key": {
            "kid": core.key.kid,
            "private_pem": core.key.private_pem.decode(),
            "certificate_pem": core.key.certificate_pem.decode(),
        },
        "mailboxes": mailboxes,
        "outbox": [{**asdict(e), "raw": mime.b64url(e.raw)} for e in core.mail.outbox],
        "clients": [asdict(c) for c in core.grants.clients.values()],
        "grants": [asdict(g) for g in core.grants.grants.values()],
        "access_tokens": [
            {
                "token": t.token,
                "refresh_token": t.grant.refresh_token,
                "scopes": t.scopes,
                "expires_at_ms": t.expires_at_ms,
            }
            for t in core.grants.access_tokens.values()
        ],
        "push": {
            "default": asdict(core.push.default_target),
            "topics": {k: asdict(v) for k, v in core.push.topics.items()},
            "watches": {k: asdict(v) for k, v in core.push.watches.items()},
        },
    }


def restore(core: SandboxCore, data: dict[str, Any]) -> None:
    core.reset()
    core.settings.update(data["settings"])
    core.key = SigningKey(
        kid=data["key"]["kid"],
        private_pem=data["key"]["private_pem"].encode(),
        certificate_pem=data["key"]["certificate_pem"].encode(),
    )
    core.push.key = core.key
    for saved in data["mailboxes"]:
        box = core.mail.create_mailbox(
            saved["address"],
            saved["password"],
            saved["workspace"],
            saved["daily_send_limit"],
            saved["display_name"],
        )
        box.credential_epoch = saved["credential_epoch"]
        box.history_id, box.history_floor = saved["history_id"], saved["history_floor"]
        box.sends_ms = deque(saved["sends_ms"])
        for label in saved["labels"]:
            box.labels[label["id"]] = Label(**label)
        for m in saved["messages"]:
            raw = mime.b64url_decode(m["raw"])
            parsed = mime.parse(raw)
            message = StoredMessage(
                id=m["id"],
                thread_id=m["thread_id"],
                label_ids=m["label_ids"],
                raw=raw,
                parsed=parsed,
                internal_date_ms=m["internal_date_ms"],
                history_id=m["history_id"],
                rfc_message_id=(mime.message_ids(parsed.header("Message-ID")) or [""])[0],
            )
            box.messages[message.id] = message
            box.threads.setdefault(message.thread_id, []).append(message.id)
            if message.rfc_message_id:
                box.by_rfc_id.setdefault(message.rfc_message_id, []).append(message.id)
        box.history = [HistoryRecord(**record) for record in saved["history"]]
    core.mail.outbox = [OutboxEntry(**{**e, "raw": mime.b64url_decode(e["raw"])}) for e in data["outbox"]]
    core.grants.clients = {c["client_id"]: Client(**c) for c in data["clients"]}
    core.grants.grants = {g["refresh_token"]: Grant(**g) for g in data["grants"]}
    core.grants.access_tokens = {
        t["token"]: AccessToken(
            token=t["token"],
            grant=core.grants.grants[t["refresh_token"]],
            scopes=t["scopes"],
            expires_at_ms=t["expires_at_ms"],
        )
        for t in data["access_tokens"]
        if t["refresh_token"] in core.grants.grants
    }
    core.push.default_target = PushTarget(**data["push"]["default"])
    core.push.topics = {k: PushTarget(**v) for k, v in data["push"]["topics"].items()}
    core.push.watches = {k: Watch(**v) for k, v in data["push"]["watches"].items()}


class StateFile:
    """Loads the file at startup (when present) and rewrites it atomically every few seconds and at shutdown."""

    def __init__(self, path: Path, core: SandboxCore) -> None:
        self.path = path
        self.core = core
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        if self.path.exists():
            restore(self.core, json.loads(self.path.read_text()))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        temporary.write_text(json.dumps(dump(self.core)))
        os.replace(temporary, self.path)

    def start_autosave(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(AUTOSAVE_INTERVAL_S)
                self.save()

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop_autosave(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.save()
