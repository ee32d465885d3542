"""AudioSeal watermark: payloads, the 16 kHz residual, loading, detection."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from support.audioseal_models import build_checkpoints
from support.signals import band_energy, speechlike, tone

from narrate.config import SAMPLE_RATE, PostConfig
from narrate.errors import ModelError
from narrate.post import Watermarker, decode, render_book, watermark, watermark_payload
from narrate.post.detect import books_by_payload, detect_files
from narrate.post.watermark import (
    CONTEXT_S,
    DETECTOR_CARD,
    DETECTOR_FILE,
    GENERATOR_CARD,
    GENERATOR_FILE,
    SEGMENT_S,
    WATERMARK_RATE,
    bits_payload,
    payload_bits,
)
from narrate.records import Chunk


@pytest.fixture(scope="module")
def watermarker(audioseal_dir: Path) -> Watermarker:
    return Watermarker.load(str(audioseal_dir))


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


def holds_weights(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    """The model's parameters are the checkpoint's (which predates the loader's renaming)."""
    loaded = {k.replace(".inner_conv.", "."): v for k, v in model.state_dict().items()}
    return loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_payload_is_stable_across_processes() -> None:
    ids = ["book-1", "The Hobbit", "ünïcødé-id", "x" * 128]
    # a fresh interpreter has another hash seed: the payload must not depend on it
    script = f"from narrate.post import watermark_payload as p; print([p(i) for i in {ids!r}])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert other.stdout.strip() == str([watermark_payload(i) for i in ids])


def test_payloads_are_16_bit_and_distinct_across_ids() -> None:
    payloads = [watermark_payload(f"book-{i}") for i in range(50)]
    assert all(0 <= p < 1 << 16 for p in payloads)
    assert len(set(payloads)) == len(payloads)


def test_payload_bits_round_trip() -> None:
    for payload in range(1 << 16):
        bits = payload_bits(payload)
        assert len(bits) == 16 and bits_payload(bits) == payload
    with pytest.raises(ValueError):
        payload_bits(1 << 16)


def test_residual_lives_below_8_khz_and_leaves_high_frequencies_alone(
    watermarker: Watermarker,
) -> None:
    # white noise fills the whole 0-12 kHz band, so any change above 8 kHz would show
    audio = (np.random.default_rng(0).standard_normal(12 * SAMPLE_RATE) * 0.1).astype(np.float32)
    marked = watermarker.apply(audio, watermark_payload("book-1"))
    assert marked.dtype == np.float32 and marked.shape == audio.shape
    residual = marked.astype(np.float64) - audio
    assert band_energy(residual, 0, 8000) > 1e-4 * band_energy(audio, 0, 8000)
    assert band_energy(residual, 8000) < 1e-6 * band_energy(residual, 0)
    assert band_energy(residual, 8100) < 1e-7 * band_energy(audio, 8100)


def test_segmenting_long_books_leaves_no_seams(
    watermarker: Watermarker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 25 s spans three 10 s model segments; near their boundaries the residual must be what
    # the model gives for the book in one piece (a hard cut there is ~12% off)
    audio = speechlike(25, level=0.1)
    segmented = watermarker.apply(audio, 7).astype(np.float64) - audio
    monkeypatch.setattr(watermark, "SEGMENT_S", 30)
    whole = watermarker.apply(audio, 7).astype(np.float64) - audio
    for boundary_s in (10, 20):
        near = slice(int((boundary_s - 0.05) * SAMPLE_RATE), int((boundary_s + 0.05) * SAMPLE_RATE))
        error = np.sqrt(np.mean((segmented[near] - whole[near]) ** 2) / np.mean(whole[near] ** 2))
        assert error < 0.01


def test_payload_changes_the_watermark(watermarker: Watermarker) -> None:
    audio = speechlike(3)
    assert not np.allclose(watermarker.apply(audio, 1), watermarker.apply(audio, 2))


def test_loads_once_per_process_through_the_real_loader(audioseal_dir: Path) -> None:
    first = Watermarker.load(str(audioseal_dir))
    assert Watermarker.load(str(audioseal_dir)) is first
    assert holds_weights(first.generator, checkpoint_weights(audioseal_dir / GENERATOR_FILE))
    pair = Watermarker.load(f"{audioseal_dir / GENERATOR_FILE},{audioseal_dir / DETECTOR_FILE}")
    assert holds_weights(pair.detector, checkpoint_weights(audioseal_dir / DETECTOR_FILE))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/no/such/folder", "neither a folder"),
        ("{empty}", "no AudioSeal generator checkpoint"),
        ("{corrupt}/generator_base.pth,{corrupt}/detector_base.pth", "cannot load"),
    ],
)
def test_unloadable_weights_raise_a_model_error_with_a_hint(
    tmp_path: Path, model: str, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / GENERATOR_FILE).write_bytes(b"not a checkpoint")
    model = model.format(empty=tmp_path / "empty", corrupt=tmp_path / "corrupt")
    with pytest.raises(ModelError, match=message) as raised:
        Watermarker.load(model)
    assert "--watermark-model" in raised.value.hint


