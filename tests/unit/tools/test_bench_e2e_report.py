"""Unit: the end-to-end benchmark's arithmetic and reporting (percentiles, the generated docs section, the
arguments make bench runs it with)."""

from __future__ import annotations

from pathlib import Path

from tools import bench, bench_e2e


def test_make_bench_runs_it_with_declared_arguments_it_accepts() -> None:
    declared = bench.declared_arguments(Path(bench_e2e.__file__))
    args = bench_e2e.parse_args(list(declared))
    assert args.mailboxes == [1, 10, 100] and args.databases == ["sqlite"]


def test_percentiles_are_in_milliseconds_by_rank() -> None:
    figures = bench_e2e.percentiles([i / 1000 for i in range(1, 101)])
    assert figures == {"p50_ms": 51.0, "p95_ms": 96.0, "p99_ms": 100.0, "max_ms": 100.0}
    assert bench_e2e.percentiles([]) == {}


def _result() -> dict:
    burst = {
        "messages_per_second": 20.0,
        "latency_delivery_to_stored": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0},
        "cpu_ms_per_message": {"ingest": 1.0, "threading": 2.0, "product": 3.5},
        "quota_units_per_message": 5.0,
        "http_requests_per_message": 0.04,
        "memory": {"ingest": {"peak_rss_mb": 90.0}},
    }
    floor = {
        "serial_messages_per_second": 400,
        "gmail_batched_get": {"messages_per_second_batch_25": 900, "sandbox_cpu_ms_per_message": 0.5},
        "jetstream": {"messages_per_second": 3000},
        "database": {"messages_per_second_batch_100": 20000, "messages_per_second_one_per_transaction": 1500},
    }
    return {"bursts": {"1": burst}, "steady": {}, "floor": floor}


def test_the_generated_section_is_replaced_not_appended(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        f"# Benchmarks\n\nintro\n\n{bench_e2e.DOCS_BEGIN}\nold table\n{bench_e2e.DOCS_END}\n\nafter\n"
    )
    results = {"started": "2026-12-03T00:00:00Z", "commit": "abcdef123456", "arguments": [], "databases": {}}
    results["databases"]["sqlite"] = _result()
    table = bench_e2e.markdown(results)
    assert "| burst: ratio to the serial floor | 5.0% |" in table
    bench_e2e.write_docs(table, results, docs)
    bench_e2e.write_docs(table, results, docs)
    text = docs.read_text()
    assert "old table" not in text and text.count(bench_e2e.DOCS_END) == 1
    assert text.startswith("# Benchmarks\n\nintro") and text.rstrip().endswith("after")
    assert "| burst CPU ms/message: threading | 2.0 |" in text
