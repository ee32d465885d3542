"""Inputs that used to end a command with a traceback or block it forever: each is now a row
error or a clear exit 2 naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from click.testing import CliRunner

from narrate.cli import cli
from narrate.errors import EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from narrate.synth.voices import VoiceLibrary


def reference(path: Path) -> Path:
    """One second of a 220 Hz tone at 24 kHz: a voice's reference audio."""
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 220 * np.arange(24_000) / 24_000), 24_000)
    return path


def plan(*args: str) -> subprocess.CompletedProcess:
    """`narrate plan` in its own process: a read that blocks fails the test instead of hanging."""
    command = [sys.executable, "-m", "narrate.cli", "plan", *args, "--engine", "preview"]
    return subprocess.run(command, capture_output=True, timeout=60)


def test_a_nul_byte_in_a_text_uri_is_a_row_error_and_the_other_rows_plan(tmp_path: Path) -> None:
    rows = [{"book_id": "a", "text_uri": "ok.txt\u0000x"}, {"book_id": "b", "text": "Hello."}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--json", "--engine", "preview"])
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    summary = json.loads(result.stdout)
    assert summary["books"] == 1
    assert [(r["row"], r["reason"]) for r in summary["rejected_rows"]] == [(1, "invalid_value")]


def test_a_parquet_manifest_with_two_book_id_columns_is_refused_by_name(tmp_path: Path) -> None:
    table = pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["b"]), pa.array(["Hello."])], ["book_id", "book_id", "text"]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.parquet")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "more than one book_id column" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_as_manifest_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        manifest = tmp_path / "m.jsonl"
        os.mkfifo(manifest)
    else:
        manifest = Path("/dev/zero")
    done = plan(str(manifest))
    assert done.returncode == EXIT_USAGE, done.stderr.decode()[-2000:]
    assert b"not a regular file" in done.stderr and b"Traceback" not in done.stderr


def test_a_damaged_voice_folder_is_a_clear_error_naming_the_voice(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices")
    library.add("anna", reference(tmp_path / "ref.wav"), "Hello there.")
    (tmp_path / "voices" / "anna" / "voice.json").write_text('{"transcript": "Hel')
    with pytest.raises(UsageError, match="voice 'anna' .* unreadable") as error:
        library.get("anna")
    assert "--replace" in error.value.hint


def test_a_fifo_as_voice_audio_is_refused_not_waited_on(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices")
    library.add("anna", reference(tmp_path / "ref.wav"), "Hello there.")
    audio = tmp_path / "voices" / "anna" / "audio.wav"
    audio.unlink()
    os.mkfifo(audio)
    with pytest.raises(UsageError, match="not a regular file"):
        library.get("anna")
