"""The run report's totals (what `narrate run --report` writes and the progress bar shows)."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace

from narrate.records import RowError
from narrate.report import BookResult, EventLog, RunReport, logging_to


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


def test_a_run_whose_ready_books_all_became_failed_reports_no_audio_and_a_sane_rate() -> None:
    """The database down for a whole run: every ready book is turned failed at the end."""
    report = RunReport(synth_seconds=5.3)
    durations = [17.81, 65.79, 92.71, 52.83, 41.19, 85.96, 269.43, 0.1, 0.2]
    for i, seconds in enumerate(durations):
        report.add(BookResult(f"b{i}", "ready", duration_s=seconds))
    for i in range(len(durations)):
        report.add(replace(report.books[f"b{i}"], status="failed", error="database down"))

    totals = report.totals()
    assert (totals["audio_seconds"], totals["real_time_factor"], totals["ready"]) == (0, None, 0)


def test_figures_a_run_did_not_measure_are_null_not_zero_or_one() -> None:
    """A cache-only or failed run synthesized nothing: no rate, no padding to report."""
    report = RunReport(books_planned=7)
    report.add(BookResult("b0", "ready", duration_s=30.0))  # rendered from the cache
    totals = report.totals()
    assert totals["real_time_factor"] is None and totals["padding_efficiency"] is None
    assert totals["books"] == 7  # planned, though only one has a result


def test_rejected_rows_are_objects_in_the_report() -> None:
    report = RunReport()
    report.rejected_rows.append(RowError(3, "empty_text", "text is empty", book_id="b3"))

    assert report.to_json()["rejected_rows"] == [
        {"row": 3, "book_id": "b3", "reason": "empty_text", "message": "text is empty"}
    ]
    assert report.totals()["rows_rejected"] == 1


def test_log_records_become_json_events_off_a_terminal_and_warnings_only_on_one() -> None:
    machine, human = io.StringIO(), io.StringIO()
    for stream, tty in ((machine, False), (human, True)):
        with logging_to(EventLog(stream, tty=tty)):
            logging.getLogger("narrate.database").info("retry 1/5 in 0.50s")
            logging.getLogger("urllib3.connectionpool").warning("connection pool is full")
            logging.getLogger("google.api_core.retry").debug("Retrying due to 503")
            logging.getLogger("google.auth").debug("token refreshed")  # below INFO: not kept
    logging.getLogger("narrate.database").warning("after the block: not routed")

    events = [json.loads(line) for line in machine.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["logger"]) for e in events] == [
        ("log", "info", "narrate.database"),
        ("log", "warning", "urllib3.connectionpool"),
        ("log", "debug", "google.api_core.retry"),
    ]
    assert human.getvalue().count("\n") == 1 and "connection pool is full" in human.getvalue()
