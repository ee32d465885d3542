"""`narrate run` end to end: outputs, resume, edits, interruption, workers, shards.

Most tests use the preview engine (eSpeak NG: real speech, deterministic, fast on CPU); one
runs the tiny random CSM through the real loading path.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner
from support.runs import assert_gone_within, children, preview_args

from narrate.cli import cli
from narrate.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED

SENTENCES = [
    "The river ran past the old mill at dawn.",
    "Mr. Hale wrote to his sister every evening.",
    "Nobody in the village had seen the captain since spring.",
    "She opened the letter, read it twice, and laughed.",
    "Rain fell softly on the harbour.",
    "At noon the bells rang out across the valley.",
]


def narrative(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences))


def write_manifest(path: Path, books: dict[str, str]) -> Path:
    path.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in books.items()),
        encoding="utf-8",
    )
    return path


def catalog(n: int, sentences: int = 3) -> dict[str, str]:
    return {f"book-{i:03d}": narrative(i, sentences + i % 3) for i in range(n)}


def run_cli(
    tmp_path: Path,
    manifest: Path,
    *extra: str,
    report: str = "report.json",
    exit_code: int = EXIT_OK,
) -> dict:
    """`narrate run` on the preview engine, which must exit with `exit_code`; its report."""
    args = ["run", str(manifest), *preview_args(tmp_path, f"--report={tmp_path / report}", *extra)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return json.loads((tmp_path / report).read_text())


def outputs(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.wav"))}


@pytest.mark.slow
def test_run_renders_every_book_and_rerun_synthesizes_nothing(tmp_path: Path) -> None:
    books = catalog(6)
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    first = run_cli(tmp_path, manifest)
    assert first["totals"]["ready"] == 6 and first["totals"]["failed"] == 0
    assert first["totals"]["chunks_synthesized"] > 0
    for book_id in books:
        audio, rate = sf.read(tmp_path / "out" / f"{book_id}.wav")
        assert rate == 24_000 and len(audio) / rate > 1.0
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    record = status["books"]["book-000"]
    assert record["narrativeAudioStatus"] == "ready"
    assert record["narrativeAudioDuration"] > 1.0
    before = outputs(tmp_path / "out")

    second = run_cli(tmp_path, manifest, report="again.json")
    assert second["totals"]["chunks_synthesized"] == 0
    assert second["totals"]["skipped"] == 6
    assert outputs(tmp_path / "out") == before


@pytest.mark.slow
def test_a_damaged_cached_chunk_fails_its_book_and_the_next_run_synthesizes_it_again(
    tmp_path: Path,
) -> None:
    books = {"a": narrative(1, 2), "b": narrative(2, 2)}
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    run_cli(tmp_path, manifest)
    damaged = sorted((tmp_path / "cache").rglob("*.flac"))[0]
    damaged.write_bytes(b"fLaC" + bytes(200))  # a torn write, a disk error

    report = run_cli(tmp_path, manifest, "--force", report="r2.json", exit_code=EXIT_SOME_FAILED)
    failed = [b for b in report["books"] if b["status"] == "failed"]
    assert len(failed) == 1 and report["totals"]["ready"] == 1
    assert f"cached chunk {damaged.stem}" in failed[0]["error"]
    assert "removed from the cache" in failed[0]["error"]
    assert not damaged.exists()

    healed = run_cli(tmp_path, manifest, report="r3.json")
    assert healed["totals"]["chunks_synthesized"] == 1
    assert {b["book_id"]: b["status"] for b in healed["books"]} == {
        failed[0]["book_id"]: "ready",
        ({"a", "b"} - {failed[0]["book_id"]}).pop(): "skipped",
    }


@pytest.mark.slow
def test_editing_one_narrative_resynthesizes_only_its_changed_chunks(tmp_path: Path) -> None:
    books = {"a": narrative(1, 12), "b": narrative(2, 12)}
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    run_cli(tmp_path, manifest)
    before = outputs(tmp_path / "out")

    books["b"] = books["b"] + " A brand new closing sentence appears here."
    write_manifest(manifest, books)
    report = run_cli(tmp_path, manifest, report="edit.json")
    assert report["totals"]["chunks_synthesized"] == 1  # only the last chunk changed
    assert report["totals"]["cache_hits"] >= 1
    statuses = {b["book_id"]: b["status"] for b in report["books"]}
    assert statuses == {"a": "skipped", "b": "ready"}
    after = outputs(tmp_path / "out")
    assert after["a.wav"] == before["a.wav"] and after["b.wav"] != before["b.wav"]


@pytest.mark.slow
def test_two_workers_produce_the_same_outputs_as_one(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", catalog(8))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    run_cli(one, manifest, "--batch-size", "2")
    run_cli(two, manifest, "--batch-size", "2", "--devices", "cpu,cpu")
    assert outputs(one / "out") == outputs(two / "out")
    assert len(outputs(one / "out")) == 8


@pytest.mark.slow
def test_shards_publish_the_catalog_exactly_once(tmp_path: Path) -> None:
    books = catalog(9)
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    seen: list[str] = []
    for i in range(3):
        report = run_cli(tmp_path, manifest, "--shard", f"{i}/3", report=f"shard{i}.json")
        seen += [b["book_id"] for b in report["books"] if b["status"] == "ready"]
    assert sorted(seen) == sorted(books)
    assert len(outputs(tmp_path / "out")) == 9


def test_bad_rows_fail_alone_exit_one_and_are_logged_as_json(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"book_id": "ok", "text": "A short and valid story."})
        + "\n"
        + json.dumps({"book_id": "bad.id", "text": "Dots are not allowed in ids."})
        + "\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["run", str(manifest), *preview_args(tmp_path)])
    assert result.exit_code == 1
    assert (tmp_path / "out" / "ok.wav").exists()
    assert not list((tmp_path / "out").glob("bad*"))
    # not on a terminal: one JSON object per line on stderr, for log collectors
    events = [json.loads(line) for line in result.stderr.splitlines()]
    rejected = next(e for e in events if e["event"] == "row_rejected")
    assert (rejected["row"], rejected["reason"]) == (2, "invalid_id")
    assert "bad.id" in rejected["message"]
    assert any(e["event"] == "book_ready" and e["book_id"] == "ok" for e in events)
    assert events[-1]["event"] == "run_finished" and events[-1]["ready"] == 1


def spawn_run(tmp_path: Path, manifest: Path, *extra: str) -> subprocess.Popen:
    args = ["run", str(manifest), *preview_args(tmp_path, "--batch-size=2", *extra)]
    # the log goes to a file: an unread pipe would block the run once its buffer filled
    log = (tmp_path / "run.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "narrate.cli", *args], stdout=subprocess.DEVNULL, stderr=log
    )


def cached_chunks(cache: Path) -> int:
    return len(list(cache.rglob("*.flac")))


def wait_for_cached(cache: Path, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cached_chunks(cache) < at_least:
        assert time.monotonic() < deadline, "no chunk was cached in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    books = catalog(20, sentences=8)
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    reference = tmp_path / "reference"
    reference.mkdir()
    full = run_cli(reference, manifest, "--batch-size", "2")
    total_chunks = full["totals"]["chunks_synthesized"]

    killed = tmp_path / "killed"
    killed.mkdir()
    rng = random.Random(11)
    for _ in range(3):
        before = cached_chunks(killed / "cache")
        process = spawn_run(killed, manifest)
        wait_for_cached(killed / "cache", before + 1 + rng.randint(0, 3))
        workers = children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # orphaned workers notice and exit: nothing keeps running (or holding a GPU)
        assert_gone_within(workers, 30)
    cached = cached_chunks(killed / "cache")
    assert 0 < cached < total_chunks
    final = run_cli(killed, manifest, "--batch-size", "2", report="final.json")
    # what the killed runs finished is kept: the resume synthesizes exactly the rest
    assert final["totals"]["chunks_synthesized"] == total_chunks - cached
    assert outputs(killed / "out") == outputs(reference / "out")


@pytest.mark.slow
def test_sigterm_exits_interrupted_within_15_s_and_the_next_run_completes(tmp_path: Path) -> None:
    books = catalog(12, sentences=6)
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    process = spawn_run(tmp_path, manifest)
    wait_for_cached(tmp_path / "cache", 2)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    assert time.monotonic() - sent < 15
    assert code == EXIT_INTERRUPTED
    report = run_cli(tmp_path, manifest, "--batch-size", "2")
    assert report["totals"]["ready"] + report["totals"]["skipped"] == len(books)
    assert report["totals"]["cache_hits"] >= 2


@pytest.mark.slow
def test_run_with_the_tiny_csm_through_the_real_loading_path(
    tmp_path: Path, tiny_model_dir: Path, audioseal_dir: Path
) -> None:
    books = {"one": "The lamp was lit. Nobody came.", "two": "Rain fell. Gulls cried at noon."}
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    args = [
        "run",
        str(manifest),
        "--engine",
        "csm",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
        "--devices",
        "cpu",
        "--cpu-threads",
        "1",
        "--watermark-model",
        str(audioseal_dir),
        "--report",
        str(tmp_path / "report.json"),
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["ready"] == 2
    for book_id in books:
        info = sf.info(tmp_path / "out" / f"{book_id}.wav")
        assert info.samplerate == 24_000 and info.channels == 1 and info.duration > 0.5
    status = json.loads((tmp_path / "out" / "status.json").read_text())["books"]
    assert status["one"]["narrativeWatermarkPayload"] != status["two"]["narrativeWatermarkPayload"]

    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["skipped"] == 2


@pytest.mark.slow
def test_status_counts_done_cached_and_pending_books_without_a_model(tmp_path: Path) -> None:
    books = catalog(4)
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    status_args = ["status", str(manifest), "--json", "--engine=preview", "--no-watermark"]
    status_args += [f"--out={tmp_path / 'out'}", f"--cache={tmp_path / 'cache'}"]

    def status() -> dict:
        result = CliRunner().invoke(cli, status_args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    before = status()
    assert (before["pending"], before["done"], before["chunks_cached"]) == (4, 0, 0)
    run_cli(tmp_path, write_manifest(tmp_path / "first.jsonl", dict(list(books.items())[:2])))
    after = status()
    assert (after["done"], after["pending"]) == (2, 2)
    assert after["chunks_cached"] > 0 and after["chunks"] > after["chunks_cached"]
    text_args = [arg for arg in status_args if arg != "--json"]
    lines = CliRunner().invoke(cli, text_args, catch_exceptions=False).stdout.splitlines()
    assert "done           2" in lines and "partly cached  0" in lines
    assert f"chunks cached  {after['chunks_cached']:,}" in lines


@pytest.mark.slow
def test_a_chunk_failing_every_attempt_fails_only_its_book(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # one unsplittable word that needs more audio than the 2 s cap allows: every attempt runs
    # to the cap still speaking
    books = {"short": "Yes. No.", "long": "Pneumonoultramicroscopicsilicovolcanoconiosis."}
    manifest = write_manifest(tmp_path / "m.jsonl", books)
    args = [
        "run", str(manifest), "--engine=csm", f"--model={tiny_model_dir}", "--devices=cpu",
        "--cpu-threads=1", "--no-watermark", "--max-audio-length-ms=2000",
        f"--out={tmp_path / 'out'}", f"--cache={tmp_path / 'cache'}",
        f"--report={tmp_path / 'report.json'}",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    report = {b["book_id"]: b for b in json.loads((tmp_path / "report.json").read_text())["books"]}
    assert report["short"]["status"] == "ready"
    assert report["long"]["status"] == "failed" and "chunk 0" in report["long"]["error"]
    assert report["long"]["retries"] == 2
    record = json.loads((tmp_path / "out" / "status.json").read_text())["books"]["long"]
    assert record["narrativeAudioStatus"] == "failed" and record["narrativeAudioError"]
    assert not (tmp_path / "out" / "long.wav").exists()


def test_unloadable_watermark_stops_the_run_before_any_synthesis(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", catalog(2))
    args = ["run", str(manifest), *preview_args(tmp_path)]
    args.remove("--no-watermark")
    result = CliRunner().invoke(cli, [*args, f"--watermark-model={tmp_path / 'nowhere'}"])
    assert result.exit_code == 3
    assert "--no-watermark" in result.output  # the hint names the explicit opt-out
    assert cached_chunks(tmp_path / "cache") == 0


PAGE_FAULT_PROBE = """
import resource, sys, threading
import numpy as np
from narrate.cli import cli

