"""The chunk cache on a local folder and on Cloud Storage (fake-gcs-server)."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from narrate.cache import ChunkCache
from narrate.errors import AudioError
from narrate.records import ChunkAudio
from narrate.storage import open_storage


@pytest.fixture(params=["local", "gcs"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkCache:
    if request.param == "local":
        return ChunkCache(open_storage(str(tmp_path / "cache")))
    bucket = request.getfixturevalue("gcs_bucket")
    return ChunkCache(open_storage(f"gs://{bucket}/cache"))


def chunk_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()[:24]


def tone(seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(24_000 * seconds)) / 24_000
    return (amplitude * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def test_audio_round_trips_at_16_bit_precision(cache: ChunkCache) -> None:
    audio = tone(0.5)
    cache.put(ChunkAudio(chunk_id(1), audio, frames=6, stop_reason="eos", seed=7))
    back = cache.get(chunk_id(1))
    assert back.dtype == np.float32 and len(back) == len(audio)
    assert np.max(np.abs(back - audio)) <= 1 / 32768 + 1e-6
    with pytest.raises(KeyError):
        cache.get(chunk_id(2))


@pytest.mark.parametrize("damage", [b"fLaC" + bytes(100), b""])
def test_a_cached_chunk_that_does_not_decode_is_removed_with_a_reason(
    cache: ChunkCache, damage: bytes
) -> None:
    cache.put(ChunkAudio(chunk_id(1), tone(0.2), frames=3, stop_reason="eos", seed=1))
    cache.storage.delete(cache.name(chunk_id(1)))
    cache.storage.put(cache.name(chunk_id(1)), damage, content_type="audio/flac")
    with pytest.raises(AudioError, match="removed from the cache") as raised:
        cache.get(chunk_id(1))
    assert chunk_id(1) in raised.value.message
    assert cache.missing({chunk_id(1)}) == {chunk_id(1)}  # the next run synthesizes it


def test_a_cached_chunk_is_never_overwritten(cache: ChunkCache) -> None:
    cache.put(ChunkAudio(chunk_id(1), tone(0.2, 0.5), frames=3, stop_reason="eos", seed=1))
    cache.put(ChunkAudio(chunk_id(1), tone(0.2, 0.1), frames=3, stop_reason="eos", seed=2))
    assert np.max(np.abs(cache.get(chunk_id(1)))) > 0.4  # the first write stands


def test_missing_agrees_whether_folders_are_listed_or_each_id_looked_up(cache: ChunkCache) -> None:
    ids = [chunk_id(n) for n in range(300)]
    for chunk in ids[::3]:
        cache.put(ChunkAudio(chunk, tone(0.05), frames=1, stop_reason="eos", seed=0))
    expected = set(ids) - set(ids[::3])
    with ThreadPoolExecutor(8) as pool:
        assert cache.missing(ids, pool.map) == expected
    cache.list_threshold = 2  # list every folder holding two or more of the ids
    assert cache.missing(ids) == expected
    cache.list_threshold = 10**9  # never list: one lookup per id
    assert cache.missing(ids) == expected


@pytest.mark.parametrize(
    ("rate", "channels"), [(16_000, 1), (48_000, 1), (24_000, 2)], ids=["16kHz", "48kHz", "stereo"]
)
def test_a_cached_chunk_at_another_rate_or_in_stereo_is_removed_not_spliced_into_a_book(
    cache: ChunkCache, rate: int, channels: int
) -> None:
    # a FLAC that decodes but is not what narrate writes (another tool, an older layout) would
    # play at the wrong speed or double the book's length if assembled: it is refused instead
    audio = np.stack([tone(0.2)] * channels, axis=1) if channels > 1 else tone(0.2)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC", subtype="PCM_16")
    cache.storage.put(cache.name(chunk_id(1)), buffer.getvalue(), content_type="audio/flac")
    with pytest.raises(AudioError, match="24000 Hz mono") as raised:
        cache.get(chunk_id(1))
    assert "removed from the cache" in raised.value.message
    assert cache.missing({chunk_id(1)}) == {chunk_id(1)}  # the next run synthesizes it


def test_a_take_kept_unchecked_is_no_cached_chunk_and_comes_back_as_the_engine_made_it(
    cache: ChunkCache,
) -> None:
    take = ChunkAudio(chunk_id(5), tone(0.4), frames=5, stop_reason="cap", seed=11, attempts=3)
    cache.put_unchecked(take)
    assert cache.missing([chunk_id(5)]) == {chunk_id(5)}  # not the chunk's audio until heard
    assert cache.unchecked() == {chunk_id(5)}
    back = cache.take_unchecked(chunk_id(5))
    assert back is not None
    assert (back.frames, back.stop_reason, back.seed, back.attempts) == (5, "cap", 11, 3)
    assert np.abs(back.audio - take.audio).max() < 1e-4
    cache.drop_unchecked(chunk_id(5))
    assert cache.unchecked() == set() and cache.take_unchecked(chunk_id(5)) is None
