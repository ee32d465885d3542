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
from support.signals import band_energy, speechlike

from narrate.config import SAMPLE_RATE, PostConfig
from narrate.errors import ModelError
from narrate.post import Watermarker, decode, render_book, watermark, watermark_payload
from narrate.post.watermark import (
    DETECTOR_CARD,
    DETECTOR_FILE,
    GENERATOR_CARD,
    GENERATOR_FILE,
    bits_payload,
    payload_bits,
)
from narrate.records import Chunk


@pytest.fixture(scope="module")
def watermarker(audioseal_dir: Path) -> Watermarker:
    return Watermarker.load(str(audioseal_dir))


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
    saved = torch.load(audioseal_dir / GENERATOR_FILE, weights_only=False)["model"]
    loaded = first.generator.state_dict()
    assert torch.equal(
        loaded["msg_processor.msg_processor.weight"], saved["msg_processor.msg_processor.weight"]
    )
    pair = f"{audioseal_dir / GENERATOR_FILE},{audioseal_dir / DETECTOR_FILE}"
    assert Watermarker.load(pair).detect(speechlike(1), SAMPLE_RATE).payload in range(1 << 16)


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
    cache = tmp_path / "cache" / "audioseal"
    cache.mkdir(parents=True)
    for card, file in ((GENERATOR_CARD, GENERATOR_FILE), (DETECTOR_CARD, DETECTOR_FILE)):
        url_path = urlparse(load_local_model_config(card).checkpoint).path
        (built / file).rename(cache / hashlib.sha1(url_path.encode()).hexdigest()[:24])
    watermarker = Watermarker.load(None)
    assert watermarker.detect(speechlike(1), SAMPLE_RATE).payload in range(1 << 16)


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
