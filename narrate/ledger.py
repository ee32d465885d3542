"""The chunk -> book ledger of a run: which books wait for which chunks.

Pure bookkeeping, no I/O: the run adds each book with the chunks it still waits for, and every
settled chunk (synthesized or failed) tells it which books have all their chunks settled.
A chunk shared by several books (identical text, voice and engine) is synthesized once and
settles all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from narrate.plan import PlannedBook
from narrate.records import Chunk, ChunkOutcome, unique_chunks


@dataclass
class BookJob:
    """A book being rendered: the chunks it still waits for, retries spent, its first error,
    and the quality check's scores of the chunks checked in this run."""

    planned: PlannedBook
    content_hash: str
    waiting: set[str]
    retries: int = 0
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # chunk id -> score
    chunks_retried: int = 0  # chunks that needed more than one take to pass (or never did)
    faults: dict[str, str] = field(default_factory=dict)  # chunk id -> its kept take's faults

    @property
    def book_id(self) -> str:
        return self.planned.book.book_id


class Ledger:
    def __init__(self) -> None:
        self._jobs: dict[str, BookJob] = {}
        self._waiters: dict[str, list[str]] = {}  # chunk id -> ids of the books waiting for it

    def awaited(self, chunk_ids: set[str]) -> set[str]:
        """Those of `chunk_ids` already queued or in flight for a book added earlier."""
        return chunk_ids & self._waiters.keys()

    def add_book(
        self, planned: PlannedBook, content_hash: str, pending: set[str]
    ) -> tuple[BookJob, list[Chunk]]:
        """Add a book that waits for those of its chunks in `pending` (not cached yet).

        Returns its job and the chunks nobody waited for before (the ones to synthesize).
        A job that waits for nothing is settled already and is not kept.
        """
        job = BookJob(planned, content_hash, {c.chunk_id for c in planned.chunks} & pending)
        new_chunks: list[Chunk] = []
        for chunk in unique_chunks(planned.chunks):  # a repeated chunk is waited for once
            if chunk.chunk_id in job.waiting:
                if chunk.chunk_id not in self._waiters:
                    new_chunks.append(chunk)
                self._waiters.setdefault(chunk.chunk_id, []).append(job.book_id)
        if job.waiting:
            self._jobs[job.book_id] = job
        return job, new_chunks

    def settle(self, outcome: ChunkOutcome) -> list[BookJob]:
        """Record one chunk's outcome; returns the books that now have every chunk settled
        (a book with a failed chunk carries its first error)."""
        finished = []
        for book_id in self._waiters.pop(outcome.chunk_id, []):
            job = self._jobs.get(book_id)
            if job is None:  # a book id listed twice, settled by the first listing
                continue
            job.retries += outcome.attempts - 1
            if outcome.score is not None:
                job.scores[outcome.chunk_id] = outcome.score
            if outcome.faults:
                job.faults[outcome.chunk_id] = outcome.faults
            job.chunks_retried += outcome.takes > 1
            if outcome.error and job.error is None:
                index = next(c.index for c in job.planned.chunks if c.chunk_id == outcome.chunk_id)
                job.error = f"chunk {index}: {outcome.error}"
            job.waiting.discard(outcome.chunk_id)
            if not job.waiting:
                del self._jobs[book_id]
                finished.append(job)
        return finished

    def __len__(self) -> int:
        """Books still waiting for a chunk."""
        return len(self._jobs)
