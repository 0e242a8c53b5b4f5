"""The whole-stack benchmarks' pure helpers: percentiles, tables, catcher stamps, load stats, target verdicts, the bare
prototype's roster reading."""

from __future__ import annotations

import random

import pytest

from bench._bare_prototype import _parse as parse_bare
from bench._stack_support import format_table, percentile
from bench.e2e_pipeline import cpu_budget, evaluate, roster
from bench.load import APPROVE, PREVIEW, Stats, make_roster


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_format_table_aligns_columns_and_shows_missing_values() -> None:
    table = format_table(
        ["name", "n", "rate"], [["a", 1000, 12.345], ["longer", 7, None], ["b", True, 1234.5], ["c", 0, 2.5]]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["name", "n", "rate"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["a", "1,000", "12.3"]
    assert lines[3].split() == ["longer", "7", "-"]
    assert lines[4].split() == ["b", "yes", "1,234"]
    assert lines[5].split() == ["c", "0", "2.50"]
    assert len({len(line) for line in lines[:2]}) == 1  # header as wide as the rule under it
    assert lines[2].index("1,000") + len("1,000") == lines[3].index("7") + 1  # right-aligned numbers


def test_stats_count_statuses_and_keep_failures() -> None:
    stats = Stats()
    for ms in range(1, 101):
        stats.record(PREVIEW, ms / 1000, 200)
    stats.record(APPROVE, 0.01, 200)
    stats.record(APPROVE, 0.02, 503, "database unavailable")
    stats.record(APPROVE, 0.03, 409, "already decided")
    stats.record(APPROVE, 0.04, None, "ConnectTimeout")
    summary = stats.summary()
    assert summary[PREVIEW]["requests"] == 100
    assert summary[PREVIEW]["p50_ms"] == 50.5
    assert summary[PREVIEW]["p99_ms"] == 99.0
    assert summary[APPROVE]["statuses"] == {"200": 1, "409": 1, "503": 1, "no answer": 1}
    assert (stats.server_errors, stats.unexpected) == (1, 2)
    assert [f.split(" -> ")[1][:3] for f in stats.failures] == ["503", "409", "no "]


def test_rosters_are_what_the_runs_expect() -> None:
    text, emails = roster(25, "t")
    assert len(text.splitlines()) == 25 and len(set(emails)) == 25
    assert text.splitlines()[10] == f"{emails[10]}, Welcome, 10, to Riverside"
    load = make_roster(random.Random(1), ["a@example.com", "b@example.com"], 20, "x")
    assert load.splitlines()[0].startswith("#") and len(load.splitlines()) == 21
    assert sum("@example.net" in line for line in load.splitlines()) == 2


def test_the_bare_prototype_reads_a_roster_by_the_products_rules() -> None:
    text = "# front desk list\n\nAna@Example.com, Hi, Ana, see you\nbob@example.com\n   \n"
    assert parse_bare(text) == [(3, "ana@example.com", "Hi, Ana, see you"), (4, "bob@example.com", None)]


def _result(final: float | None, rate: float | None, peak: float) -> dict[str, object]:
    rss = {name: {"start_mib": 80.0, "peak_mib": peak, "end_mib": 90.0} for name in ("connections", "notifier")}
    return {
        "runs": [
            {"rows": 10_000, "final_seconds": final, "rows_per_second": rate, "rss_mib": rss},
            {"rows": 100_000, "final_seconds": 60.0, "rows_per_second": 1666.7, "rss_mib": rss},
        ],
        "ceiling": {"before_emails_per_second": 2000.0, "after_emails_per_second": 1800.0},
        "naive": {"rows_per_second": 100.0},
    }


def test_evaluate_reports_each_target_against_the_best_ceiling() -> None:
    result = _result(final=6.0, rate=1666.7, peak=150.0)
    targets = evaluate(result)
    assert [t["met"] for t in targets] == [True, True, True, True, True]
    assert result["runs"][0]["share_of_ceiling"] == 0.833  # type: ignore[index]
    assert result["runs"][0]["times_naive"] == 16.7  # type: ignore[index]

    slow = evaluate(_result(final=14.0, rate=700.0, peak=320.0))
    assert [t["met"] for t in slow] == [False, False, False, False, False]
    assert slow[-1]["value"] == 320.0

    failed = evaluate(_result(final=None, rate=None, peak=100.0))
    assert [t["value"] for t in failed[:4]] == [None, None, None, None]
    assert not any(t["met"] for t in failed[:4])


def test_cpu_budget_says_what_the_ratio_targets_ask_of_the_cores() -> None:
    result = _result(final=6.0, rate=1500.0, peak=150.0)
    result["machine"] = {"cpus": 2}
    result["runs"][0]["cpu_seconds"] = {"notifier": 4.0, "smtp": 2.5, "postgres": 2.0, "bench": 0.5}  # type: ignore[index]
    result["ceiling"] = {"before_emails_per_second": 4000.0, "after_emails_per_second": 5000.0}
    result["naive"] = {"rows_per_second": 400.0}
    assert cpu_budget(result) == {
        "cores": 2,
        "target_rows_per_second": 3000,  # 60% of the better ceiling
        "budget_ms_per_row": 0.667,  # two cores' milliseconds per second over 3,000 rows a second
        "spent_ms_per_row": 0.85,  # the stack without the bench: 8.5 s of CPU over 10,000 rows
        "catcher_ms_per_row": 0.25,
        "naive_target_rows_per_second": 6000,
        "naive_target_above_ceiling": True,
    }
    assert cpu_budget(_result(final=None, rate=None, peak=1.0)) is None  # no CPU figures, no budget
