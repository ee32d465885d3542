"""Device workers: one spawned process per device loads the engine once and synthesizes batches.

A worker drives its engine through `Engine.stream`, fed from the run's task queue: the CSM
engine keeps one frame loop running across batches and takes the next batch whenever a slot
would otherwise sit idle, and every chunk goes back to the run as soon as it is done
(`ChunksDone`), so books finish while their batch-mates are still being spoken.

Without the quality check every finished chunk goes straight into the chunk cache (the
checkpoint) and the parent gets back only each chunk's outcome. With it, the worker hands its
takes back (`ChunksDone.takes`): the run has them checked in other processes and caches the
good ones, so the engine goes on meanwhile.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from narrate.cache import ChunkCache
from narrate.config import EngineConfig, available_cores
from narrate.errors import EngineError, NarrateError, StorageError, UsageError, first_line
from narrate.records import Batch, ChunkAudio, ChunkOutcome
from narrate.report import EventLog, route_logging
from narrate.storage import open_storage
from narrate.synth import BatchTask, Engine, Synthesized, chunk_seed

log = logging.getLogger(__name__)


def resolve_devices(spec: str) -> list[str]:
    """`auto` = every CUDA device, else one CPU worker; otherwise a comma-separated list."""
    if spec != "auto":
        devices = [d.strip() for d in spec.split(",") if d.strip()]
        if not devices or any(not (d == "cpu" or d.startswith("cuda")) for d in devices):
            raise UsageError(f"--devices {spec!r}: expected auto, cpu, cuda:0,cuda:1 or cpu,cpu")
        return devices
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


@dataclass(frozen=True, slots=True)
class ChunksDone:
    """Chunks of batch `batch_no` done since the worker's last message about it; `finished`:
    the batch has no chunk left. `seconds`: the worker's time in its engine since its last
    message (not counting waits for a batch)."""

    batch_no: int
    outcomes: tuple[ChunkOutcome, ...]  # chunks settled here: failed, or cached unchecked
    seconds: float
    takes: tuple[ChunkAudio, ...] = ()  # synthesized chunks not cached yet: to be checked
    finished: bool = True


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    device: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker needs to load its engine and reach the cache."""

    engine: EngineConfig
    voices_dir: str
    cache_uri: str
    compile: bool = False  # CUDA workers capture the frame step as CUDA graphs
    cpu_threads: int | None = None  # torch threads per CPU worker (default: cores / CPU workers)
    check_takes: bool = False  # hand takes back for the quality check instead of caching them


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux keeps one per thread; elsewhere
    the call would set the whole process's, so it does nothing there). Never fails a run."""
    if sys.platform != "linux":
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters
KEEP_FREED_BELOW = 32 << 20  # glibc's largest mmap threshold on 64-bit
TRIM_ABOVE = 256 << 20