def test_model_cards_fail_clearly_offline_without_downloaded_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="audioseal_wm_16bits.*never downloaded"):
        Watermarker.load(None)


def test_model_cards_load_from_the_download_cache_while_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioseal.loader import load_local_model_config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path / "cache"))
    # full-size random weights, placed where audioseal's own download would have put them
    built = build_checkpoints(tmp_path / "built", n_filters=32, dimension=128, lstm=2)
    saved = {file: checkpoint_weights(built / file) for file in (GENERATOR_FILE, DETECTOR_FILE)}
    cache = tmp_path / "cache" / "audioseal"
    cache.mkdir(parents=True)
    for card, file in ((GENERATOR_CARD, GENERATOR_FILE), (DETECTOR_CARD, DETECTOR_FILE)):
        url_path = urlparse(load_local_model_config(card).checkpoint).path
        (built / file).rename(cache / hashlib.sha1(url_path.encode()).hexdigest()[:24])
    watermarker = Watermarker.load(None)
    assert holds_weights(watermarker.generator, saved[GENERATOR_FILE])
    assert holds_weights(watermarker.detector, saved[DETECTOR_FILE])


MARK_HZ, MARK_LEVEL = 440.0, 0.01
CONTEXT = int(CONTEXT_S * WATERMARK_RATE)


