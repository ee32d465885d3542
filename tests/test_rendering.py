"""Post-processing in render processes (narrate.rendering): the files a run publishes are the
ones narrate.post makes, and a process lost under a book costs only that book."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.signals import silence, speechlike

from narrate.cache import ChunkCache
from narrate.config import PostConfig
from narrate.errors import AudioError
from narrate.post import Watermarker, render_book
from narrate.records import Chunk, ChunkAudio
from narrate.rendering import Abandoned, RenderPool
from narrate.storage import open_storage

TEXTS = ["The lamp was lit at dusk.", "Nobody came to the door that night."]


def cached_book(cache_dir: Path, book_id: str) -> tuple[list[Chunk], list[np.ndarray]]:
    """A two-chunk book whose chunks are in the cache at `cache_dir`."""
    cache = ChunkCache(open_storage(str(cache_dir)))
    chunks, audios = [], []
    for index, text in enumerate(TEXTS):
        chunk = Chunk(f"{book_id}-c{index}", book_id, index, text)
        audio = np.concatenate([silence(0.2), speechlike(2.0, seed=index), silence(0.2)])
        cache.put(ChunkAudio(chunk.chunk_id, audio, frames=25, stop_reason="eos", seed=0))
        chunks.append(chunk)
        audios.append(cache.get(chunk.chunk_id))  # as stored: 16-bit FLAC
    return chunks, audios


@pytest.fixture
def pool(tmp_path: Path):
    renderers = RenderPool(1, str(tmp_path / "cache"))
    yield renderers
    renderers.close()


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_a_book_rendered_in_a_process_is_the_file_render_book_makes(
    tmp_path: Path, pool: RenderPool, fmt: str
) -> None:
    chunks, audios = cached_book(tmp_path / "cache", "book-1")
    config = PostConfig(format=fmt)
    expected = render_book("book-1", chunks, audios, config, None, content_hash="h", title="T")
    assert pool.render("book-1", chunks, config, None, content_hash="h", title="T") == expected


def test_a_watermarked_book_is_mastered_and_encoded_in_a_process_around_the_watermark(
    tmp_path: Path, pool: RenderPool, audioseal_dir: Path
) -> None:
    chunks, audios = cached_book(tmp_path / "cache", "book-2")
    watermarker = Watermarker.load(str(audioseal_dir))
    config = PostConfig()
    expected = render_book("book-2", chunks, audios, config, watermarker, content_hash="h")
    rendered = pool.render("book-2", chunks, config, watermarker, content_hash="h")
    assert rendered == expected and rendered.watermark_payload is not None
    unmarked = render_book("book-2", chunks, audios, config, None, content_hash="h")
    assert rendered.data != unmarked.data


def test_a_book_that_fails_in_a_process_fails_with_its_reason(
    tmp_path: Path, pool: RenderPool
) -> None:
    cache = ChunkCache(open_storage(str(tmp_path / "cache")))
    chunk = Chunk("quiet", "book-3", 0, TEXTS[0])
    cache.put(ChunkAudio("quiet", silence(2.0), frames=25, stop_reason="eos", seed=0))
    with pytest.raises(AudioError, match="no chunk of the book holds any speech"):
        pool.render("book-3", [chunk], PostConfig(), None, content_hash="h")


def test_a_render_process_that_dies_fails_only_its_book_and_the_next_gets_a_new_one(
    tmp_path: Path, pool: RenderPool
) -> None:
    chunks, audios = cached_book(tmp_path / "cache", "book-4")
    with pytest.raises(AudioError, match="exited with code 9"):
        pool.call(os._exit, 9)  # as the kernel's OOM killer would end it, mid-book
    rendered = pool.render("book-4", chunks, PostConfig(), None, content_hash="h")
    assert rendered == render_book("book-4", chunks, audios, PostConfig(), None, content_hash="h")


def test_closing_the_pool_abandons_the_books_being_rendered_or_waiting_at_once(
    pool: RenderPool,
) -> None:
    outcome: list[BaseException] = []

    def long_book() -> None:
        try:
            pool.call(time.sleep, 60)
        except BaseException as exc:
            outcome.append(exc)

    # one process: the first book holds it, the second waits for it
    threads = [threading.Thread(target=long_book) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the process has the first call
    closed = time.monotonic()
    pool.close()
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - closed < 5
    assert len(outcome) == 2 and all(isinstance(e, Abandoned) for e in outcome)  # not failed
