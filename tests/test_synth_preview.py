"""The preview engine (eSpeak NG): real speech on CPU, same protocol as CSM."""

from __future__ import annotations

import numpy as np
import pytest

from narrate.config import SAMPLES_PER_FRAME, EngineConfig
from narrate.errors import ModelError
from narrate.records import Batch, Chunk
from narrate.synth import load_engine


@pytest.fixture(scope="module")
def preview():
    try:
        engine = load_engine(EngineConfig(engine="preview"))
    except ModelError as exc:  # CI installs espeakng-loader, so this runs there
        pytest.skip(f"eSpeak NG is not available: {exc.message}")
    yield engine
    engine.close()


def chunk(chunk_id: str, text: str, speaker: int = 0) -> Chunk:
    return Chunk(chunk_id, "book", 0, text, speaker=speaker)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio**2)))


def test_preview_speaks_and_duration_grows_with_text(preview) -> None:
    short, long = preview.synthesize(
        Batch(
            (
                chunk("a1", "Rain fell."),
                chunk("b2", "Rain fell softly on the harbour while the bells rang out at noon."),
            )
        )
    )
    for result in (short, long):
        assert result.ok and result.stop_reason == "eos"
        assert result.audio.dtype == np.float32
        assert len(result.audio) == result.frames * SAMPLES_PER_FRAME
        assert rms(result.audio) > 0.01
    assert 0.4 < len(short.audio) / 24_000 < 2.5
    assert len(long.audio) > 3 * len(short.audio)


def test_preview_reproduces_a_chunk_and_speakers_sound_different(preview) -> None:
    target = chunk("c1", "Where are you going?")
    (first,) = preview.synthesize(Batch((target,)))
    other, again = preview.synthesize(Batch((chunk("c3", target.text, speaker=1), target)))
    np.testing.assert_array_equal(first.audio, again.audio)  # whatever was spoken before it
    n = min(len(first.audio), len(other.audio))
    assert not np.allclose(first.audio[:n], other.audio[:n], atol=1e-2)
