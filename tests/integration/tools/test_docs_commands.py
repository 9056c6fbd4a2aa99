"""Every shell block of README.md and docs/*.md runs as written against a stack `make run` starts
(`python -m tools.run --free-ports`), so the docs cannot drift from the product.

A block fenced as ```sh (or bash, shell) runs; one fenced as ```sh no-run: <reason> is not, and must say why.
The runnable blocks of a page run in order in one bash (`set -euo pipefail`, cwd the checkout, the CLI's stack
file pointed at the test's stack), so a block may use the shell variables an earlier one set, as a reader's
shell would. A failing block is named by file and line, with the output so far."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.make_run import running_make_run
from tools.run import ROOT

SHELL_LANGUAGES = ("sh", "bash", "shell")
FENCE = re.compile(r"^```(\S*)(.*)$")
NO_RUN = re.compile(r"^\s*no-run(?::\s*(.*))?$")
# Bounded: a hung command fails the test instead of hanging the suite (the demo waits at most 60 s per step).
PAGE_TIMEOUT_SECONDS = 900.0
MARKER = "::docs-block::"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    @property
    def no_run_reason(self) -> str | None:
        """None when the block runs; the reason (possibly empty) when it is fenced no-run."""
        match = NO_RUN.match(self.info)
        return None if match is None else (match.group(1) or "").strip()


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if opened is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        yield Block(path, start + 1, opened.group(1), opened.group(2), "\n".join(body))


def runnable(path: Path) -> list[Block]:
    return [b for b in blocks_of(path) if b.shell and b.no_run_reason is None]


def page_script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for block in blocks:
        parts.append(f"echo '{MARKER}{block.where}' >&2")
        parts.append(block.text)
    parts.append(f"echo '{MARKER}end' >&2")
    return "\n".join(parts) + "\n"


def test_every_shell_block_either_runs_or_says_why_not() -> None:
    unexplained = [
        b.where for page in doc_pages() for b in blocks_of(page) if b.shell and b.no_run_reason == ""
    ]
    assert not unexplained, f"blocks fenced no-run without a reason (```sh no-run: why): {unexplained}"
    unlabelled = [
        b.where
        for page in doc_pages()
        for b in blocks_of(page)
        if b.language == "" and re.search(r"^\s*(make|mailsync|python|curl) ", b.text, re.M)
    ]
    assert not unlabelled, f"commands in a block without a language (fence it as ```sh): {unlabelled}"


def test_the_block_reader_finds_runnable_and_no_run_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```sh\necho one\n```\n\n```sh no-run: starts a server\nmake run\n```\n\n"
        "```python\nprint()\n```\n\n```sh no-run\nx\n```\n"
    )
    found = list(blocks_of(page))
    assert [(b.line, b.language, b.no_run_reason) for b in found] == [
        (3, "sh", None),
        (7, "sh", "starts a server"),
        (11, "python", None),
        (15, "sh", ""),
    ]
    assert [b.text for b in runnable(page)] == ["echo one"]


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make run`'s stack with its default settings: what a reader of the docs gets."""
    with running_make_run(tmp_path_factory.mktemp("docs-stack")) as stack_file:
        yield stack_file


PAGES_WITH_COMMANDS = [page for page in doc_pages() if runnable(page)]


@pytest.mark.slow
# The page's own bound (and the stack's start) inside; pytest's default 180 s ran out at load 28.
@pytest.mark.timeout(PAGE_TIMEOUT_SECONDS + 120)
@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda p: p.name)
def test_the_commands_of_a_page_run_as_written(
    page: Path, docs_stack: Path, record_property: pytest.RecordProperty
) -> None:
    blocks = runnable(page)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    env["MAILSYNC_CLI_STACK_FILE"] = str(docs_stack)
    env.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            ["bash", "-c", page_script(blocks)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT_SECONDS,
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as timed_out:
        stdout = (timed_out.stdout or b"").decode() if isinstance(timed_out.stdout, bytes) else ""
        stderr = (timed_out.stderr or b"").decode() if isinstance(timed_out.stderr, bytes) else ""
        code = -1
    reached = [line.removeprefix(MARKER) for line in stderr.splitlines() if line.startswith(MARKER)]
    executed = len([r for r in reached if r != "end"]) - (0 if reached[-1:] == ["end"] else 1)
    record_property("executed_blocks", executed)
    print(f"\n{page.name}: {executed} of {len(blocks)} shell blocks executed")
    assert code == 0 and reached[-1:] == ["end"], (
        f"the block at {reached[-1] if reached else page.name} failed (exit {code}):\n"
        f"--- stdout ---\n{stdout[-6000:]}\n--- stderr ---\n{stderr[-6000:]}"
    )
    assert executed == len(blocks)
