"""`narrate run`: manifest -> chunks -> batches -> engine workers -> books -> published files.

One process per device synthesizes batches (narrate.workers). Each take goes to the quality
gate (narrate.gate: checks in CPU processes while the engines go on), which caches the good
ones, sends failing ones back for another take, and keeps the best take after the last; with
`--quality off` the workers write every finished chunk straight into the chunk cache, which is
the checkpoint. The main process plans windows of books,
feeds the workers (longest batches first, a bounded number in flight), keeps the chunk -> book
ledger (narrate.ledger), and hands each book whose chunks are all settled to the render
processes (narrate.rendering: assemble, master, encode; the watermark is added here, between
mastering and encoding), then to one upload pool, so the accelerators never wait on
post-processing.

Resuming needs no state beyond the cache and the published outputs: chunks found in the cache
are not synthesized again, and books whose file and record already carry their content hash are
skipped. SIGTERM/SIGINT stop the workers at once, give books in post-processing and takes
waiting for their quality check a few seconds (takes not heard by then are kept unchecked for
the next run: narrate.gate), put every book not finished back as its record was (`requested`
for the books the request queue gave; a published book never stopped showing its audio), flush
the status writer last and exit with EXIT_INTERRUPTED within 15 s; SIGKILL at any moment loses
at most the batches in flight, and the leases of the records it leaves carry a deadline that
expires.
An infrastructure error (InfrastructureError: credentials, permissions, a missing bucket or
database, a service down after retries) stops the run the same way, with exit 3.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from threadpoolctl import threadpool_limits

from narrate.config import POST_NICE, available_cores
from narrate.database import QUEUED, REQUESTED
from narrate.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    DatabaseError,
    EngineError,
    InfrastructureError,
    ModelError,
    NarrateError,
)
from narrate.gate import Checked, QualityGate, Retry
from narrate.ledger import BookJob, Ledger
from narrate.options import RunOptions
from narrate.plan import PlannedBook, plan_batches, plan_book_batches
from narrate.publish import content_hash, open_outputs
from narrate.records import (
    Batch,
    Chunk,
    ChunkAudio,
    ChunkOutcome,
    EncodedBook,
    RowError,
    unique_chunks,
)
from narrate.rendering import RenderPool
from narrate.report import BookResult, EventLog, RunReport
from narrate.settings import SETTINGS_KEY, model_name, narrator, settings_metadata
from narrate.sources import planned_windows
from narrate.storage import StoredObject
from narrate.synth.registry import engine_spec
from narrate.workers import (
    WorkerFailed,
    WorkerPool,
    WorkerSettings,
    default_post_workers,
    lower_thread_priority,
    resolve_devices,
    reuse_freed_memory,
)

# a terminal closing (SIGHUP) and Ctrl-\ (SIGQUIT) stop a run as cleanly as SIGTERM and Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOP_BUDGET_S = 13.0  # from the stop signal to the last status flush: Kubernetes kills at 30 s
QUALITY_FAULTS_CHARS = 1024  # the published object's qualityFaults metadata, at most


class DaemonPool:
    """Threads that never hold the process open (post-processing, uploads): a stopping run
    abandons the books they are rendering or uploading (they go back on the queue and render
    again from the cache) instead of waiting minutes for a long book, as it would for
    concurrent.futures threads, which the interpreter joins at exit."""

    def __init__(self, workers: int, name: str, *, nice: int = 0) -> None:
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._nice = nice
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, call: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, lambda: call(*args)))
        return future

    def shutdown(self) -> None:
        """Start nothing more; tasks already running are left to finish or be abandoned."""
        self._closed.set()

    def _work(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        while True:
            future, call = self._tasks.get()
            if self._closed.is_set():
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # handed to whoever reads the future
                    future.set_exception(exc)


Preflight = Callable[[RunOptions], list[NarrateError]]


class Run:
    def __init__(
        self,
        options: RunOptions,
        log: EventLog | None = None,
        preflight: Preflight | None = None,
    ) -> None:
        self.options = options
        self.preflight = preflight
        self.log = log or EventLog()
        self.report = RunReport()
        self.stop = threading.Event()
        self.ledger = Ledger()
        self.queued: deque[Batch] = deque()
        self.inflight: dict[int, Batch] = {}  # batches with a chunk not back from the workers
        self.chunks_in_flight = 0
        self.posting: set[Future[BookResult]] = set()
        # each book's stored object (or None) as the window's lookup found it: its upload
        # then needs no `stat` of its own
        self.seen: dict[str, StoredObject | None] = {}
        self.batch_counter = 0
        self.chunks_planned = 0  # to synthesize, over the windows planned so far (progress total)
        self.devices: list[str] | None = None  # resolved when first needed (it imports torch)
        self.pool: WorkerPool | None = None  # started on the first batch: see _dispatch
        self.stopped_at: float | None = None  # monotonic time of the stop signal or error
        self.failure: NarrateError | None = None  # the error that stopped the run
        self.gate: QualityGate | None = None  # started when first needed, unless --quality off
        self.unchecked: set[str] | None = None  # chunk ids with a take a stopped run kept
        self.rechecking: set[str] = set()  # chunks whose kept take the gate is hearing
        # first: a signal while the models load stops the run like one later (exit 75)
        self.previous_handlers = self._install_signal_handlers()
        try:
            self._start(options)
        except BaseException:
            self.restore_signal_handlers()
            raise

    def _start(self, options: RunOptions) -> None:
        """Open the outputs, load the watermarker, start the post-processing pools."""
        # what the run will load, checked first: every missing piece is reported at once
        problems = self.preflight(options) if self.preflight else []
        self.outputs = open_outputs(options, self.log)
        self.watermarker = None
        if options.outputs.post.watermark:
            from narrate.post import Watermarker

            # before any synthesis: a run that cannot watermark must not spend GPU hours first.
            # On a GPU node it runs there too: on the CPU it would hold back the workers.
            device = next((d for d in self._devices() if d.startswith("cuda")), "cpu")
            self.log.event("loading", what=f"the AudioSeal watermark model on {device}")
            try:
                model = options.outputs.post.watermark_model
                self.watermarker = Watermarker.load(model, device=device)
            except NarrateError as exc:
                problems.append(ModelError(f"watermark: {exc.message}", exc.hint))
        else:
            self.log.event("warning", message="watermarking disabled (--no-watermark)")
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ModelError(
                f"this run cannot start, {len(problems)} things are missing: "
                + "; ".join(p.message for p in problems),
                " | ".join(p.hint for p in problems if p.hint) or None,
            )
        post_workers = options.post_workers or default_post_workers(
            self._devices(), options.workers.cpu_threads
        )
        # BLAS threads would only spin beside the threads that feed the engines: the run's own
        # matrix products are small (render processes set the same limit for themselves)
        self.blas_limit = threadpool_limits(limits=1, user_api="blas")
        reuse_freed_memory()
        # post-processing can wait, the device cannot: where cores are short, the threads that
        # feed the engines (this process's main thread, the workers) run first. Books render in
        # processes, each driven by a thread here; two threads per process, so that a process
        # finishing a book finds the next one waiting (not a thread still handing its file to
        # the uploads), and has work while a book is being watermarked here
        self.renderers = RenderPool(post_workers, options.outputs.cache, nice=POST_NICE)
        self.post_pool = DaemonPool(2 * post_workers, "narrate-post", nice=POST_NICE)
        self.upload_pool = DaemonPool(options.upload_workers, "narrate-upload")
        self.upload_slots = threading.BoundedSemaphore(2 * options.upload_workers)
        self.quality_workers = options.quality_workers or default_quality_workers(self._devices())
        self.log.event(
            "run_started",
            devices=self._devices(),
            post_workers=post_workers,
            upload_workers=options.upload_workers,
            quality=options.quality,
            quality_workers=self.quality_workers if options.quality != "off" else 0,
        )

    def _devices(self) -> list[str]:
        if self.devices is None:
            self.devices = resolve_devices(self.options.workers.devices)
        return self.devices

    def execute(self) -> RunReport:
        window_iter: Iterator[list[PlannedBook | RowError]] | None = planned_windows(
            self.options, self.outputs.db
        )
        try:
            while not self.stop.is_set():
                self.outputs.status.check()  # a database the timer found unusable stops the run
                while window_iter is not None and not self.queued and not self.stop.is_set():
                    window = next(window_iter, None)
                    if window is None:
                        window_iter = None
                    else:
                        self._open_window(window)
                self._dispatch()
                if window_iter is None and not (
                    self.queued or self.inflight or self.posting or self.gate
                ):
                    break
                self._collect(timeout=0.1)
                self._take_checked()
                self._reap_posted()
        except NarrateError as exc:  # infrastructure, a dead worker: every book would fail
            self._stopped_by(exc)
            self.stopped_at = time.monotonic()
            self.log.event("run_stopped", error=exc.message, hint=exc.hint, exit=exc.exit_code)
        finally:
            self._shutdown()
            self.restore_signal_handlers()
        return self.report

    def restore_signal_handlers(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)

    def _stopped_by(self, exc: NarrateError) -> None:
        """Keep the first error that stops the run; it is logged once, as an `error` event like
        the CLI's for an error raised before the run started (off a terminal, stderr stays one
        stream of JSON events)."""
        if self.failure is None:
            self.failure = exc
            self.log.event("error", message=exc.message, hint=exc.hint, exit_code=exc.exit_code)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, _frame: object) -> None:
            self.log.event("run_interrupted", signal=signal.Signals(signum).name)
            self.stopped_at = self.stopped_at or time.monotonic()
            self.stop.set()

        return {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}

    def _open_window(self, window: list[PlannedBook | RowError]) -> None:
        books = [item for item in window if isinstance(item, PlannedBook)]
        self.report.books_planned += len(books)
        for item in window:
            if isinstance(item, RowError):
                self._reject(item)
        hashes = {b.book.book_id: content_hash(b, self.options.outputs.post) for b in books}
        fmt = self.options.outputs.post.format

        def is_published(book: PlannedBook) -> bool:
            if self.options.force:
                return False
            book_id = book.book.book_id
            stored, published = self.outputs.publisher.lookup(book_id, fmt, hashes[book_id])
            if not published:  # its upload will not need to look again
                self.seen[book_id] = stored
            return published

        won: dict[str, bool] = {}  # with --requests: whether this run's claim took the book
        with ThreadPoolExecutor(16) as lookups:  # object stats and record reads are network calls
            published = list(lookups.map(is_published, books))
            todo = [b for b, done in zip(books, published, strict=True) if not done]
            ids = [b.book.book_id for b in todo]
            if self.options.requests:  # another run reading the queue may have taken some
                won = dict(zip(ids, lookups.map(self.outputs.status.claim, ids), strict=True))
                todo = [b for b in todo if won[b.book.book_id]]
                priors = dict.fromkeys(ids, QUEUED)
            else:  # what a stop puts back, and whether the book's audio is live on the site
                priors = dict(zip(ids, lookups.map(self.outputs.status.prior, ids), strict=True))
            # chunks already queued or in flight for an earlier window are not looked up again
            known = self.ledger.awaited({c.chunk_id for b in todo for c in b.chunks})
            candidates = {c.chunk_id for b in todo for c in b.chunks} - known
            missing = self.outputs.cache.missing(candidates, lookups.map)
            kept = self._kept_takes(missing, lookups.map)
        self.report.cache_hits += len(candidates) - len(missing)
        for book, done in zip(books, published, strict=True):
            if done or not won.get(book.book.book_id, True):
                reason = "already published" if done else "taken by another run"
                self.seen.pop(book.book.book_id, None)
                self.report.add(BookResult(book.book.book_id, "skipped", chunks=len(book.chunks)))
                self.log.event("book_skipped", book_id=book.book.book_id, reason=reason)
        if todo:
            self.renderers.start()
        new_chunks = []  # per book, in window order: batches are sorted in groups of books
        for book in todo:
            job, chunks = self.ledger.add_book(book, hashes[book.book.book_id], missing | known)
            new_chunks.append(self._recheck(chunks, kept))
            # the lease: a stop puts the record back as it was, a crash lets the lease expire
            self.outputs.status.processing(job.book_id, priors[job.book_id])
            if not job.waiting:
                self._finish(job)
        batches = plan_book_batches(new_chunks, self.options.catalog.plan)
        self.queued.extend(batches)
        to_synthesize = sum(len(b) for b in batches)
        self.log.event(
            "window_planned",
            books=len(books),
            to_render=len(todo),
            batches=len(batches),
            chunks_to_synthesize=to_synthesize,
        )
        self.chunks_planned += to_synthesize
        self.log.progress("chunks", 0, total=self.chunks_planned, unit=" chunks")

    def _reject(self, error: RowError) -> None:
        self.report.rejected_rows.append(error)
        self.log.event(
            "row_rejected",
            row=error.row,
            book_id=error.book_id,
            reason=error.reason,
            message=error.message,
        )
        if self.options.requests and error.book_id:
            self.outputs.status.failed(error.book_id, error.message)

    def _dispatch(self) -> None:
        if not self.queued or self.stop.is_set():
            return
        if self.pool is None:  # a run with nothing to synthesize loads no model
            settings = WorkerSettings(
                self.options.catalog.engine,
                self.options.catalog.voices_dir,
                self.options.outputs.cache,
                self.options.workers.compile,
                self.options.workers.cpu_threads,
                check_takes=self._quality_gate() is not None,
            )
            engine = self.options.catalog.engine
            model = engine_spec(engine.engine).model_name(engine)
            self.log.event("loading", what=f"{model} on {', '.join(self._devices())}")
            self.pool = WorkerPool(self._devices(), settings)
        # two batches' chunks in flight per worker: the one its frame loop runs and the next,
        # whose rows take the slots as the first's free (a SIGKILL loses no more than that)
        limit = 2 * self.options.catalog.plan.batch_size * len(self.pool.processes)
        while self.queued and (
            not self.inflight or self.chunks_in_flight + len(self.queued[0]) <= limit
        ):
            batch = self.queued.popleft()
            self.batch_counter += 1
            self.inflight[self.batch_counter] = batch
            self.chunks_in_flight += len(batch)
            self.report.useful_positions += batch.useful_positions
            self.report.computed_positions += batch.computed_positions
            attempts = self.gate.first_attempts(batch) if self.gate else {}
            self.pool.submit(self.batch_counter, batch, attempts)
            self.log.event("batch_started", batch=self.batch_counter, chunks=len(batch))

    def _quality_gate(self) -> QualityGate | None:
        """The gate (started on first use), or None with --quality off."""
        if self.gate is None and self.options.quality != "off":
            self.gate = QualityGate(
                self.options.outputs.cache,
                takes=1 + self.options.quality_retries,
                strict=self.options.quality == "strict",
                workers=self.quality_workers,
            )
        return self.gate

    def _kept_takes(
        self, missing: set[str], map_: Callable[..., Iterator[Any]]
    ) -> dict[str, ChunkAudio]:
        """The takes a stopped run kept unchecked for chunks of `missing` (read in parallel
        by `map_`); none with --quality off, which would not hear them."""
        if self.options.quality == "off":
            return {}
        if self.unchecked is None:  # listed once: only a stop adds to them
            self.unchecked = self.outputs.cache.unchecked()
        ids = sorted(missing & self.unchecked)
        self.unchecked -= missing
        takes = map_(self.outputs.cache.take_unchecked, ids)
        return {i: take for i, take in zip(ids, takes, strict=True) if take is not None}

    def _recheck(self, chunks: list[Chunk], kept: dict[str, ChunkAudio]) -> list[Chunk]:
        """Hand the gate the kept takes of `chunks`; returns the chunks left to synthesize."""
        left = []
        for chunk in chunks:
            take = kept.get(chunk.chunk_id)
            gate = self._quality_gate() if take is not None else None
            if take is None or gate is None:
                left.append(chunk)
                continue
            gate.submit(chunk, take, kept_unchecked=True)
            self.rechecking.add(chunk.chunk_id)
        return left

    def _collect(self, timeout: float) -> None:
        if self.pool is None or not self.inflight:
            time.sleep(timeout if self.posting or self.gate else 0)
            return
        result = self.pool.next_result(timeout)
        if result is None:
            return
        if isinstance(result, WorkerFailed):
            message = f"worker on {result.device}: {result.message}"
            raise EngineError(message, result.hint)
        batch = self.inflight[result.batch_no]
        self.report.synth_seconds += result.seconds
        self.chunks_in_flight -= len(result.outcomes) + len(result.takes)
        if result.finished:
            del self.inflight[result.batch_no]
            self.chunks_in_flight -= len(batch) - len(unique_chunks(batch.chunks))  # duplicates
            self.log.event("batch_done", batch=result.batch_no, chunks=len(batch))
        if result.takes:
            assert self.gate is not None  # workers hand takes back only when there is a gate
            chunks = {c.chunk_id: c for c in batch.chunks}
            for take in result.takes:
                self.gate.submit(chunks[take.chunk_id], take)
        for outcome in result.outcomes:
            checked = self.gate.synthesis_failed(outcome) if self.gate and outcome.error else None
            self._settle(checked.outcome if checked else outcome)

    def _take_checked(self) -> None:
        """Settle the chunks whose checks decided, and queue the retries they asked for."""
        if self.gate is None:
            return
        retries = []
        for decided in self.gate.ready():
            if isinstance(decided, Retry):
                self.rechecking.discard(decided.chunk.chunk_id)  # now synthesized again
                retries.append(decided.chunk)
                self.log.event(
                    "chunk_retried",
                    chunk_id=decided.chunk.chunk_id,
                    attempt=decided.first_attempt,
                    reason=decided.reason,
                )
            else:
                self._settle(decided.outcome)
        if retries:  # before the rest: their books are waiting for them alone
            self.queued.extendleft(reversed(plan_batches(retries, self.options.catalog.plan)))

    def _settle(self, outcome: ChunkOutcome) -> None:
        self._count(outcome)
        for job in self.ledger.settle(outcome):
            self._finish(job)
        self.log.progress("chunks", 1, unit=" chunks")

    def _count(self, outcome: ChunkOutcome) -> None:
        if outcome.error:
            self.report.chunks_failed += 1
        elif outcome.chunk_id in self.rechecking:  # a stopped run's take, heard now
            self.report.cache_hits += 1
        else:
            self.report.chunks_synthesized += 1
        self.rechecking.discard(outcome.chunk_id)

    def _hear_checks(self) -> None:
        """While the run stops: takes that pass are cached (in the checking process), but no
        new book starts post-processing; a failing take waits in the gate for `_close_gate`."""
        if self.gate is not None:
            for decided in self.gate.ready():
                if isinstance(decided, Checked):
                    self._count(decided.outcome)

    def _close_gate(self) -> None:
        """A finished run's gate is empty. A stopped run's gate hears the checks running and
        keeps every chunk it has not settled as a take for the next run (unchecked)."""
        assert self.gate is not None
        if not len(self.gate):
            self.gate.close()
            return
        try:
            settled, kept = self.gate.abandon()
        except NarrateError as exc:  # the cache is unusable: those takes are lost
            self.gate.close()
            self.log.event("warning", message=f"takes not checked were lost: {exc.message}")
            return
        for checked in settled:  # cached; their books render on the next run
            self._count(checked.outcome)
        self.log.event("takes_kept_unchecked", takes=kept)

    def _finish(self, job: BookJob) -> None:
        """All of the book's chunks are settled: fail it, or hand it to post-processing."""
        if job.error:
            self._record(self._fail(job, job.error))
            return
        self.posting.add(self.post_pool.submit(self._render, job))

    def _fail(self, job: BookJob, error: str, hint: str | None = None) -> BookResult:
        self.seen.pop(job.book_id, None)
        self.outputs.status.failed(job.book_id, error)
        return BookResult(
            job.book_id,
            "failed",
            chunks=len(job.planned.chunks),
            retries=job.retries,
            error=error,
            hint=hint,
        )

    def _render(self, job: BookJob) -> BookResult | Future[BookResult]:
        """Assemble, watermark and encode (a render process, driven from a post-processing
        thread), then hand the file to the shared upload pool: round trips to storage overlap
        across books, and this thread goes on to the next book. Waits while
        2 x upload_workers files are already queued."""
        book = job.planned.book
        try:
            quality = self._chunk_quality(job)
            encoded = self.renderers.render(
                book.book_id,
                job.planned.chunks,
                replace(self.options.outputs.post, narrator=narrator(self.options, book.voice)),
                self.watermarker,
                content_hash=job.content_hash,
                title=book.title,
            )
        except InfrastructureError:
            raise  # not this book's fault: the run stops and the book goes back on the queue
        except NarrateError as exc:
            return self._fail(job, exc.message, exc.hint)
        self.upload_slots.acquire()  # bounds the encoded files held in memory
        return self.upload_pool.submit(self._publish, job, encoded, *quality)

    def _publish(
        self, job: BookJob, encoded: EncodedBook, scores: list[float | None], retried: int
    ) -> BookResult:
        book = job.planned.book
        metadata = {
            "model": model_name(self.options),
            "voice": book.voice or "",
            SETTINGS_KEY: settings_metadata(self.options),  # status names what differs
        }
        score = min((s for s in scores if s is not None), default=None)  # book_score
        if score is not None:
            metadata["qualityScore"] = f"{score:.4f}"
            metadata["qualityRetries"] = str(retried)
        faults = [
            f"chunk {chunk.index}: {job.faults[chunk.chunk_id]}"
            for chunk in job.planned.chunks
            if chunk.chunk_id in job.faults
        ]
        if faults:  # object metadata values are small: the first faults, cut at a bound
            metadata["qualityFaults"] = "; ".join(faults)[:QUALITY_FAULTS_CHARS]
        seen = {book.book_id: self.seen.pop(book.book_id)} if book.book_id in self.seen else None
        try:
            url = self.outputs.publisher.publish(encoded, metadata, seen)
        except InfrastructureError:
            raise
        except NarrateError as exc:
            return self._fail(job, exc.message, exc.hint)
        finally:
            self.upload_slots.release()
        return BookResult(
            book.book_id,
            "ready",
            duration_s=round(encoded.duration_s, 3),
            chunks=len(job.planned.chunks),
            retries=job.retries,
            url=url,
            quality_score=None if score is None else round(score, 4),
            chunks_retried=retried,
            chunk_scores=None if score is None else [_rounded(s) for s in scores],
            quality_faults=faults or None,
        )

    def _chunk_quality(self, job: BookJob) -> tuple[list[float | None], int]:
        """Each chunk's score, and how many of the book's chunks needed more than one take:
        as checked in this run, else as stored with the cached chunk by the run that checked
        it (None and one take: cached by a run with --quality off)."""
        if self.options.quality == "off":
            return [None] * len(job.planned.chunks), 0
        scores, retried = [], job.chunks_retried
        for chunk in job.planned.chunks:
            if chunk.chunk_id in job.scores:
                scores.append(job.scores[chunk.chunk_id])
            else:
                score, takes = self.outputs.cache.quality(chunk.chunk_id)
                scores.append(score)
                retried += takes > 1
        return scores, retried

    def _reap_posted(self) -> None:
        for future in [f for f in self.posting if f.done()]:
            self.posting.discard(future)
            if future.cancelled():
                continue
            result = future.result()  # an InfrastructureError raised here stops the run
            if isinstance(result, Future):  # rendered: now uploading
                self.posting.add(result)
            else:
                self._record(result)

    def _record(self, result: BookResult) -> None:
        self.report.add(result)
        self.log.event(f"book_{result.status}", **result.event_fields())
        postfix = {
            "audio_s": round(self.report.audio_seconds),
            "rtf": round(self.report.real_time_factor, 2),
        }
        self.log.progress("books", 1, unit=" books", postfix=postfix)

    def _shutdown(self) -> None:
        """Stop workers, settle books, flush the database last. A stopped run (signal or
        error) ends within STOP_BUDGET_S of the stop: the workers are stopped at once, books in
        post-processing get `stop_grace_s`, and whatever is not finished goes back on the queue."""
        status = self.outputs.status
        stopped_at = self.stopped_at
        if self.pool is not None:
            self.pool.close(now=stopped_at is not None)
        # books being assembled or uploaded are the work closest to done, then takes waiting
        # for their check: a stopped run gives them `stop_grace_s`, then abandons the books
        # and keeps the takes not heard unchecked
        deadline = None if stopped_at is None else stopped_at + self.options.stop_grace_s
        while self.posting or (self.gate is not None and self.gate.checking):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if self.gate is not None and self.gate.checking:  # checks end between books
                left = 0.1 if left is None else min(left, 0.1)
            if self.posting:
                wait(self.posting, timeout=left, return_when=FIRST_COMPLETED)
            else:
                time.sleep(left or 0.1)
            try:
                self._hear_checks()
                self._reap_posted()
            except NarrateError as exc:  # a book met an unusable store while the run stopped
                self._stopped_by(exc)
                break
        if self.gate is not None:
            self._close_gate()
        self.post_pool.shutdown()
        self.renderers.close()
        self.upload_pool.shutdown()
        unrecorded: list[str] = []
        try:
            budget = None
            if stopped_at is not None:
                for book_id in status.held():  # abandoned: its record is put back as it was
                    restored = status.release(book_id)
                    event = "book_requeued" if restored == REQUESTED else "book_released"
                    self.log.event(event, book_id=book_id, status=restored)
                budget = max(0.0, stopped_at + STOP_BUDGET_S - time.monotonic())
            unrecorded = status.close(budget)
        except DatabaseError as exc:  # unusable: the leases it holds expire instead
            self._stopped_by(exc)
            unrecorded = status.unrecorded()
        for book_id in unrecorded:
            result = self.report.books.get(book_id)
            if result is not None and result.status == "ready":
                error = "database update failed after retries"
                self.report.add(replace(result, status="failed", error=error))
        self.report.interrupted = self.stop.is_set()
        if self.failure is not None:
            self.report.error, self.report.hint = self.failure.message, self.failure.hint
            self.report.exit_code = self.failure.exit_code
        self.report.wall_s = time.monotonic() - self.report.started
        self.blas_limit.restore_original_limits()
        self.log.close()
        self.log.event("run_finished", **self.report.totals())


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


