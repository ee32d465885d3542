"""`narrate run`: manifest -> chunks -> batches -> engine workers -> books -> published files.

One process per device synthesizes batches (the model loads once per worker) and writes every
finished chunk straight into the chunk cache, which is the checkpoint. The main process plans
windows of books, feeds the workers (longest batches first, a bounded number in flight), and
hands each book whose chunks are all cached to a small thread pool that assembles, watermarks,
encodes and publishes it, so the accelerators never wait on post-processing.

Resuming needs no state beyond the cache and the published outputs: chunks found in the cache
are not synthesized again, and books whose file and record already carry their content hash are
skipped. SIGTERM/SIGINT stop feeding the workers, let finished books publish, and exit with
EXIT_INTERRUPTED; SIGKILL at any moment loses at most the batches in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from narrate.cache import ChunkCache
from narrate.config import ChunkingConfig, EngineConfig, PlanConfig, PostConfig, fingerprint
from narrate.database import STATUS, Database, StatusWriter, open_database, requested_books
from narrate.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EngineError,
    NarrateError,
    UsageError,
)
from narrate.plan import (
    PlannedBook,
    Shard,
    TextFetcher,
    chunk_books,
    plan_batches,
    shard_rows,
    unique_chunks,
    voice_lookup,
    windows,
)
from narrate.publish import LIFECYCLE_FIELDS, Publisher
from narrate.records import Batch, Book, RowError
from narrate.report import BookResult, EventLog, RunReport
from narrate.storage import open_storage


@dataclass(frozen=True)
class RunOptions:
    manifest: str | None = None
    requests: bool = False  # read the site's request queue instead of a manifest
    text_field: str = "narrative"
    out: str = "out"
    cache: str = ".narrate/cache"
    database: str | None = None  # None: a local status.json records the same fields
    path_template: str = "books/{book_id}"
    object_template: str | None = None  # None: "{book_id}.{ext}" locally, "narrations/..." on GCS
    url_style: str = "token"
    devices: str = "auto"
    compile: bool = False  # torch.compile + static cache on CUDA workers
    cpu_threads: int | None = None  # torch threads per CPU worker (default: cores / CPU workers)
    shard: Shard = field(default_factory=Shard)
    force: bool = False
    voices_dir: str = "voices"
    text_root: str | None = None  # local `text_uri` files are read inside this folder only
    engine: EngineConfig = field(default_factory=EngineConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    post: PostConfig = field(default_factory=PostConfig)
    post_workers: int = 2
    stop_grace_s: float = 10.0  # finishing books after SIGTERM; GKE spot gives pods ~15 s


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


# ----------------------------------------------------------------------------- worker process


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    chunk_id: str
    error: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class BatchDone:
    batch_no: int
    outcomes: tuple[ChunkOutcome, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    device: str
    message: str


def worker_main(
    device: str,
    cpu_threads: int,
    compile: bool,
    engine_config: EngineConfig,
    voices_dir: str,
    cache_uri: str,
    tasks: Any,
    results: Any,
) -> None:
    """Load the engine once, then synthesize batches until a None arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how a Ctrl-C ends
    parent = os.getppid()
    try:
        import torch

        from narrate.synth import load_engine
        from narrate.synth.voices import VoiceLibrary

        if device == "cpu":
            torch.set_num_threads(cpu_threads)  # two CPU workers must not each take every core
        engine = load_engine(
            engine_config, device=device, voices=VoiceLibrary(Path(voices_dir)), compile=compile
        )
        cache = ChunkCache(open_storage(cache_uri))
    except NarrateError as exc:
        results.put(WorkerFailed(device, str(exc)))
        return
    while (task := next_task(tasks, parent)) is not None:
        batch_no, batch = task
        started = time.monotonic()
        try:
            audios = engine.synthesize(batch)
        except NarrateError as exc:
            outcomes = tuple(ChunkOutcome(c.chunk_id, exc.message, 1) for c in batch.chunks)
        else:
            for audio in audios:
                if audio.ok:
                    cache.put(audio)
            outcomes = tuple(ChunkOutcome(a.chunk_id, a.error, a.attempts) for a in audios)
        results.put(BatchDone(batch_no, outcomes, time.monotonic() - started))
    engine.close()


