"""Mimi decoding in bounded calls (narrate.synth.mimi): groups capped by frames, and a call that
runs out of device memory split down to single rows before any row is given up (tiny Mimi, CPU;
torch's OutOfMemoryError is raised by a wrapper standing in for a full GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from narrate.errors import UsageError
from narrate.synth.mimi import DECODE_FRAMES_ENV, Codec, load_codec

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LENGTHS = [12, 3, 9, 7, 0, 12]


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path) -> Codec:
    return load_codec(str(tiny_model_dir), torch.device("cpu"))


@pytest.fixture(scope="module")
def rows() -> list[np.ndarray]:
    generator = np.random.default_rng(3)
    return [generator.integers(0, 2048, (n, 32)) for n in LENGTHS]


@pytest.fixture(scope="module")
def alone(codec: Codec, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Each row decoded in a call of its own: what every bounded decode must give."""
    return [codec.decode_rows([row])[0] for row in rows]


def calls_of(codec: Codec, monkeypatch: pytest.MonkeyPatch, fits) -> list[tuple[int, int]]:
    """Record each Mimi call's (rows, frames); raise out of memory where `fits` says no."""
    calls: list[tuple[int, int]] = []
    real = codec.model.decode

    def decode(codes: torch.Tensor) -> torch.Tensor:
        rows, frames = codes.shape[0], codes.shape[2]
        calls.append((rows, frames))
        if not fits(rows, frames):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(codes)

    monkeypatch.setattr(codec.model, "decode", decode)
    return calls


def assert_same_audio(got: list[np.ndarray | None], expected: list[np.ndarray]) -> None:
    for row_audio, row_expected in zip(got, expected, strict=True):
        assert row_audio is not None and len(row_audio) == len(row_expected)
        np.testing.assert_allclose(row_audio, row_expected, atol=1e-5)


def test_no_decode_call_holds_more_frames_than_its_budget(codec, rows, alone, monkeypatch):
    monkeypatch.setattr(codec, "max_frames", 24)
    calls = calls_of(codec, monkeypatch, fits=lambda rows, frames: True)
    audio = codec.decode_rows(rows)
    assert_same_audio(audio, alone)
    assert all(rows * frames <= 24 for rows, frames in calls)
    assert sum(rows for rows, _ in calls) == len(LENGTHS)  # each row decoded once
    assert len(calls) < len(LENGTHS)  # rows still share calls


def test_out_of_memory_splits_a_call_down_to_single_rows_and_no_row_is_lost(
    codec, rows, alone, monkeypatch
) -> None:
    # a device that fits one row at a time: every row decodes, as it would alone
    monkeypatch.setattr(codec, "max_frames", 1000)
    calls = calls_of(codec, monkeypatch, fits=lambda rows, frames: rows == 1)
    assert_same_audio(codec.decode_rows(rows), alone)
    assert calls[0][0] == len(LENGTHS)  # tried together first
    assert sum(rows == 1 for rows, _ in calls) == sum(n > 0 for n in LENGTHS)  # an empty row: none


def test_only_a_row_that_does_not_decode_even_alone_is_given_up(codec, rows, alone, monkeypatch):
    monkeypatch.setattr(codec, "max_frames", 1000)
    calls_of(codec, monkeypatch, fits=lambda rows, frames: rows * frames <= 10)
    audio = codec.decode_rows(rows)
    for row_audio, row_expected, length in zip(audio, alone, LENGTHS, strict=True):
        if length > 10:
            assert row_audio is None
        else:
            np.testing.assert_allclose(row_audio, row_expected, atol=1e-5)


def test_the_frames_per_call_can_be_set_and_a_bad_value_is_explained(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DECODE_FRAMES_ENV, "750")
    assert load_codec(str(tiny_model_dir), torch.device("cpu")).frames_per_call() == 750
    monkeypatch.setenv(DECODE_FRAMES_ENV, "lots")
    with pytest.raises(UsageError, match=DECODE_FRAMES_ENV):
        load_codec(str(tiny_model_dir), torch.device("cpu"))
