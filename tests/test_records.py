"""The site's records never regress: a book whose audio is live keeps `ready` and a URL that
plays through every way a re-render can end (a start-up error, SIGTERM, SIGKILL and a rerun, a
failing engine). Runs are real `narrate run` processes (preview engine) against the RTDB test
server; engine faults come from tests/support/engine_faults/sitecustomize.py in the processes
a run spawns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
from click.testing import CliRunner
from support.runs import preview_args

from narrate.cli import cli
from narrate.database import LEASE_EXPIRES, RENDER, STATUS, URL
from narrate.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_SOME_FAILED, EXIT_USAGE

TESTS = Path(__file__).parent
SENTENCES = [
    "The river ran past the old mill at dawn.",
    "Mr. Hale wrote to his sister every evening.",
    "Nobody in the village had seen the captain since spring.",
    "She opened the letter, read it twice, and laughed.",
]


def write_catalog(workdir: Path, books: int, sentences: int = 3) -> Path:
    manifest = workdir / "m.jsonl"
    rows = (
        {
            "book_id": f"bk{i:02d}",
            "text": " ".join(SENTENCES[(i + k) % 4] for k in range(sentences)),
        }
        for i in range(books)
    )
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def command(workdir: Path, rtdb, *extra: str, cache: str = "cache") -> list[str]:
    args = preview_args(workdir, "--batch-size=2", f"--database={rtdb.url}", *extra)
    args[args.index(f"--cache={workdir / 'cache'}")] = f"--cache={workdir / cache}"
    return [sys.executable, "-m", "narrate.cli", "run", str(workdir / "m.jsonl"), *args]


def engine_fault(fault: str | None) -> dict[str, str]:
    """The environment of a run whose engines fail as `fault` says (None: they work)."""
    if fault is None:
        return dict(os.environ)
    path = [str(TESTS / "support" / "engine_faults"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(path), "NARRATE_TEST_ENGINE_FAULT": fault}


@pytest.fixture
def published(tmp_path: Path, rtdb) -> Iterator[dict[str, dict]]:
    """A catalog of 6 books, all published by a first run: their records."""
    write_catalog(tmp_path, 6)
    done = subprocess.run(command(tmp_path, rtdb), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    records = rtdb.rest("GET", "books")
    assert {r[STATUS] for r in records.values()} == {"ready"}
    yield records


def assert_every_book_plays(rtdb, books: int = 6) -> dict[str, dict]:
    """Every book is `ready`, with a URL whose file decodes to audio."""
    records = rtdb.rest("GET", "books")
    assert len(records) == books
    for book_id, record in records.items():
        assert record[STATUS] == "ready", (book_id, record)
        audio, rate = soundfile.read(record[URL].removeprefix("file://"))
        assert rate > 0 and len(audio) > rate, book_id
    return records


def events(workdir: Path) -> list[dict]:
    lines = (workdir / "run.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def start(workdir: Path, args: list[str]) -> subprocess.Popen:
    log = (workdir / "run.log").open("w")  # a file: an unread pipe would block the run
    return subprocess.Popen(args, stdout=log, stderr=log)


def wait_for_synthesis(workdir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not any(e.get("event") == "batch_done" for e in events(workdir)):
        assert process.poll() is None and time.monotonic() < deadline, "no batch finished"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_re_render_stopped_by_a_model_that_cannot_load_leaves_the_site_as_it_was(
    tmp_path: Path, rtdb, published: dict
) -> None:
    args = command(tmp_path, rtdb, "--force", cache="fresh-cache")
    done = subprocess.run(args, capture_output=True, env=engine_fault("load"), timeout=300)
    assert done.returncode == EXIT_INFRA, done.stderr.decode()[-2000:]
    assert "cannot load" in done.stderr.decode()
    assert assert_every_book_plays(rtdb) == published  # not one field moved


@pytest.mark.slow
def test_a_re_render_stopped_by_sigterm_keeps_every_book_ready_and_playing(
    tmp_path: Path, rtdb, published: dict
) -> None:
    process = start(tmp_path, command(tmp_path, rtdb, "--force", cache="fresh-cache"))
    wait_for_synthesis(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    records = assert_every_book_plays(rtdb)
    left = {k: r for k, r in records.items() if RENDER in r or LEASE_EXPIRES in r}
    assert not left, (left, (tmp_path / "run.log").read_text()[-3000:])
    released = [e for e in events(tmp_path) if e.get("event", "").startswith("book_re")]
    assert released and {(e["event"], e["status"]) for e in released} == {
        ("book_released", "ready")
    }


@pytest.mark.slow
def test_a_re_render_killed_then_rerun_keeps_every_book_ready_and_playing(
    tmp_path: Path, rtdb, published: dict
) -> None:
    process = start(tmp_path, command(tmp_path, rtdb, "--force", cache="fresh-cache"))
    wait_for_synthesis(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_every_book_plays(rtdb)  # the killed run's leases sit in the render fields only

    rerun = command(tmp_path, rtdb, "--force", cache="fresh-cache")
    done = subprocess.run(rerun, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    records = assert_every_book_plays(rtdb)
    assert not any(RENDER in r for r in records.values())


@pytest.mark.slow
def test_a_failing_re_render_keeps_the_published_audio_and_says_why_beside_it(
    tmp_path: Path, rtdb, published: dict
) -> None:
    args = command(tmp_path, rtdb, "--force", cache="fresh-cache")
    done = subprocess.run(args, capture_output=True, env=engine_fault("synthesize"), timeout=300)
    assert done.returncode == EXIT_SOME_FAILED, done.stderr.decode()[-2000:]
    records = assert_every_book_plays(rtdb)
    for book_id, record in records.items():
        assert record[URL] == published[book_id][URL]
        assert record[RENDER]["status"] == "failed"
        assert "model diverged" in record[RENDER]["error"]


@pytest.mark.parametrize(
    ("option", "template", "says"),
    [
        ("--object-name", "same.{ext}", "has no {book_id}"),
        ("--path-template", "books/fixed", "has no {book_id}"),
        ("--object-name", "{book_id.__class__}.{ext}", "{book_id.__class__} is not one of"),
        ("--object-name", "{book_id[0]}/{book_id}.{ext}", "{book_id[0]} is not one of"),
        ("--path-template", "books/{book_id}/{ext}", "{ext} is not one of"),
        ("--object-name", "../{book_id}.{ext}", "invalid object name"),
        ("--path-template", "bo.oks/{book_id}", "is not a database path"),
    ],
)
def test_name_templates_that_could_collide_or_read_internals_are_refused_before_any_work(
    tmp_path: Path, option: str, template: str, says: str
) -> None:
    write_catalog(tmp_path, 3)
    args = [str(tmp_path / "m.jsonl"), *preview_args(tmp_path), f"{option}={template}"]
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == EXIT_USAGE, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.wav"))


def test_a_book_id_that_cannot_be_an_object_name_is_rejected_at_plan_with_its_row(
    tmp_path: Path,
) -> None:
    rows = [{"book_id": "ok", "text": SENTENCES[0]}, {"book_id": "a\\b", "text": SENTENCES[1]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.jsonl"), "--json"])
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    summary = json.loads(result.stdout)
    assert [(r["row"], r["reason"]) for r in summary["rejected_rows"]] == [(2, "invalid_id")]
    assert summary["books"] == 1
