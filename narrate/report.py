"""What a run tells the operator: progress while it runs, a report when it ends.

On a terminal: tqdm bars. Otherwise (Kubernetes, cron): one JSON object per line on stderr, so
log collectors can index events without parsing prose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal, TextIO

from narrate.console import Console
from narrate.records import RowError

BookStatus = Literal["ready", "failed", "skipped"]


@dataclass(slots=True)
class BookResult:
    book_id: str
    status: BookStatus
    duration_s: float = 0.0
    chunks: int = 0
    retries: int = 0
    error: str | None = None
    url: str | None = None
    quality_score: float | None = None  # the worst chunk's (1.0: every chunk passed the check)
    chunks_retried: int = 0  # chunks the quality check sent back for another take
    chunk_scores: list[float | None] | None = None  # by chunk index; None: unchecked chunk
    hint: str | None = None  # what to do about a failure, where the error says
    quality_faults: list[str] | None = None  # "chunk N: what the check heard wrong (times)"

    @property
    def below_threshold(self) -> bool:
        """Marked: a chunk failed every take of the check and its best take was kept."""
        return self.quality_score is not None and self.quality_score < 1.0

    def event_fields(self) -> dict[str, object]:
        """What the log's book_* event carries: everything but the per-chunk scores."""
        fields = asdict(self)
        del fields["chunk_scores"]
        return fields


@dataclass
class RunReport:
    books: dict[str, BookResult] = field(default_factory=dict)
    rejected_rows: list[RowError] = field(default_factory=list)
    chunks_synthesized: int = 0
    chunks_failed: int = 0
    cache_hits: int = 0
    synth_seconds: float = 0.0  # worker time spent in engine calls, summed over workers
    useful_positions: int = 0
    computed_positions: int = 0
    started: float = field(default_factory=time.monotonic)
    wall_s: float = 0.0
    interrupted: bool = False
    error: str | None = None  # what stopped the run early
    hint: str | None = None  # what to do about it
    exit_code: int | None = None  # that error's exit code
    books_planned: int = 0  # valid rows planned, finished or not

    # audio of the ready books in microseconds, kept as books are added: the progress bar shows
    # it after every book, and summing all books each time made a 100k-book run quadratic. An
    # integer, so a book turned from ready to failed leaves exactly zero, not a float residue
    # that made the real-time factor 1e14
    _ready_audio_us: int = field(default=0, init=False, repr=False)

    def add(self, result: BookResult) -> None:
        """Record a book's result (a later result for the same book replaces the earlier)."""
        earlier = self.books.get(result.book_id)
        if earlier is not None and earlier.status == "ready":
            self._ready_audio_us -= round(earlier.duration_s * 1e6)
        if result.status == "ready":
            self._ready_audio_us += round(result.duration_s * 1e6)
        self.books[result.book_id] = result

    def count(self, status: BookStatus) -> int:
        return sum(1 for r in self.books.values() if r.status == status)

    @property
    def audio_seconds(self) -> float:
        return self._ready_audio_us / 1e6

    @property
    def padding_efficiency(self) -> float:
        return self.useful_positions / self.computed_positions if self.computed_positions else 1.0

    @property
    def real_time_factor(self) -> float:
        """Engine seconds per second of audio (lower is faster; below 1 beats real time)."""
        return self.synth_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def totals(self) -> dict[str, object]:
        return {
            "books": max(self.books_planned, len(self.books)),
            "ready": self.count("ready"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "below_quality_threshold": sum(r.below_threshold for r in self.books.values()),
            "rows_rejected": len(self.rejected_rows),
            "audio_seconds": round(self.audio_seconds, 2),
            "wall_seconds": round(self.wall_s, 2),
            # null where nothing was measured: no synthesis, no audio, no batch
            "real_time_factor": round(self.real_time_factor, 3)
            if self.synth_seconds and self.audio_seconds
            else None,
            "padding_efficiency": round(self.padding_efficiency, 4)
            if self.computed_positions
            else None,
            "chunks_synthesized": self.chunks_synthesized,
            "chunks_failed": self.chunks_failed,
            "cache_hits": self.cache_hits,
            "interrupted": self.interrupted,
            "error": self.error,
            "hint": self.hint,
        }

    def to_json(self) -> dict[str, object]:
        return {
            "totals": self.totals(),
            "books": [asdict(r) for r in self.books.values()],
            "rejected_rows": [error.to_json() for error in self.rejected_rows],
        }


class EventLog:
    """Progress for humans on a TTY (narrate.console), JSON lines for machines otherwise."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(self.stream)
        return self._console

    def event(self, name: str, **fields: object) -> None:
        if self.tty:
            self.console.event(name, fields)
            return
        record = {"ts": round(time.time(), 3), "event": name, **fields}
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()

    def progress(
        self,
        bar: str,
        advance: float,
        total: float | None = None,
        unit: str = "",
        postfix: dict[str, object] | None = None,
    ) -> None:
        """Advance the named bar (created on first use; only drawn on a TTY). Its unit is the
        console's (`unit` is kept for callers)."""
        if self.tty:
            self.console.progress(bar, advance, total, postfix)

    def close(self) -> None:
        if self._console is not None:
            self._console.close()


# Library loggers whose only records at a level below INFO are the ones an operator wants:
# google-api-core logs each storage retry ("Retrying due to ..., sleeping ...") at DEBUG.
_RETRY_LOGGERS = ("google.api_core.retry",)
# google-api-core cuts the "google" logger off from the root logger when it first sets up its
# own logging, unless that logger was configured before (a level set counts): so it is set here
_GOOGLE = "google"


class LogEvents(logging.Handler):
    """stdlib logging records (narrate's modules and the libraries under them: google-cloud-
    storage, google-auth, urllib3, firebase-admin) as `log` events of an EventLog, so stderr
    carries one stream: JSON lines off a terminal, with the record's level and logger kept.
    On a terminal only warnings and worse are printed, among the progress bars."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        if self.log.tty and record.levelno < logging.WARNING:
            return
        try:
            fields: dict[str, object] = {
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                fields["message"] = f"{fields['message']} ({type(error).__name__}: {error})"
                # the whole traceback, in one JSON string: the line stays one line
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            self.log.event("log", **fields)
        except Exception:
            self.handleError(record)


def route_logging(log: EventLog) -> Callable[[], None]:
    """Route every stdlib logging record (INFO and up; storage retries too) and every Python
    warning into `log`; returns what restores the previous set-up (a worker process never
    needs it: its logging is the run's for as long as it lives)."""
    root = logging.getLogger()
    handler = LogEvents(log)
    google = logging.getLogger(_GOOGLE)
    retry_loggers = [logging.getLogger(name) for name in _RETRY_LOGGERS]
    saved = (root.level, google.level, google.propagate, [r.level for r in retry_loggers])
    root.addHandler(handler)  # with a handler in place, logging's bare-text fallback is unused
    root.setLevel(logging.INFO)
    google.setLevel(logging.INFO)
    google.propagate = True
    for logger in retry_loggers:
        logger.setLevel(logging.DEBUG)
    logging.captureWarnings(True)

    def restore() -> None:
        root_level, google_level, google_propagates, retry_levels = saved
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(root_level)
        google.setLevel(google_level)
        google.propagate = google_propagates
        for logger, level in zip(retry_loggers, retry_levels, strict=True):
            logger.setLevel(level)

    return restore


@contextlib.contextmanager
def logging_to(log: EventLog) -> Iterator[None]:
    """`route_logging` for the duration of a block."""
    restore = route_logging(log)
    try:
        yield
    finally:
        restore()
