"""How runs end early: SIGTERM and SIGKILL on the request queue, infrastructure that cannot be
used, and workers whose run is gone. Runs are real `narrate run` processes (preview engine)
against the RTDB test server and fake-gcs-server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.gcs import free_port
from support.runs import assert_gone_within, children, preview_args

from narrate.database import LEASE_EXPIRES, LEASE_RUN, STATUS
from narrate.errors import EXIT_INFRA, EXIT_INTERRUPTED

SENTENCES = [
    "The river ran past the old mill at dawn.",
    "Mr. Hale wrote to his sister every evening.",
    "Nobody in the village had seen the captain since spring.",
    "She opened the letter, read it twice, and laughed.",
]


def request_queue(n: int, sentences: int = 8) -> dict[str, dict]:
    """`n` requested books, as the site's "Generate narrative" button leaves them."""
    return {
        f"bk{i:03d}": {
            "narrative": " ".join(SENTENCES[(i + k) % 4] for k in range(sentences)) + f" {i}.",
            STATUS: "requested",
        }
        for i in range(n)
    }


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts `narrate run` processes; any still running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(workdir: Path, *args: str) -> subprocess.Popen:
        log = (workdir / "run.log").open("a")  # a file: an unread pipe would block the run
        command = [sys.executable, "-m", "narrate.cli", "run", *args]
        started.append(subprocess.Popen(command, stdout=log, stderr=log))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def queue_args(workdir: Path, rtdb, *extra: str) -> list[str]:
    database = f"--database={rtdb.url}"
    return ["--requests", *preview_args(workdir, "--batch-size=2", database, *extra)]


def start_on_queue(workdir: Path, rtdb, spawn, books: dict, *extra: str) -> subprocess.Popen:
    """Put `books` on the request queue and start a run on it in the background."""
    rtdb.rest("PUT", "books", books)
    return spawn(workdir, *queue_args(workdir, rtdb, *extra))


def run_queue_to_the_end(workdir: Path, rtdb) -> subprocess.CompletedProcess:
    """`narrate run --requests` in the foreground; it must succeed."""
    command = [sys.executable, "-m", "narrate.cli", "run", *queue_args(workdir, rtdb)]
    result = subprocess.run(command, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result


def statuses(rtdb) -> dict[str, str]:
    return {k: r.get(STATUS) for k, r in (rtdb.rest("GET", "books") or {}).items()}


def wait_until(condition, timeout: float = 120, what: str = "the run") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not get there in time"
        time.sleep(0.1)


def some_ready(rtdb) -> bool:
    return "ready" in statuses(rtdb).values()


def events(workdir: Path) -> list[dict]:
    lines = (workdir / "run.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def some_book_ready(workdir: Path) -> bool:
    """As the run logs it: its record reaches the database up to the status batch's max wait
    later."""
    return any(e["event"] == "book_ready" for e in events(workdir))


@pytest.mark.slow
def test_sigterm_puts_unfinished_requests_back_and_the_next_run_finishes_them(
    tmp_path: Path, rtdb, spawn
) -> None:
    # more books than the post-processing grace can finish after the first is ready
    process = start_on_queue(tmp_path, rtdb, spawn, request_queue(48))
    wait_until(lambda: some_book_ready(tmp_path))
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    assert time.monotonic() - sent < 15

    records = rtdb.rest("GET", "books")
    left = {k: r[STATUS] for k, r in records.items()}
    assert set(left.values()) == {"ready", "requested"}  # nothing stuck in processing
    assert not any(LEASE_RUN in r or LEASE_EXPIRES in r for r in records.values())

    rerun = run_queue_to_the_end(tmp_path, rtdb)
    assert set(statuses(rtdb).values()) == {"ready"}
    totals = json.loads(rerun.stdout.decode().strip().splitlines()[-1])
    # the rerun took exactly the requeued books
    assert totals["ready"] == sum(s == "requested" for s in left.values())


def synthesized_everything(workdir: Path) -> bool:
    found = events(workdir)
    planned = sum(e["chunks_to_synthesize"] for e in found if e["event"] == "window_planned")
    done = sum(e["chunks"] for e in found if e["event"] == "batch_done")
    return planned > 0 and done == planned


@pytest.mark.slow
def test_sigterm_during_a_long_books_post_processing_exits_within_15_s(
    tmp_path: Path, rtdb, spawn
) -> None:
    long_text = " ".join(SENTENCES[k % 4] for k in range(600))  # about 45 minutes of speech
    rtdb.rest("PUT", "books", {"long": {"narrative": long_text, STATUS: "requested"}})
    args = queue_args(tmp_path, rtdb, "--format=mp3")
    args[args.index("--batch-size=2")] = "--batch-size=32"
    process = spawn(tmp_path, *args)
    wait_until(lambda: synthesized_everything(tmp_path), timeout=600)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)  # the book is being assembled and encoded now
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    assert time.monotonic() - sent < 15
    # abandoned, not lost: back on the queue, and every chunk stays cached for the next night
    assert rtdb.rest("GET", "books/long") == {"narrative": long_text, STATUS: "requested"} | {
        "narrativeUpdatedAt": rtdb.rest("GET", "books/long/narrativeUpdatedAt")
    }
    assert any(e["event"] == "book_requeued" for e in events(tmp_path))


@pytest.mark.slow
def test_requests_left_processing_by_a_killed_run_are_taken_once_its_lease_expires(
    tmp_path: Path, rtdb, spawn
) -> None:
    process = start_on_queue(tmp_path, rtdb, spawn, request_queue(16), "--lease-seconds=3")
    wait_until(lambda: some_ready(rtdb) and "processing" in statuses(rtdb).values())
    process.send_signal(signal.SIGKILL)
    process.wait()
    stuck = [k for k, s in statuses(rtdb).items() if s == "processing"]
    assert stuck

    # while the lease runs, a new run leaves those records alone
    run_queue_to_the_end(tmp_path, rtdb)
    if time.time() * 1000 < min(rtdb.rest("GET", f"books/{k}/{LEASE_EXPIRES}") for k in stuck):
        assert [k for k, s in statuses(rtdb).items() if s == "processing"] == stuck
    time.sleep(3.5)
    run_queue_to_the_end(tmp_path, rtdb)
    assert set(statuses(rtdb).values()) == {"ready"}


@pytest.mark.slow
def test_workers_exit_when_their_run_is_killed_before_they_start(tmp_path: Path, spawn) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "b1", "text": SENTENCES[0]}) + "\n")
    process = spawn(tmp_path, str(manifest), *preview_args(tmp_path))
    # kill the run the moment its first child exists: the worker has not run a line of
    # narrate yet (the interpreter is still starting)
    deadline = time.monotonic() + 120
    while not (started := children(process.pid)):
        assert time.monotonic() < deadline and process.poll() is None, "no worker started"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_gone_within(started, 20)


