"""The `make bench` convention as the harness reads it: the JSON object a benchmark prints last, and the
arguments a module declares in BENCH_ARGS (read without importing the module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench import declared_arguments, discover, last_json_object


def test_last_json_object_is_the_final_line_when_it_is_one() -> None:
    output = 'warming up\nrealistic_mix {"n": 1}\n{"realistic_mix": {"n": 1}, "bombs": {"n": 2}}\n'
    assert last_json_object(output) == {"realistic_mix": {"n": 1}, "bombs": {"n": 2}}


def test_last_json_object_reads_an_indented_document_at_the_end() -> None:
    output = 'table line\n{\n  "backend": "sqlite",\n  "apply": {\n    "rate": 950.5\n  }\n}\n'
    assert last_json_object(output) == {"backend": "sqlite", "apply": {"rate": 950.5}}


def test_last_json_object_is_none_without_a_trailing_object() -> None:
    assert last_json_object('{"early": 1}\nthen a table line\n') is None
    assert last_json_object("[1, 2]\n") is None
    assert last_json_object("") is None


def test_declared_arguments_come_from_bench_args_without_importing(tmp_path: Path) -> None:
    module = tmp_path / "bench_demo.py"
    module.write_text('raise SystemExit("importing runs this")\nBENCH_ARGS = ["--messages", "200"]\n')
    assert declared_arguments(module) == ("--messages", "200")
    (tmp_path / "bench_plain.py").write_text("def main() -> None: ...\n")
    assert declared_arguments(tmp_path / "bench_plain.py") == ()


def test_declared_arguments_must_be_strings(tmp_path: Path) -> None:
    module = tmp_path / "bench_bad.py"
    module.write_text("BENCH_ARGS = ['--messages', 200]\n")
    with pytest.raises(ValueError, match="list of strings"):
        declared_arguments(module)


def test_discover_names_each_bench_script_by_its_suffix(tmp_path: Path) -> None:
    for name in ("bench_b.py", "bench_a.py", "helper.py", "bench.py"):
        (tmp_path / name).write_text("BENCH_ARGS = ['--quick']\n")
    found = discover(tmp_path)
    assert [(b.name, b.module, b.arguments) for b in found] == [
        ("a", "tools.bench_a", ("--quick",)),
        ("b", "tools.bench_b", ("--quick",)),
    ]