def reuse_freed_memory() -> None:
    """Keep freed memory for reuse instead of handing it back to the kernel (glibc only).

    By default glibc maps every block over 128 KiB afresh and unmaps it when freed, and
    trims a thread's heap as soon as its top is free. Post-processing makes dozens of
    arrays of a book's length (hundreds of KiB and up) and frees them at once: each came
    back as fresh pages the kernel had to zero and fault in, ~900 page faults and a
    quarter of the CPU time of a short book. Blocks under 32 MiB are now served from the
    heap, and up to 256 MiB of free heap is kept. Never fails a run."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BELOW)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        pass


def default_post_workers(devices: list[str], cpu_threads: int | None) -> int:
    """Render processes for the cores the device workers leave free: CPU workers take their
    torch threads, a GPU worker about one core to feed its device."""
    cores = available_cores()
    cpu_workers = devices.count("cpu")
    taken = (cpu_threads or cores // max(1, cpu_workers)) * cpu_workers
    taken += len(devices) - cpu_workers
    return max(1, min(32, cores - taken))


PR_SET_PDEATHSIG = 1  # prctl(2): signal this process when its parent dies


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent exits, then check the parent is still
    the one that started it: a parent killed before the request took effect is caught here,
    and `next_task` polls the same pid later (elsewhere: the poll only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def worker_process(parent: int, *args: Any) -> None:
    """A worker process's entry point. `parent`: the run's pid, passed in rather than read here
    with os.getppid(): a parent killed before this line ran would otherwise be mistaken for
    init and waited on forever."""
    die_with_parent(parent)
    worker_main(parent, *args)


def worker_main(
    parent: int,
    device: str,
    cpu_threads: int,
    settings: WorkerSettings,
    tasks: Any,
    results: Any,
) -> None:
    """Load the engine once, then synthesize batches until a None arrives, or until the
    process `parent` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how a Ctrl-C ends
    events = EventLog()  # the worker shares the run's stderr: one stream of events
    route_logging(events)
    try:
        import torch

        from narrate.synth import load_engine
        from narrate.synth.voices import VoiceLibrary

        if device == "cpu":
            torch.set_num_threads(cpu_threads)  # two CPU workers must not each take every core
        engine = load_engine(
            settings.engine,
            device=device,
            voices=VoiceLibrary(Path(settings.voices_dir)),
            compile=settings.compile,
        )
        cache = ChunkCache(open_storage(settings.cache_uri))
    except NarrateError as exc:
        results.put(WorkerFailed(device, f"could not start: {exc.message}", exc.hint))
        return
    except Exception as exc:  # a bug or a library failure: report it rather than die silently
        log.exception("the engine could not start on %s", device)
        results.put(WorkerFailed(device, f"could not start: {unexpected(exc)}"))
        return
    feed = TaskFeed(tasks, parent)
    busy_since = time.monotonic()
    slot_frames = frames_kept = 0
    stops: Counter[str] = Counter()  # how rows ended: eos (end frame), cap, failed
    try:
        for result in engine_results(engine, feed, device):
            audios = list(result.audios)
            takes: tuple[ChunkAudio, ...] = ()
            if settings.check_takes:
                takes = tuple(a for a in audios if a.ok)
                audios = [a for a in audios if not a.ok]
            try:
                for audio in audios:
                    if audio.ok:
                        cache.put(audio)
            except (NarrateError, OSError) as exc:  # a full disk, a read-only or lost cache
                failure = exc if isinstance(exc, NarrateError) else StorageError(str(exc))
                message = f"cannot write the chunk cache: {failure.message}"
                results.put(WorkerFailed(device, message, failure.hint or CACHE_HINT))
                break  # every later chunk would be lost the same way: the run stops
            outcomes = tuple(ChunkOutcome(a.chunk_id, a.error, a.attempts) for a in audios)
            now = time.monotonic()
            seconds = now - busy_since - feed.take_waited()
            busy_since = now
            results.put(ChunksDone(result.tag, outcomes, seconds, takes, result.finished))
            slot_frames += result.slot_frames
            frames_kept += sum(a.frames for a in result.audios if a.ok)
            stops.update(a.stop_reason for a in result.audios)
    except EngineStopped as stopped:
        log.error("the engine on %s stopped: %s", device, stopped, exc_info=stopped.cause)
        results.put(stopped.failure(device))
    if slot_frames:  # what the frame loop computed against what was kept (bench-synth)
        events.event(
            "engine_frames", device=device, slot_frames=slot_frames, kept=frames_kept, stops=stops
        )
    engine.close()
    if os.getppid() != parent:  # nobody reads the takes still buffered: exit without them
        results.cancel_join_thread()


