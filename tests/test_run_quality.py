"""`narrate run` listens before it caches: a chunk whose audio does not say its text is taken
again with its next seed, then kept at its best and its book marked (or failed with --quality
strict); --quality off checks nothing.

The engine is the preview engine (eSpeak NG) behind the Engine protocol, except that it speaks
the wrong words for one chunk (tests/support/wrong_words.py), installed in the spawned workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.runs import preview_args

import narrate.gate
import narrate.quality
import narrate.synth
from narrate.cli import cli
from narrate.config import EngineConfig
from narrate.errors import EXIT_INTERRUPTED
from narrate.gate import Checked, QualityGate, Retry
from narrate.records import Batch, Chunk

BOOKS = {
    "marked": "Rain fell softly on the harbour.",
    "clean": "The river ran past the old mill at dawn.",
}


@pytest.fixture
def wrong_words_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python process the run spawns (its workers) loads WrongWordsEngine: the spawn hook
    folder's sitecustomize installs it at start-up (spawned workers inherit no patches)."""
    tests = Path(__file__).parent
    path = [str(tests / "support" / "spawn_hook"), str(tests)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def run_books(tmp_path: Path, *extra: str, exit_code: int = 0) -> tuple[dict, list[dict]]:
    """`narrate run` of BOOKS: the report's books by id, and the log's events."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in BOOKS.items())
    )
    report = tmp_path / "report.json"
    args = ["run", str(manifest), *preview_args(tmp_path, f"--report={report}", *extra)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    books = {b["book_id"]: b for b in json.loads(report.read_text())["books"]}
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return books, events


def object_metadata(tmp_path: Path, book_id: str) -> dict[str, str]:
    sidecar = tmp_path / "out" / ".narrate-meta" / f"{book_id}.wav.json"
    return json.loads(sidecar.read_text())["metadata"]


@pytest.mark.slow
def test_a_chunk_that_fails_the_check_is_retried_then_kept_and_its_book_marked(
    tmp_path: Path, wrong_words_engine: None
) -> None:
    books, events = run_books(tmp_path, "--quality-retries=1", "--quality-workers=1")
    started = next(e for e in events if e["event"] == "run_started")
    assert (started["quality"], started["quality_workers"]) == ("on", 1)
    marked, clean = books["marked"], books["clean"]
    assert marked["status"] == "ready" and clean["status"] == "ready"
    assert marked["chunks_retried"] == 1 and marked["retries"] == 1  # a second take, new seed
    assert marked["quality_score"] < 1.0 and marked["chunk_scores"][0] < 1.0
    assert clean["quality_score"] == 1.0 and clean["chunk_scores"] == [1.0]
    assert clean["chunks_retried"] == 0
    metadata = object_metadata(tmp_path, "marked")
    assert float(metadata["qualityScore"]) < 1.0 and metadata["qualityRetries"] == "1"
    # what the check heard wrong in the kept take, by chunk, in the report and the metadata
    (faults,) = marked["quality_faults"]
    assert faults.startswith("chunk 0: ") and metadata["qualityFaults"] == faults
    assert clean["quality_faults"] is None
    assert "qualityFaults" not in object_metadata(tmp_path, "clean")
    assert object_metadata(tmp_path, "clean")["qualityScore"] == "1.0000"
    ready = {e["book_id"]: e for e in events if e["event"] == "book_ready"}
    assert ready["marked"]["quality_score"] < 1.0 and ready["marked"]["chunks_retried"] == 1
    retried = [e for e in events if e["event"] == "chunk_retried"]
    assert [e["attempt"] for e in retried] == [1]
    totals = next(e for e in events if e["event"] == "run_finished")
    assert totals["below_quality_threshold"] == 1

    status_args = ["status", str(tmp_path / "m.jsonl"), "--json", "--engine=preview"]
    status_args += ["--no-watermark", f"--out={tmp_path / 'out'}", f"--cache={tmp_path / 'cache'}"]
    status = CliRunner().invoke(cli, status_args, catch_exceptions=False)
    assert status.exit_code == 0, status.output
    counts = json.loads(status.stdout)
    assert (counts["done"], counts["below_quality"]) == (2, 1)

    # rendered again from the cache, nothing synthesized: the scores stored with the chunks
    (tmp_path / "report.json").unlink()
    again, _ = run_books(tmp_path, "--force")
    assert again["marked"]["quality_score"] == marked["quality_score"]
    assert again["marked"]["chunk_scores"] == marked["chunk_scores"]
    # and the takes it needed: the retry is not forgotten because nothing was synthesized
    assert again["marked"]["chunks_retried"] == 1 and again["clean"]["chunks_retried"] == 0
    assert object_metadata(tmp_path, "marked")["qualityRetries"] == "1"


@pytest.mark.slow
def test_quality_strict_fails_the_book_whose_chunk_never_passes(
    tmp_path: Path, wrong_words_engine: None
) -> None:
    books, _ = run_books(tmp_path, "--quality=strict", "--quality-retries=1", exit_code=1)
    assert books["clean"]["status"] == "ready"
    assert books["marked"]["status"] == "failed"
    assert "failed the quality check in 2 takes" in books["marked"]["error"]
    assert not (tmp_path / "out" / "marked.wav").exists()


@pytest.mark.slow
def test_quality_off_checks_nothing_and_publishes_the_audio_as_synthesized(
    tmp_path: Path, wrong_words_engine: None
) -> None:
    books, events = run_books(tmp_path, "--quality=off")
    for book in books.values():
        assert book["status"] == "ready" and book["quality_score"] is None
        assert book["chunk_scores"] is None and book["chunks_retried"] == 0
    assert not [e for e in events if e["event"] == "chunk_retried"]
    assert "qualityScore" not in object_metadata(tmp_path, "marked")


@pytest.mark.slow
def test_the_gate_checks_in_other_processes_and_caches_only_what_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_check_here(*args: object) -> None:
        raise AssertionError("checks must not run in the run's process")

    monkeypatch.setattr(narrate.quality, "check", no_check_here)  # spawned checkers are unpatched
    monkeypatch.setattr(narrate.gate, "check", no_check_here)
    engine = narrate.synth.load_engine(EngineConfig(engine="preview"))
    good = Chunk("aa" + "0" * 22, "b", 0, "The river ran past the old mill at dawn.")
    wrong = Chunk("bb" + "0" * 22, "b", 1, "Rain fell softly on the harbour.")
    good_take, _ = engine.synthesize(Batch((good, good)))
    (wrong_take,) = engine.synthesize(Batch((Chunk(wrong.chunk_id, "b", 1, "Bananas."),)))
    cache = tmp_path / "cache"
    gate = QualityGate(str(cache), takes=2, strict=False, workers=1)
    try:
        gate.submit(good, good_take)
        gate.submit(wrong, wrong_take)
        decided: list[Retry | Checked] = []
        while len(decided) < 2:
            decided += gate.ready()
        assert not (cache / "bb").exists()  # a failing first take is not cached
        (retry,) = [d for d in decided if isinstance(d, Retry)]
        assert retry.chunk == wrong and retry.first_attempt == 1
        assert gate.first_attempts(Batch((wrong, good))) == {wrong.chunk_id: 1}
        (second,) = engine.synthesize(
            Batch((Chunk(wrong.chunk_id, "b", 1, "Bananas."),)), attempts={wrong.chunk_id: 1}
        )
        gate.submit(wrong, second)
        while not (last := gate.ready()):
            pass
        (kept,) = last
        assert isinstance(kept, Checked) and kept.outcome.takes == 2
        assert kept.outcome.error is None and kept.outcome.score is not None
        assert kept.outcome.score < 1.0 and len(gate) == 0
        assert (cache / "aa").exists() and (cache / "bb").exists()  # the best take is kept
    finally:
        gate.close()


def run_env(*hooks: str) -> dict[str, str]:
    """The environment of a `narrate run` process whose spawned processes load `hooks`
    (folders under tests/support holding a sitecustomize)."""
    tests = Path(__file__).parent
    path = [str(tests / "support" / hook) for hook in hooks] + [str(tests)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return os.environ | {"PYTHONPATH": os.pathsep.join(path)}


def logged(log: Path) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if "event" in line]  # not the totals on stdout


@pytest.mark.slow
def test_sigterm_keeps_the_takes_waiting_for_their_check_for_the_next_run(
    tmp_path: Path,
) -> None:
    books = 40  # one chunk each
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"book_id": f"b{i:02d}", "text": f"Book {i} begins by the old mill."}) + "\n"
            for i in range(books)
        )
    )
    args = [sys.executable, "-m", "narrate.cli", "run", str(manifest)]
    args += preview_args(tmp_path, "--batch-size=4", "--quality-workers=1")
    log = tmp_path / "run.log"
    # checks slower than the engine (as on a busy host): its takes queue up for the check
    with log.open("w") as output:
        process = subprocess.Popen(
            args, stdout=output, stderr=output, env=run_env("slow_checks_hook")
        )
    try:
        deadline = time.monotonic() + 240
        while sum(e["chunks"] for e in logged(log) if e["event"] == "batch_done") < books // 2:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == EXIT_INTERRUPTED
        assert time.monotonic() - sent < 15  # the checks' grace is the books' grace
    finally:
        if process.poll() is None:
            process.kill()
    events = logged(log)
    planned = sum(e["chunks_to_synthesize"] for e in events if e["event"] == "window_planned")
    finished = sum(e["chunks"] for e in events if e["event"] == "batch_done")
    assert planned == books
    (kept,) = [e["takes"] for e in events if e["event"] == "takes_kept_unchecked"]
    assert kept > 0  # the stop came while takes were waiting for their check

    rerun = subprocess.run(args, capture_output=True, text=True, env=run_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    totals = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert totals["ready"] + totals["skipped"] == books, totals  # skipped: published before
    # every take the engine finished before the stop was kept: the rerun synthesizes at most
    # the chunks that were in flight in the engine, or not started
    assert totals["chunks_synthesized"] <= planned - finished, (totals, finished)
    assert totals["cache_hits"] >= kept  # the kept takes, checked now