@pytest.mark.slow
def test_a_database_down_for_the_whole_run_stops_it_with_exit_3_and_a_report(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = (json.dumps({"book_id": f"b{i}", "text": SENTENCES[i % 4]}) for i in range(4))
    manifest.write_text("\n".join(rows) + "\n")
    env = os.environ | {"FIREBASE_DATABASE_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}
    report = tmp_path / "report.json"
    args = preview_args(tmp_path, "--database=https://nowhere.firebaseio.com", f"--report={report}")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "narrate.cli", "run", str(manifest), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == EXIT_INFRA, result.stderr.decode()[-2000:]
    assert time.monotonic() - started < 60
    totals = json.loads(report.read_text())["totals"]
    assert "Failed to establish a connection" in totals["error"]
    assert totals["ready"] == 0  # nothing is reported ready that the site cannot see
    assert totals["real_time_factor"] is None  # nothing was synthesized: nothing measured
    # stderr stays one stream of JSON events: the error once, before the run's totals
    names = [json.loads(line)["event"] for line in result.stderr.decode().splitlines()]
    assert names.count("error") == 1 and names.index("error") < names.index("run_finished")


@pytest.mark.slow
def test_a_missing_bucket_stops_the_run_with_exit_3_instead_of_failing_every_book(
    tmp_path: Path, gcs_bucket: str, rtdb
) -> None:
    rtdb.rest("PUT", "books", request_queue(6, sentences=2))
    report = tmp_path / "report.json"
    args = queue_args(tmp_path, rtdb, f"--report={report}")
    args[args.index(f"--out={tmp_path / 'out'}")] = f"--out=gs://{gcs_bucket}-missing/audio"
    result = subprocess.run(
        [sys.executable, "-m", "narrate.cli", "run", *args],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == EXIT_INFRA, result.stderr.decode()[-2000:]
    assert "bucket does not exist" in result.stderr.decode()
    totals = json.loads(report.read_text())["totals"]
    assert totals["failed"] == 0
    # no book was marked failed for it: every one is still (or again) on the queue
    assert set(statuses(rtdb).values()) == {"requested"}