try:
    cli.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass

def render_like():  # a dozen arrays of a 30-second book alive at once, as post-processing
    audio = np.ones(30 * 24_000, dtype=np.float32)
    held = [audio.astype(np.float64) * k for k in range(12)]
    return sum(float(a[0]) for a in held)

def measure():  # the first time may grow the heap: count the second
    render_like()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    render_like()
    print("faults", resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

thread = threading.Thread(target=measure)
thread.start()
thread.join()
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator and per-thread rusage")
def test_a_run_reuses_freed_memory_instead_of_faulting_in_fresh_pages_for_every_book(
    tmp_path: Path,
) -> None:
    # in a fresh process, as an operator starts one: the allocator's state is the run's own.
    # glibc raises its thresholds to the largest block freed so far, so the probe's book is
    # longer than the run's: its blocks would be mapped afresh every time
    manifest = write_manifest(tmp_path / "m.jsonl", catalog(1))
    args = ["run", str(manifest), *preview_args(tmp_path)]
    probe = subprocess.run(
        [sys.executable, "-c", PAGE_FAULT_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    faults = int(probe.stdout.rsplit("faults ", 1)[1])
    pages = 12 * 30 * 24_000 * 8 // 4096
    assert faults < pages // 6  # ~1,300 of 16,875 here; ~6,700 without reuse
