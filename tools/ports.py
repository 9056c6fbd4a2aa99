"""Free loopback ports that no two processes of this machine are handed at the same time.

Binding port 0 finds a port that is free now, but the process that listens on it binds later; in between, the
kernel can give the same port to another test worker, another test run or another `make run --free-ports`
(freed ports come back soon). Every port handed out here is claimed in a file shared by all of them and not handed
out again while the claim is fresh, long enough for any process to have bound it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CLAIM_SECONDS = 300.0
CLAIMS_FILE = Path(tempfile.gettempdir()) / f"mailsync-port-claims-{os.getuid()}.json"
_ATTEMPTS = 200


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now and not handed to any other process of this user in the last few minutes."""
    with _claims() as claims:
        now = time.time()
        for port in [p for p, at in claims.items() if now - at > CLAIM_SECONDS]:
            del claims[port]
        for _ in range(_ATTEMPTS):
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = str(sock.getsockname()[1])
            if port not in claims:
                claims[port] = now
                return int(port)
    raise RuntimeError(f"no unclaimed free port on {host} after {_ATTEMPTS} tries (claims in {CLAIMS_FILE})")


@contextlib.contextmanager
def _claims() -> Iterator[dict[str, float]]:
    """The claims, read and written back under an exclusive lock (a corrupt file starts the claims afresh)."""
    descriptor = os.open(CLAIMS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            claims = json.loads(handle.read() or "{}")
        except ValueError:
            claims = {}
        if not isinstance(claims, dict):
            claims = {}
        yield claims
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(claims))
