"""One log stream: off a terminal, every line `narrate run` writes on stderr is a JSON object,
the records of stdlib logging (narrate's and its libraries') included, with their levels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.gcs import FakeGcs, FaultyProxy
from support.runs import preview_args

BOOKS = {
    "first": "The river ran past the old mill at dawn.",
    "second": "Rain fell softly on the harbour. Nobody had seen the captain since spring.",
    "third": "At noon the bells rang out across the valley.",
}


@pytest.mark.slow
def test_a_run_with_an_unknown_column_and_storage_retries_logs_only_json_lines(
    tmp_path: Path, gcs_bucket: str, fake_gcs: FakeGcs
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"book_id": b, "text": t, "shelf": "fiction"} for b, t in BOOKS.items()]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    args = preview_args(tmp_path, f"--out=gs://{gcs_bucket}")
    stderr = tmp_path / "stderr.log"
    with FaultyProxy(fake_gcs.url, fail_rate=0.3, seed=3) as proxy, stderr.open("w") as log:
        env = os.environ | {"STORAGE_EMULATOR_HOST": proxy.url, "GOOGLE_CLOUD_PROJECT": "test"}
        run = subprocess.run(
            [sys.executable, "-m", "narrate.cli", "run", str(manifest), *args],
            cwd=tmp_path,  # the status file without --database goes under ./.narrate
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            timeout=300,
        )
    assert any(e.fate == "503" for e in proxy.exchanges)  # the storage did fail some requests

    lines = stderr.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # a bare text line fails here

    assert run.returncode == 0, lines[-5:]
    logged = [e for e in events if e["event"] == "log"]
    unknown = [e for e in logged if e["logger"] == "narrate.manifest"]
    assert unknown and unknown[0]["level"] == "warning" and "shelf" in unknown[0]["message"]
    retries = [e for e in logged if e["logger"].startswith("google.api_core.retry")]
    assert retries and all("Retrying" in e["message"] for e in retries)
    assert events[-1]["event"] == "run_finished" and events[-1]["ready"] == len(BOOKS)


def test_transformers_warnings_in_an_engine_process_become_json_events(
    tiny_model_dir: Path,
) -> None:
    # a run's worker routes logging, then loads the engine (which imports transformers): a
    # warning transformers logs there must not reach stderr as a bare text line
    code = f"""
from narrate.config import EngineConfig
from narrate.report import EventLog, route_logging
from narrate.synth import load_engine
route_logging(EventLog(tty=False))
load_engine(EngineConfig(model={str(tiny_model_dir)!r}), device="cpu")
from transformers.utils import logging
logging.get_logger("transformers.generation").warning("a generation warning")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines()]  # bare text fails here
    warning = [e for e in events if e.get("message") == "a generation warning"]
    assert warning and warning[0]["level"] == "warning"
    assert warning[0]["logger"] == "transformers.generation"
