"""Every way a run ends leaves its trace: totals on stdout, the --report file with the error,
and a JSON log from `run_started` to `run_finished`; stop signals end it as SIGTERM does. Runs
are real `narrate run` processes (preview engine); engine faults come from
tests/support/engine_faults/sitecustomize.py in the processes a run spawns.
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

from narrate.cli import cli
from narrate.errors import EXIT_INFRA, EXIT_INTERRUPTED

TESTS = Path(__file__).parent
TEXT = "The river ran past the old mill at dawn. Mr. Hale wrote to his sister every evening."


def catalog(workdir: Path, books: int = 3) -> list[str]:
    manifest = workdir / "m.jsonl"
    rows = ({"book_id": f"b{i}", "text": f"{TEXT} {i}."} for i in range(books))
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = f"--report={workdir / 'report.json'}"
    return [sys.executable, "-m", "narrate.cli", "run", str(manifest), report]


def failing_engine(fault: str) -> dict[str, str]:
    path = [str(TESTS / "support" / "engine_faults"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(path), "NARRATE_TEST_ENGINE_FAULT": fault}


def assert_trace(done: subprocess.CompletedProcess, workdir: Path) -> tuple[dict, dict]:
    """The totals on stdout (the same as the report's), and the `error` event."""
    totals = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert json.loads((workdir / "report.json").read_text())["totals"] == totals
    events = [json.loads(line) for line in done.stderr.decode().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("error") == 1 and names.count("run_finished") == 1, names
    after = events[names.index("run_finished") + 1 :]  # only the review page, written after it
    assert all(
        e["event"] == "review_written" or e["message"].startswith("review page not written")
        for e in after
    ), after
    assert names.index("run_started") < names.index("error") < names.index("run_stopped")
    error = events[names.index("error")]
    assert totals["error"] == error["message"] and "hint:" not in error["message"]
    return totals, error


@pytest.mark.slow
def test_a_run_whose_output_cannot_be_written_still_reports_its_totals_and_why(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a folder")
    args = [*catalog(tmp_path), *preview_args(tmp_path)]
    args[args.index(f"--out={tmp_path / 'out'}")] = f"--out={tmp_path / 'file' / 'out'}"
    done = subprocess.run(args, capture_output=True, timeout=120)
    assert done.returncode == EXIT_INFRA, done.stderr.decode()[-2000:]
    totals, error = assert_trace(done, tmp_path)
    assert str(tmp_path / "file") in totals["error"]
    assert totals["real_time_factor"] is None and totals["padding_efficiency"] is None


@pytest.mark.slow
def test_a_model_that_cannot_load_reports_the_planned_books_and_its_hint_apart(
    tmp_path: Path,
) -> None:
    args = [*catalog(tmp_path, books=3), *preview_args(tmp_path)]
    done = subprocess.run(args, capture_output=True, env=failing_engine("load"), timeout=300)
    assert done.returncode == EXIT_INFRA, done.stderr.decode()[-2000:]
    totals, error = assert_trace(done, tmp_path)
    assert "cannot load" in totals["error"] and totals["books"] == 3
    assert error["hint"] == "use a larger GPU" == totals["hint"]
    assert totals["real_time_factor"] is None


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGQUIT])
def test_sighup_and_sigquit_stop_a_run_as_sigterm_does(tmp_path: Path, stop: int) -> None:
    log = (tmp_path / "run.log").open("w")
    process = subprocess.Popen(
        [*catalog(tmp_path, books=8), *preview_args(tmp_path, "--batch-size=2")],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 120
    while '"batch_done"' not in (tmp_path / "run.log").read_text():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(stop)
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert json.loads(lines[-1])["interrupted"] is True  # the totals, on stdout
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["interrupted"]


def test_a_new_user_learns_every_missing_piece_from_one_run(tmp_path: Path) -> None:
    """No model and no AudioSeal checkpoints: one run says both, before loading anything."""
    command = catalog(tmp_path)[4:]
    (tmp_path / "audioseal").mkdir()
    args = [
        *command,
        "--engine=csm",
        f"--model={tmp_path / 'no-model'}",
        f"--watermark-model={tmp_path / 'audioseal'}",
        f"--out={tmp_path / 'out'}",
        f"--cache={tmp_path / 'cache'}",
    ]
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == EXIT_INFRA, result.output
    assert time.monotonic() - started < 30
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    assert "things are missing" in totals["error"]
    assert "model: " in totals["error"] and "watermark: " in totals["error"]
    assert "no-model" in totals["error"] and "AudioSeal" in totals["error"]
    assert totals["hint"] and " | " in totals["hint"]


def small_files_only() -> None:
    """In the run's processes: files may not grow past 4 KB (writes beyond fail with EFBIG,
    as on a full disk), so the first chunk written to the cache fails."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_stops_the_run_saying_so(tmp_path: Path) -> None:
    args = [*catalog(tmp_path), *preview_args(tmp_path, "--quality=off")]
    done = subprocess.run(args, capture_output=True, timeout=300, preexec_fn=small_files_only)
    assert done.returncode == EXIT_INFRA, done.stderr.decode()[-2000:]
    totals, error = assert_trace(done, tmp_path)
    assert "cannot write the chunk cache" in error["message"]
    assert "File too large" in error["message"] and "memory" not in (error["hint"] or "")
    assert b"Traceback" not in done.stderr


@pytest.mark.slow
def test_sigterm_while_the_run_is_still_starting_exits_75_with_its_totals(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*catalog(tmp_path), *preview_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # narrate is importing, opening its outputs or loading: not yet running
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err.decode()[-2000:]
    assert json.loads(out.decode().strip().splitlines()[-1])["interrupted"] is True
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["interrupted"]