def default_quality_workers(devices: list[str]) -> int:
    """Checking processes: two per device (a check runs at ~60x real time per core, far
    ahead of any engine), within half of the cores."""
    return max(1, min(2 * len(devices), available_cores() // 2))


def exit_code(report: RunReport) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.exit_code is not None:  # an error stopped the run
        return report.exit_code
    if report.count("failed") or report.rejected_rows:
        return EXIT_SOME_FAILED
    return EXIT_OK


def run(
    options: RunOptions, log: EventLog | None = None, preflight: Preflight | None = None
) -> RunReport:
    """Run the catalog; `preflight` (narrate.doctor.preflight from the CLI) checks what the
    run will load before it loads anything."""
    log = log or EventLog()
    try:
        runner = Run(options, log, preflight)
    except NarrateError as exc:
        return failed_start(exc, log)
    return runner.execute()


def failed_start(exc: NarrateError, log: EventLog) -> RunReport:
    """A run that could not start (a model, credentials, an unwritable --out) leaves the same
    trace as any other: run_started, the error, run_stopped and run_finished with its totals."""
    report = RunReport(error=exc.message, hint=exc.hint, exit_code=exc.exit_code)
    log.event("run_started", devices=None)
    log.event("error", message=exc.message, hint=exc.hint, exit_code=exc.exit_code)
    log.event("run_stopped", error=exc.message, hint=exc.hint, exit=exc.exit_code)
    report.wall_s = time.monotonic() - report.started
    log.close()
    log.event("run_finished", **report.totals())
    return report