def next_task(tasks: Any, parent: int, poll_s: float = 1.0) -> tuple[int, Batch] | None:
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

    def __init__(
        self,
        devices: list[str],
        options: RunOptions,
    ) -> None:
        context = mp.get_context("spawn")  # CUDA cannot be used in forked children
        self.tasks = context.Queue()
        self.results = context.Queue()
        cpu_workers = max(1, devices.count("cpu"))
        threads = options.cpu_threads or max(1, (os.cpu_count() or 1) // cpu_workers)
        engine, voices_dir, cache_uri = options.engine, options.voices_dir, options.cache
        self.processes = [
            context.Process(
                target=worker_main,
                args=(
                    device,
                    threads,
                    options.compile,
                    engine,
                    voices_dir,
                    cache_uri,
                    self.tasks,
                    self.results,
                ),
                name=f"narrate-worker-{device}",
                daemon=True,
            )
            for device in devices
        ]
        for process in self.processes:
            process.start()

    def submit(self, batch_no: int, batch: Batch) -> None:
        self.tasks.put((batch_no, batch))

    def next_result(self, timeout: float) -> BatchDone | WorkerFailed | None:
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


# ----------------------------------------------------------------------------- the run


@dataclass
class Outputs:
    """Where a run's results go: the chunk cache, the published files, the database records."""

    cache: ChunkCache
    publisher: Publisher
    status: StatusWriter
    db: Database


def status_file(out: str) -> Path:
    """The local status file used without --database: beside a local output, else .narrate/."""
    return (Path(".narrate") if out.startswith("gs://") else Path(out)) / "status.json"


def open_outputs(options: RunOptions, log: EventLog) -> Outputs:
    local_out = not options.out.startswith("gs://")
    if options.database is None and not local_out:
        log.event("warning", message=f"no --database: statuses go to {status_file(options.out)}")
    db = open_database(options.database, status_file=status_file(options.out))
    status = StatusWriter(db, path_template=options.path_template)
    template = options.object_template or (
        "{book_id}.{ext}" if local_out else "narrations/{book_id}.{ext}"
    )
    publisher = Publisher(
        open_storage(options.out), status, object_template=template, url_style=options.url_style
    )
    return Outputs(ChunkCache(open_storage(options.cache)), publisher, status, db)


def planned_windows(
    options: RunOptions, outputs: Outputs
) -> Iterator[list[PlannedBook | RowError]]:
    """This shard's rows in windows of books, chunked as every pod (and `narrate plan`) does."""
    rows: Iterable[Book | RowError]
    if options.requests:
        collection = options.path_template.split("/{book_id}")[0]
        rows = requested_books(outputs.db, path=collection, text_field=options.text_field)
    else:
        from narrate.manifest import ManifestReader

        if options.manifest is None:
            raise UsageError("no manifest given", "pass MANIFEST, or --requests for the queue")
        rows = ManifestReader(options.manifest, max_text_chars=options.chunking.max_text_chars)
    voices = voice_lookup(options.engine, options.voices_dir)
    texts = TextFetcher(options.text_root, options.chunking.max_text_chars)
    for window in windows(shard_rows(rows, options.shard), options.plan.window_books):
        yield list(
            chunk_books(
                window,
                chunking=options.chunking,
                engine_fingerprint=options.engine.fingerprint(),
                voices=voices,
                text_loader=texts,
            )
        )


@dataclass
class BookJob:
    planned: PlannedBook
    content_hash: str
    waiting: set[str]
    retries: int = 0
    error: str | None = None

    @property
    def book_id(self) -> str:
        return self.planned.book.book_id


def content_hash(planned: PlannedBook, post: PostConfig) -> str:
    """Everything that shapes a book's file: chunks (text, voice, engine), post settings, title."""
    chunk_ids = [c.chunk_id for c in planned.chunks]
    return fingerprint(planned.book.book_id, planned.book.title, chunk_ids, post)


class Run:
    def __init__(self, options: RunOptions, log: EventLog | None = None) -> None:
        self.options = options
        self.log = log or EventLog()
        self.report = RunReport()
        self.stop = threading.Event()
        self.jobs: dict[str, BookJob] = {}
        self.waiters: dict[str, list[str]] = {}  # chunk id -> ids of the books waiting for it
        self.queued: deque[Batch] = deque()
        self.inflight: dict[int, Batch] = {}
        self.posting: set[Future[BookResult]] = set()
        self.batch_counter = 0
        self.chunks_planned = 0  # to synthesize, over the windows planned so far (progress total)
        self.pool: WorkerPool | None = None
        self.post_pool = ThreadPoolExecutor(options.post_workers, thread_name_prefix="narrate-post")

    # --- setup -------------------------------------------------------------------------------

    @cached_property
    def devices(self) -> list[str]:
        return resolve_devices(self.options.devices)

    def _open(self) -> None:
        self.outputs = open_outputs(self.options, self.log)
        self.status = self.outputs.status
        self.publisher = self.outputs.publisher
        self.cache = self.outputs.cache
        self.watermarker = None
        if self.options.post.watermark:
            from narrate.post import Watermarker

            # before any synthesis: a run that cannot watermark must not spend GPU hours first.
            # On a GPU node it runs there too: on the CPU it would hold back the workers.
            device = next((d for d in self.devices if d.startswith("cuda")), "cpu")
            self.watermarker = Watermarker.load(self.options.post.watermark_model, device=device)
        else:
            self.log.event("warning", message="watermarking disabled (--no-watermark)")

    # --- main loop ---------------------------------------------------------------------------

    def execute(self) -> RunReport:
        self._open()
        window_iter: Iterator[list[PlannedBook | RowError]] | None = planned_windows(
            self.options, self.outputs
        )
        previous = self._install_signal_handlers()
        aborted = True
        try:
            while not self.stop.is_set():
                while window_iter is not None and not self.queued and not self.stop.is_set():
                    window = next(window_iter, None)
                    if window is None:
                        window_iter = None
                    else:
                        self._open_window(window)
                self._dispatch()
                if (
                    window_iter is None
                    and not self.queued
                    and not self.inflight
                    and not self.posting
                ):
                    break
                self._collect(timeout=0.1)
                self._reap_posted()
            aborted = False
        finally:
            self._shutdown(aborted)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.report

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, _frame: object) -> None:
            self.log.event("run_interrupted", signal=signal.Signals(signum).name)
            self.stop.set()

        return {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}

    def _open_window(self, window: list[PlannedBook | RowError]) -> None:
        books: list[PlannedBook] = []
        for item in window:
            if isinstance(item, RowError):
                self._reject(item)
            else:
                books.append(item)
        hashes = {b.book.book_id: content_hash(b, self.options.post) for b in books}
        fmt = self.options.post.format

        def is_published(book: PlannedBook) -> bool:
            book_id = book.book.book_id
            return not self.options.force and self.publisher.is_published(
                book_id, fmt, hashes[book_id]
            )

        with ThreadPoolExecutor(16) as lookups:  # object stats and record reads are network calls
            published = list(lookups.map(is_published, books))
            todo = [b for b, done in zip(books, published, strict=True) if not done]
            wanted = {c.chunk_id for b in todo for c in b.chunks}
            # chunks already queued or in flight for an earlier window are not looked up again
            known = wanted & self.waiters.keys()
            candidates = wanted - known
            missing = self.cache.missing(candidates, lookups.map)
        self.report.cache_hits += len(candidates) - len(missing)
        for book, done in zip(books, published, strict=True):
            if done:
                self.report.add(BookResult(book.book.book_id, "skipped", chunks=len(book.chunks)))
                self.log.event(
                    "book_skipped", book_id=book.book.book_id, reason="already published"
                )
        new_chunks = []
        pending = missing | known  # the chunks this window still waits for
        for book in todo:
            ids = {c.chunk_id for c in book.chunks}
            job = BookJob(book, hashes[book.book.book_id], ids & pending)
            self.jobs[job.book_id] = job
            for chunk in unique_chunks(book.chunks):  # a repeated chunk is waited for once
                if chunk.chunk_id in job.waiting:
                    if chunk.chunk_id not in self.waiters:
                        new_chunks.append(chunk)
                    self.waiters.setdefault(chunk.chunk_id, []).append(job.book_id)
            if job.waiting:
                self.status.processing(job.book_id)
            else:
                self._finish(job)
        batches = plan_batches(new_chunks, self.options.plan)
        self.queued.extend(batches)
        self.log.event(
            "window_planned",
            books=len(books),
            to_render=len(todo),
            batches=len(batches),
            chunks_to_synthesize=sum(len(b) for b in batches),
        )
        self.chunks_planned += sum(len(b) for b in batches)
        self.log.progress("chunks", 0, total=self.chunks_planned, unit=" chunks")

    def _reject(self, error: RowError) -> None:
        self.report.rejected_rows.append(str(error))
        self.log.event(
            "row_rejected",
            row=error.row,
            book_id=error.book_id,
            reason=error.reason,
            message=error.message,
        )
        if self.options.requests and error.book_id:
            self.status.failed(error.book_id, error.message)

    def _dispatch(self) -> None:
        if not self.queued or self.stop.is_set():
            return
        if (
            self.pool is None
        ):  # started on the first batch: a run with nothing to synthesize loads no model
            self.pool = WorkerPool(self.devices, self.options)
        while self.queued and len(self.inflight) < 2 * len(self.pool.processes):
            batch = self.queued.popleft()
            self.batch_counter += 1
            self.inflight[self.batch_counter] = batch
            self.report.useful_positions += batch.useful_positions
            self.report.computed_positions += batch.computed_positions
            self.pool.submit(self.batch_counter, batch)
            self.log.event("batch_started", batch=self.batch_counter, chunks=len(batch))

    def _collect(self, timeout: float) -> None:
        if self.pool is None or not self.inflight:
            time.sleep(timeout if self.posting else 0)
            return
        result = self.pool.next_result(timeout)
        if result is None:
            return
        if isinstance(result, WorkerFailed):
            raise EngineError(f"worker on {result.device} could not start: {result.message}")
        self.inflight.pop(result.batch_no)
        self.report.synth_seconds += result.seconds
        self.log.event(
            "batch_done",
            batch=result.batch_no,
            chunks=len(result.outcomes),
            seconds=round(result.seconds, 3),
        )
        for outcome in result.outcomes:
            if outcome.error:
                self.report.chunks_failed += 1
            else:
                self.report.chunks_synthesized += 1
            for book_id in self.waiters.pop(outcome.chunk_id, []):
                job = self.jobs[book_id]
                job.retries += outcome.attempts - 1
                if outcome.error and job.error is None:
                    index = next(
                        c.index for c in job.planned.chunks if c.chunk_id == outcome.chunk_id
                    )
                    job.error = f"chunk {index}: {outcome.error}"
                job.waiting.discard(outcome.chunk_id)
                if not job.waiting:
                    self._finish(job)
        self.log.progress("chunks", len(result.outcomes), unit=" chunks")

    def _finish(self, job: BookJob) -> None:
        """All of the book's chunks are settled: fail it, or hand it to post-processing."""
        if job.error:
            self._record(self._fail(job, job.error))
            return
        self.posting.add(self.post_pool.submit(self._render_and_publish, job))

    def _fail(self, job: BookJob, error: str) -> BookResult:
        self.status.failed(job.book_id, error)
        return BookResult(
            job.book_id, "failed", chunks=len(job.planned.chunks), retries=job.retries, error=error
        )

    def _render_and_publish(self, job: BookJob) -> BookResult:
        from narrate.post import render_book

        book = job.planned.book
        try:
            audios = [self.cache.get(c.chunk_id) for c in job.planned.chunks]
            encoded = render_book(
                book.book_id,
                job.planned.chunks,
                audios,
                self.options.post,
                self.watermarker,
                content_hash=job.content_hash,
                title=book.title,
            )
            metadata = {
                "model": self.options.engine.model
                if self.options.engine.engine == "csm"
                else "espeak-ng",
                "voice": book.voice or "",
            }
            url = self.publisher.publish(encoded, metadata)
        except NarrateError as exc:
            return self._fail(job, exc.message)
        return BookResult(
            book.book_id,
            "ready",
            duration_s=round(encoded.duration_s, 3),
            chunks=len(job.planned.chunks),
            retries=job.retries,
            url=url,
        )

    def _reap_posted(self) -> None:
        for future in [f for f in self.posting if f.done()]:
            self.posting.discard(future)
            self._record(future.result())

    def _record(self, result: BookResult) -> None:
        self.jobs.pop(result.book_id, None)
        self.report.add(result)
        self.log.event(f"book_{result.status}", **asdict(result))
        self.log.progress(
            "books",
            1,
            unit=" books",
            postfix={
                "audio_s": round(self.report.audio_seconds),
                "rtf": round(self.report.real_time_factor, 2),
            },
        )

    def _shutdown(self, aborted: bool) -> None:
        """Stop workers (at once when interrupted or failing), settle books, flush the database."""
        interrupted = self.stop.is_set()
        if self.pool is not None:
            self.pool.close(now=interrupted or aborted)
        # books already being assembled get a grace period: they are the work closest to done
        wait(self.posting, timeout=self.options.stop_grace_s if interrupted else None)
        self._reap_posted()
        self.post_pool.shutdown(wait=not interrupted, cancel_futures=True)
        unrecorded: list[str] = []
        try:  # a lost credential raises here; the run's totals are still logged
            unrecorded = self.status.close()
        finally:
            for book_id in unrecorded:
                result = self.report.books.get(book_id)
                if result is not None and result.status == "ready":
                    error = "database update failed after retries"
                    self.report.add(replace(result, status="failed", error=error))
            self.report.interrupted = interrupted
            self.report.wall_s = time.monotonic() - self.report.started
            self.log.close()
            self.log.event("run_finished", **self.report.totals())


