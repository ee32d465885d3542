"""Post-processing for a run, in spawned processes: a book's chunks are read from the cache,
assembled, mastered, encoded and gated off the run's interpreter.

Threads were not enough: each of the ~150 numpy calls of a book releases the interpreter's
lock and must win it back from the upload threads and the thread that feeds the engines, so
two post-processing threads kept two cores only ~70 % busy. Each process here runs one book at
a time for whichever run thread checked it out (`RenderPool.render`), and returns only the
encoded file. The watermark stays in the run's process, where one AudioSeal model (on the
GPU, when there is one) serves every book: a watermarked book is mastered in a process,
watermarked by the caller, then encoded and gated in a process.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from narrate.cache import ChunkCache
from narrate.config import PostConfig
from narrate.errors import AudioError
from narrate.records import Chunk, EncodedBook
from narrate.storage import open_storage
from narrate.workers import die_with_parent, reuse_freed_memory

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import numpy as np

    from narrate.post.watermark import Watermarker

T = TypeVar("T")
PARENT_POLL_S = 1.0  # how often an idle process checks that its run is still there


class Abandoned(Exception):  # noqa: N818 - not an error: the run stopped and left the book
    """The pool was closed while the book was being rendered: nobody waits for it any more."""


class RenderPool:
    """`workers` processes; a thread that calls `render` checks one out for each step."""

    def __init__(self, workers: int, cache_uri: str, *, nice: int = 0) -> None:
        self._context = mp.get_context("spawn")  # the run may hold CUDA or threads
        self._workers = workers
        self._cache_uri = cache_uri
        self._nice = nice
        self._closed = False
        self._started = threading.Lock()
        # free processes; None once closed (each waiter that takes it puts it back)
        self._idle: queue.SimpleQueue[RenderProcess | None] = queue.SimpleQueue()
        self._all: list[RenderProcess] = []

    def start(self) -> None:
        """Start the processes (the first call does; later ones nothing). A run starts them
        with its first book to render, so that their imports overlap the synthesis."""
        with self._started:
            if not self._all and not self._closed:
                for _ in range(self._workers):
                    self._idle.put(self._start())

    def render(
        self,
        book_id: str,
        chunks: Sequence[Chunk],
        config: PostConfig,
        watermarker: Watermarker | None,
        *,
        content_hash: str,
        title: str | None = None,
    ) -> EncodedBook:
        """The book's published file (narrate.post.render_book, its chunks read from the
        cache), or AudioError; Abandoned once the pool is closed."""
        from narrate.post import finish_book

        chunks = tuple(chunks)
        if watermarker is None:
            return self.call(
                render_cached, self._cache_uri, book_id, chunks, config, content_hash, title
            )
        from narrate.post.watermark import watermark_payload

        audio = self.call(master_cached, self._cache_uri, chunks, config)
        payload = watermark_payload(book_id)
        audio = watermarker.apply(audio, payload)
        finish = functools.partial(
            finish_book, content_hash=content_hash, title=title, payload=payload
        )
        return self.call(finish, book_id, chunks, audio, config)

    def close(self) -> None:
        """Stop every process now: books still rendering or waiting for a process are
        abandoned (Abandoned)."""
        with self._started:
            self._closed = True
        for process in self._all:
            process.stop()
        self._idle.put(None)

    def _start(self) -> RenderProcess:
        process = RenderProcess(self._context, self._cache_uri, self._nice)
        self._all.append(process)
        return process

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """function(*args) (a module-level function) in a free process: its result, or its
        exception raised here; AudioError if the process dies under it (the next call gets a
        new process), Abandoned once the pool is closed."""
        self.start()
        process = self._idle.get()
        if process is None:
            self._idle.put(None)
            raise Abandoned
        try:
            return process.call(function, *args)
        except AudioError:
            if self._closed:
                raise Abandoned from None
            raise
        finally:
            if process.alive:
                self._idle.put(process)
            elif not self._closed:  # died under a book (out of memory?): the next gets a new one
                self._all.remove(process)
                self._idle.put(self._start())


class RenderProcess:
    """One spawned process and the pipe that carries its calls and their results."""

    def __init__(self, context: Any, cache_uri: str, nice: int) -> None:
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=render_process,
            args=(os.getpid(), child_conn, cache_uri, nice),
            name="narrate-render",
            daemon=True,
        )
        self._process.start()
        child_conn.close()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """function(*args) in the process; its exception is raised here. AudioError if the
        process dies meanwhile."""
        try:
            self._conn.send((function, args))
            while not self._conn.poll(PARENT_POLL_S):
                if not self._process.is_alive():
                    break
            ok, value = self._conn.recv()
        except (EOFError, OSError):  # the process died (or was stopped) under this book
            self._process.join(timeout=5)
            raise AudioError(
                f"the post-processing process exited with code {self._process.exitcode}",
                "out of host memory? a very long book needs a few GB: use fewer --post-workers",
            ) from None
        if ok:
            return value
        raise value

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()


def render_cached(
    cache_uri: str,
    book_id: str,
    chunks: Sequence[Chunk],
    config: PostConfig,
    content_hash: str,
    title: str | None,
) -> EncodedBook:
    """render_book, without a watermark, of the book whose chunks are in the cache."""
    from narrate.post import render_book

    audios = cached_audios(cache_uri, chunks)
    return render_book(
        book_id, chunks, audios, config, None, content_hash=content_hash, title=title
    )


def master_cached(cache_uri: str, chunks: Sequence[Chunk], config: PostConfig) -> np.ndarray:
    from narrate.post import master_book

    return master_book(chunks, cached_audios(cache_uri, chunks), config)


def cached_audios(cache_uri: str, chunks: Sequence[Chunk]) -> list[np.ndarray]:
    """The chunks' audio from the cache; AudioError for one no longer there."""
    cache = _cache(cache_uri)
    audios = []
    for chunk in chunks:
        try:
            audios.append(cache.get(chunk.chunk_id))
        except KeyError:  # deleted from the cache since the run looked
            raise AudioError(
                f"chunk {chunk.chunk_id} is no longer in the cache",
                hint="the next run synthesizes it again",
            ) from None
    return audios


@functools.cache
def _cache(uri: str) -> ChunkCache:  # one per process, kept for its life
    return ChunkCache(open_storage(uri))


def render_process(parent: int, conn: Connection, cache_uri: str, nice: int) -> None:
    """A render process's entry point: calls from `conn` until it closes or the run is gone."""
    from threadpoolctl import threadpool_limits

    from narrate.report import EventLog, route_logging

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides how a Ctrl-C ends
    route_logging(EventLog())  # the run's stderr: one stream of events
    if nice:
        os.nice(nice)
    threadpool_limits(limits=1)  # one book per process: BLAS threads would only spin
    reuse_freed_memory()
    import narrate.post  # noqa: F401 - loaded before the first book arrives

    _cache(cache_uri)
    while True:
        while not conn.poll(PARENT_POLL_S):
            if os.getppid() != parent:
                return
        try:
            function, args = conn.recv()
        except EOFError:
            return
        try:
            result: tuple[bool, Any] = (True, function(*args))
        except Exception as exc:  # raised again in the run, in the thread that asked
            result = (False, exc)
        try:
            conn.send(result)
        except Exception as exc:  # a result pickle refuses (nothing was sent)
            conn.send((False, AudioError(f"{type(exc).__name__} in post-processing: {exc}")))
