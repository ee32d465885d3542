"""What a run shows a person at a terminal (narrate.console, through the run's EventLog)."""

from __future__ import annotations

import io
import json
import re

from narrate.console import summary
from narrate.report import EventLog


def terminal() -> tuple[EventLog, io.StringIO]:
    screen = io.StringIO()
    return EventLog(screen, tty=True), screen


def visible(screen: io.StringIO) -> str:
    """The text written, bar redraws split into lines."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen.getvalue()).replace("\r", "\n")


def test_bars_have_their_totals_from_the_first_window_and_say_what_is_loading() -> None:
    log, screen = terminal()
    log.event("window_planned", books=5, to_render=3, batches=2, chunks_to_synthesize=12)
    log.event("loading", what="sesame/csm-1b on cuda:0")
    log.close()
    shown = visible(screen)
    assert "loading sesame/csm-1b on cuda:0 ..." in shown
    assert re.search(r"books: +0%.*0/3", shown)
    assert re.search(r"chunks \(loading sesame/csm-1b on cuda:0\): +0%.*0/12", shown)
    assert "chunk/s" in shown and "/ chunk" not in shown  # one unit, no stray space


def test_each_finished_book_gets_one_line_and_errors_read_as_error_and_hint() -> None:
    log, screen = terminal()
    log.event(
        "book_ready", book_id="fox", duration_s=75.2, quality_score=0.83, url="gs://b/fox.mp3"
    )
    log.event("error", message="bucket b does not exist", hint="create it", exit_code=3)
    log.close()
    lines = visible(screen).splitlines()
    assert "ready   fox  1:15  score 0.83  -> gs://b/fox.mp3" in lines
    assert "error: bucket b does not exist" in lines and "hint: create it" in lines
    assert not any("exit_code=" in line or "message=" in line for line in lines)


def test_off_a_terminal_events_stay_json_lines_and_draw_no_bars() -> None:
    stream = io.StringIO()
    log = EventLog(stream, tty=False)
    log.event("window_planned", books=1, to_render=1, batches=1, chunks_to_synthesize=2)
    log.progress("chunks", 1)
    log.close()
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "window_planned"


def test_the_summary_reads_as_sentences_and_names_the_review_page(tmp_path) -> None:
    report = tmp_path / "r.json"
    (tmp_path / "r.html").write_text("<html></html>")
    totals = {"books": 3, "ready": 2, "failed": 1, "audio_seconds": 125.0, "wall_seconds": 61.0}
    text = summary(totals, out="out", report=str(report))
    assert text.startswith("3 books: 2 ready, 1 failed")
    assert "2:05 of audio in 1:01" in text
    assert f"review page: {tmp_path / 'r.html'}" in text


def test_the_summary_of_a_stopped_run_says_why_and_what_to_do() -> None:
    totals = {"books": 0, "error": "bucket b does not exist", "hint": "create it"}
    lines = summary(totals, out="gs://b", report=None).splitlines()
    assert lines[-2:] == ["stopped by: bucket b does not exist", "hint: create it"]
