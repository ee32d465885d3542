"""`narrate say`, `narrate voice add` and `narrate dev tiny-model` through click's CliRunner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from narrate.cli import cli
from narrate.errors import EXIT_INFRA, EXIT_USAGE


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def printed_duration(output: str) -> float:
    return float(re.search(r": ([0-9.]+) s of audio", output).group(1))


def test_say_with_the_preview_engine_writes_24k_mono_and_reports_speed(tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader", reason="eSpeak NG (espeakng-loader) is not installed")
    out = tmp_path / "hello.wav"
    result = invoke("say", "Hello there. This is a preview.", "--engine", "preview", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "real-time factor" in result.output
    info = sf.info(out)
    assert info.samplerate == 24_000 and info.channels == 1
    assert abs(info.duration - printed_duration(result.output)) < 0.01
    assert info.duration > 1.0


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_say_with_the_tiny_csm_a_voice_and_context(tmp_path: Path, tiny_model_dir: Path) -> None:
    reference = tmp_path / "ref.wav"
    t = np.arange(36_000) / 24_000
    sf.write(reference, 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(8 * t)), 24_000)
    voices = tmp_path / "voices"
    added = invoke(
        "voice", "add", "calm", "--audio", str(reference), "--text", "A calm voice speaks.",
        "--voices", str(voices),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "voice calm: 1.5 s" in added.output

    out = tmp_path / "say.wav"
    result = invoke(
        "say", "Rain fell. The bells rang.", "--model", str(tiny_model_dir), "--device", "cpu",
        "--voice", "calm", "--voices", str(voices), "--context", "1:Where were you?",
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out)
    assert rate == 24_000 and audio.ndim == 1 and np.abs(audio).max() > 0.01
    assert abs(len(audio) / rate - printed_duration(result.output)) < 0.01


def test_say_with_an_unknown_voice_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["say", "Hi.", "--voice", "ghost", "--voices", str(tmp_path), "-o", "x.wav"]
    )
    assert result.exit_code == EXIT_USAGE
    assert "'ghost'" in result.output and "narrate voice add ghost" in result.output


def test_say_with_a_missing_model_explains_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["say", "Hi.", "--model", str(tmp_path / "missing"), "--device", "cpu"]
    )
    assert result.exit_code == EXIT_INFRA
    assert "no such directory, and not a Hugging Face id" in result.output
    assert "sesame/csm-1b" in result.output  # what to pass instead


def say_in_a_new_process(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """`narrate say` with the csm engine and a model id this machine never downloaded, in a
    process of its own (the Hub's settings are read from the environment at import), with an
    empty Hugging Face cache; returns the result and how long it took."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environment |= {"HF_HOME": str(tmp_path / "hf"), **env}
    command = [sys.executable, "-m", "narrate.cli", "say", "Hi.", "--model", "nobody/never-seen"]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--device", "cpu", "-o", str(tmp_path / "x.wav")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    return result, time.monotonic() - started


def test_say_with_the_hub_unreachable_says_so_within_15_s(tmp_path: Path) -> None:
    # a closed port on this machine: refused at once, like a network that is down
    result, seconds = say_in_a_new_process(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == EXIT_INFRA, result.stderr[-2000:]
    assert seconds < 15
    assert "the Hub (http://127.0.0.1:9) is unreachable" in result.stderr
    assert "not in the Hugging Face cache" in result.stderr
    assert "gated" not in result.stderr.split("hint:")[0]  # the cause is the network


def test_say_offline_with_a_model_not_cached_says_not_cached(tmp_path: Path) -> None:
    result, _ = say_in_a_new_process(tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == EXIT_INFRA, result.stderr[-2000:]
    assert "nobody/never-seen is not in the Hugging Face cache" in result.stderr
    assert "downloads are off (HF_HUB_OFFLINE=1)" in result.stderr
    assert "unreachable" not in result.stderr and "gated" not in result.stderr.split("hint:")[0]


def test_bad_context_turn_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["say", "Hi.", "--engine", "preview", "--context", "nope"])
    assert result.exit_code == EXIT_USAGE and "SPEAKER:TEXT" in result.output


@pytest.mark.slow
def test_dev_tiny_model_writes_a_loadable_model_folder(tmp_path: Path) -> None:
    result = invoke("dev", "tiny-model", str(tmp_path / "tiny"))
    assert result.exit_code == 0, result.output
    from transformers import AutoProcessor, CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(tmp_path / "tiny")
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    assert model.config.num_codebooks == 32 and model.config.hidden_size == 64
    assert processor.tokenizer("Hello there.")["input_ids"]
    assert (tmp_path / "tiny" / "mimi.safetensors").is_file()
