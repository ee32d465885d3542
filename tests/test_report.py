"""The run report's totals (what `narrate run --report` writes and the progress bar shows)."""

from __future__ import annotations

from dataclasses import replace

from narrate.report import BookResult, RunReport


def test_audio_and_real_time_factor_count_ready_books_only_and_follow_replacements() -> None:
    report = RunReport(synth_seconds=30.0)
    report.add(BookResult("a", "ready", duration_s=10.0))
    report.add(BookResult("b", "ready", duration_s=5.0))
    report.add(BookResult("c", "skipped", duration_s=7.0))
    report.add(BookResult("d", "failed", duration_s=3.0))
    assert report.totals()["audio_seconds"] == 15.0
    assert report.real_time_factor == 2.0

    # a book whose database update finally failed is reported failed, and its audio goes
    report.add(replace(report.books["b"], status="failed", error="database update failed"))
    totals = report.totals()
    assert (totals["audio_seconds"], totals["ready"], totals["failed"]) == (10.0, 1, 2)
    assert report.real_time_factor == 3.0

    report.add(BookResult("a", "ready", duration_s=12.0))  # rendered again: replaces, not adds
    assert report.totals()["audio_seconds"] == 12.0