def exit_code(report: RunReport) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.count("failed") or report.rejected_rows:
        return EXIT_SOME_FAILED
    return EXIT_OK


def run(options: RunOptions, log: EventLog | None = None) -> RunReport:
    return Run(options, log).execute()


@dataclass
class CatalogStatus:
    """Where a catalog stands, from the cache and the outputs alone (no model is loaded)."""

    done: int = 0
    cached: int = 0  # every chunk cached: only assembly and publishing are left
    partly_cached: int = 0
    pending: int = 0
    failed: int = 0
    rejected_rows: int = 0
    chunks: int = 0
    chunks_cached: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    def render(self) -> str:
        """What `narrate status` prints: one count per line."""
        counts = asdict(self).items()
        return "\n".join(f"{name.replace('_', ' '):<15}{value:,}" for name, value in counts)


def catalog_status(options: RunOptions) -> CatalogStatus:
    outputs = open_outputs(options, EventLog(tty=False))
    summary = CatalogStatus()
    fmt = options.post.format

    def book_state(book: PlannedBook, missing: set[str]) -> tuple[str, int, int]:
        book_id = book.book.book_id
        ids = {c.chunk_id for c in book.chunks}
        cached = len(ids - missing)
        if outputs.publisher.is_published(book_id, fmt, content_hash(book, options.post)):
            return "done", len(ids), cached
        record = outputs.status.record(book_id, LIFECYCLE_FIELDS) or {}
        if record.get(STATUS) == "failed":
            return "failed", len(ids), cached
        state = "cached" if cached == len(ids) else "partly_cached" if cached else "pending"
        return state, len(ids), cached

    with ThreadPoolExecutor(16) as lookups:
        for window in planned_windows(options, outputs):
            summary.rejected_rows += sum(isinstance(item, RowError) for item in window)
            books = [item for item in window if isinstance(item, PlannedBook)]
            wanted = {c.chunk_id for b in books for c in b.chunks}
            missing = outputs.cache.missing(wanted, lookups.map)
            states = lookups.map(book_state, books, [missing] * len(books))
            for state, chunks, cached in states:
                setattr(summary, state, getattr(summary, state) + 1)
                summary.chunks += chunks
                summary.chunks_cached += cached
    outputs.status.close()
    return summary
