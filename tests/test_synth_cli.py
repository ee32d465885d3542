"""`narrate say`, `narrate voice add` and `narrate dev tiny-model` through click's CliRunner."""

from __future__ import annotations

import re
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
    assert "HF_TOKEN" in result.output and "--model DIR" in result.output


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