@dataclass
class TaskFeed:
    """The run's task queue as the engine's BatchFeed. It keeps the batches the engine took
    and the chunks it returned of each, so that an engine failure fails only what it held."""

    tasks: Any
    parent: int
    ended: bool = False
    taken: dict[int, tuple[BatchTask, set[str]]] = field(default_factory=dict)
    waited: float = 0.0  # seconds blocked on the queue, since `take_waited`

    def next(self, *, wait: bool) -> BatchTask | None:
        if self.ended:
            return None
        if wait:
            started = time.monotonic()
            task = next_task(self.tasks, self.parent)
            self.waited += time.monotonic() - started
        else:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return None
        if task is None:  # told to stop (or the parent is gone): the rows in flight finish
            self.ended = True
            return None
        batch_no, batch, attempts = task
        self.taken[batch_no] = (BatchTask(batch_no, batch, attempts), set())
        return self.taken[batch_no][0]

    def returned(self, result: Synthesized) -> None:
        if result.finished:
            self.taken.pop(result.tag, None)
        elif result.tag in self.taken:
            self.taken[result.tag][1].update(a.chunk_id for a in result.audios)

    def fail_taken(self, error: str) -> Iterator[Synthesized]:
        """Every chunk taken and not returned yet, failed with `error`."""
        for tag, (task, returned) in list(self.taken.items()):
            ids = dict.fromkeys(c.chunk_id for c in task.batch.chunks)
            audios = tuple(
                _failed_audio(i, error, task.attempts.get(i, 0)) for i in ids if i not in returned
            )
            yield Synthesized(tag, audios, finished=True)
        self.taken.clear()

    def take_waited(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited


def engine_results(engine: Engine, feed: TaskFeed, device: str) -> Iterator[Synthesized]:
    """`engine.stream(feed)`; an exception fails the chunks the engine held (not the worker:
    the stream starts again on the next batch). An engine that fails holding no chunk would
    fail the same way at once again: that exception ends the worker (`EngineStopped`)."""
    while not feed.ended:
        try:
            for result in engine.stream(feed):
                feed.returned(result)
                yield result
            return
        except Exception as exc:
            if not feed.taken:
                raise EngineStopped(exc) from exc
            if isinstance(exc, NarrateError):
                error = exc.message
            else:  # a bug or a library failure: the worker and the run go on
                log.exception("synthesis failed on %s (batches %s)", device, sorted(feed.taken))
                error = unexpected(exc)
            yield from feed.fail_taken(error)


class EngineStopped(Exception):
    """The engine failed before it held any chunk: the worker reports it and ends."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause

    def failure(self, device: str) -> WorkerFailed:
        if isinstance(self.cause, NarrateError):
            return WorkerFailed(device, f"synthesis failed: {self.cause.message}", self.cause.hint)
        return WorkerFailed(device, f"synthesis failed: {unexpected(self.cause)}")


def _failed_audio(chunk_id: str, error: str, attempt: int) -> ChunkAudio:
    seed = chunk_seed(chunk_id, attempt)
    return ChunkAudio(chunk_id, np.zeros(0, np.float32), 0, "failed", seed, 1, error=error)


CACHE_HINT = "free space or fix the permissions of --cache, then run again: cached chunks are kept"


def unexpected(exc: BaseException) -> str:
    """A chunk's error for an exception narrate did not expect (the traceback goes to the log)."""
    return f"unexpected {type(exc).__name__} in the engine: {first_line(exc)}"


def next_task(
    tasks: Any, parent: int, poll_s: float = 1.0
) -> tuple[int, Batch, dict[str, int]] | None:
    """The next batch, or None when told to stop or when the parent has died (a SIGKILLed
    run must not leave workers holding a GPU, waiting on a queue nobody feeds)."""
    while True:
        try:
            return tasks.get(timeout=poll_s)
        except queue.Empty:
            if os.getppid() != parent:
                return None


class WorkerPool:
    """One spawned process per device, fed from one queue: a free worker takes the next batch."""

    def __init__(self, devices: list[str], settings: WorkerSettings) -> None:
        context = mp.get_context("spawn")  # CUDA cannot be used in forked children
        self.tasks = context.Queue()
        self.results = context.Queue()
        cpu_workers = max(1, devices.count("cpu"))
        threads = settings.cpu_threads or max(1, available_cores() // cpu_workers)
        self.processes = [
            context.Process(
                target=worker_process,
                args=(os.getpid(), device, threads, settings, self.tasks, self.results),
                name=f"narrate-worker-{device}",
                daemon=True,
            )
            for device in devices
        ]
        for process in self.processes:
            process.start()

    def submit(self, batch_no: int, batch: Batch, attempts: dict[str, int] | None = None) -> None:
        """`attempts`: the first attempt of chunks asked for again (the Engine protocol)."""
        self.tasks.put((batch_no, batch, attempts or {}))

    def next_result(self, timeout: float) -> ChunksDone | WorkerFailed | None:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            if not all(p.is_alive() for p in self.processes):
                dead = next(p for p in self.processes if not p.is_alive())
                raise EngineError(
                    f"{dead.name} exited with code {dead.exitcode}",
                    "out of host memory? lower --batch-size or use fewer --devices",
                ) from None
            return None

    def close(self, *, now: bool = False) -> None:
        """Finish queued batches (or stop at once: cached chunks are safe, writes are atomic)."""
        if not now:
            for _ in self.processes:
                self.tasks.put(None)
            for process in self.processes:
                process.join(timeout=60)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self.tasks.cancel_join_thread()
        self.results.cancel_join_thread()