class RecordingGenerator:
    """AudioSeal's generator protocol (`get_watermark(x [B, 1, T], message [B, 16])`), recording
    what it is given and answering a known mark: a 440 Hz sine on each segment's time axis."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_watermark(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), message.clone()))
        t = torch.arange(x.shape[-1]) / WATERMARK_RATE
        return (MARK_LEVEL * torch.sin(2 * torch.pi * MARK_HZ * t)).expand_as(x).clone()


def test_the_generator_gets_the_books_16_payload_bits_and_its_audio_at_16_khz() -> None:
    from scipy.signal import resample_poly

    generator = RecordingGenerator()
    audio = tone(3, 440, ramp_ms=0) + tone(3, 2500, amplitude=0.1, ramp_ms=0)
    Watermarker(generator, "unused", "cpu").apply(audio, watermark_payload("book-1"))
    ((segments, message),) = generator.calls
    assert message.tolist() == [payload_bits(watermark_payload("book-1"))]
    assert segments.shape == (1, 1, SEGMENT_S * WATERMARK_RATE + 2 * CONTEXT)
    at_16k = resample_poly(audio.astype(np.float64), 2, 3)  # resampled independently
    given = segments[0, 0].double().numpy()
    assert not given[:CONTEXT].any() and not given[CONTEXT + len(at_16k) :].any()
    middle = slice(1600, len(at_16k) - 1600)  # away from the resampling filters' edges
    error = given[CONTEXT:][middle] - at_16k[middle]
    assert np.sqrt(np.mean(error**2)) < 1e-3 * np.sqrt(np.mean(at_16k[middle] ** 2))


@pytest.mark.parametrize("samples", [3 * SAMPLE_RATE, 3 * SAMPLE_RATE + 1, 3 * SAMPLE_RATE + 2])
def test_the_residual_is_upsampled_to_24_khz_and_added_over_the_whole_book(samples: int) -> None:
    audio = speechlike(4)[:samples]
    marked = Watermarker(RecordingGenerator(), "unused", "cpu").apply(audio, 1)
    assert marked.shape == audio.shape and marked.dtype == np.float32
    # the generator's mark starts CONTEXT samples (at 16 kHz) before the book
    t = np.arange(samples) / SAMPLE_RATE + CONTEXT / WATERMARK_RATE
    expected = MARK_LEVEL * np.sin(2 * np.pi * MARK_HZ * t)
    added = marked.astype(np.float64) - audio
    inside = slice(SAMPLE_RATE // 10, samples - SAMPLE_RATE // 100)  # up to 10 ms from the end
    assert np.max(np.abs(added[inside] - expected[inside])) < 0.02 * MARK_LEVEL


@pytest.mark.parametrize("marked", [True, False])
def test_detect_names_the_book_whose_payload_the_detector_reports(
    tmp_path: Path, marked: bool
) -> None:
    import soundfile

    ids = [f"book-{i}" for i in range(8)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"book_id": "{i}", "text": "Hello."}}\n' for i in ids))
    # the detector's output layer answers book-3's payload, watermarked or not
    answer = watermark_payload("book-3")
    folder = build_checkpoints(tmp_path / "det", detector_answer=answer, answer_marked=marked)
    recording = tmp_path / "found.wav"
    soundfile.write(recording, speechlike(2), SAMPLE_RATE)
    (found,) = detect_files(
        [str(recording)], Watermarker.load(str(folder)), books_by_payload(str(manifest))
    )
    assert found.payload == answer
    assert found.watermarked is marked
    assert found.books == (("book-3",) if marked else ())


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_detect_reads_every_output_format(tmp_path: Path, fmt: str) -> None:
    # this detector always reports payload 0xBEEF: it checks what surrounds the model
    # (decoding, resampling to 16 kHz, segments, bit order), not detection itself
    folder = build_checkpoints(tmp_path / "answering", detector_answer=0xBEEF)
    watermarker = Watermarker.load(str(folder))
    chunk = Chunk("c0", "book-1", 0, "A sentence of some fourteen words or so, read aloud well.")
    book = render_book(
        "book-1", [chunk], [speechlike(4)], PostConfig(format=fmt), watermarker, content_hash="h"
    )
    audio, rate = decode(book.data)
    found = watermarker.detect(audio, rate)
    assert found.probability == pytest.approx(1.0)
    assert found.payload == 0xBEEF


REAL_WEIGHTS = os.environ.get("NARRATE_AUDIOSEAL_DIR")


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL_WEIGHTS,
    reason="real AudioSeal weights needed: set NARRATE_AUDIOSEAL_DIR to a folder with "
    "generator_base.pth and detector_base.pth (random weights cannot detect anything)",
)
def test_real_weights_recover_the_payload_after_mp3() -> None:
    watermarker = Watermarker.load(REAL_WEIGHTS)
    config = PostConfig(format="mp3", mp3_bitrate=64_000)
    accuracies = []
    for seed, book_id in enumerate(["book-1", "Moby Dick", "a-third-book"]):
        chunk = Chunk("c0", book_id, 0, "x" * 140)
        book = render_book(
            book_id, [chunk], [speechlike(10, seed=seed)], config, watermarker, content_hash="h"
        )
        found = watermarker.detect(*decode(book.data))
        assert found.probability > 0.5
        sent, got = payload_bits(book.watermark_payload), payload_bits(found.payload)
        accuracies.append(np.mean(np.equal(sent, got)))
    assert np.mean(accuracies) >= 0.95
