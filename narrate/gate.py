"""The quality gate of a run: every synthesized take is checked before it enters the cache.

The run hands each take a worker synthesized to `QualityGate.submit` and goes on at once: the
check runs in the processes of a `QualityPool` (never on an engine's thread), and a take that
passes is written to the cache there, in the same call. `ready` returns what the finished
checks decided: a chunk to synthesize again from its next attempt (a new seed), or a settled
chunk with its score. After the last take the best-scoring one is kept and cached (`strict`:
the chunk fails instead, and its book with it).

A stopping run lets the gate finish what it can in its grace, then `abandon` keeps every take
not settled apart from the cache, unchecked (ChunkCache.put_unchecked); the next run with the
check submits them here again (narrate.run) before it synthesizes their chunks: a stop loses no
take the engines finished.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from functools import cache

from narrate.cache import ChunkCache
from narrate.config import POST_NICE, SAMPLE_RATE
from narrate.errors import EngineError, NarrateError
from narrate.quality import QualityPool, Verdict, best_take, check
from narrate.records import Batch, Chunk, ChunkAudio, ChunkOutcome
from narrate.storage import open_storage


@cache
def _cache(uri: str) -> ChunkCache:  # one per checking process
    return ChunkCache(open_storage(uri))


def check_and_keep(
    take: ChunkAudio, text: str, cache_uri: str, take_number: int, kept_unchecked: bool = False
) -> Verdict:
    """Check a take (in a pool process); a take that passes goes into the cache right here.
    `kept_unchecked`: the take comes from a stopped run's unchecked ones, where it is
    dropped once heard (cached first; a failing one lives on in the gate)."""
    verdict = check(take.audio, SAMPLE_RATE, text)
    if verdict.passed:
        _cache(cache_uri).put(take, quality_score=verdict.score, takes=take_number)
    if kept_unchecked:
        _cache(cache_uri).drop_unchecked(take.chunk_id)
    return verdict


@dataclass(frozen=True, slots=True)
class Retry:
    """Synthesize this chunk again, from attempt `first_attempt` (its next seed)."""

    chunk: Chunk
    first_attempt: int
    reason: str  # why its last take failed the check


@dataclass(frozen=True, slots=True)
class Checked:
    """A chunk settled by the gate: its outcome for the ledger (`score` and `takes` filled in;
    an error when strict rejects it) and the verdict of the take that was kept."""

    outcome: ChunkOutcome
    verdict: Verdict | None  # None: the check itself failed


@dataclass
class _Chunk:
    chunk: Chunk
    takes: list[tuple[ChunkAudio, Verdict]] = field(default_factory=list)
    next_attempt: int = 0


class QualityGate:
    def __init__(self, cache_uri: str, *, takes: int, strict: bool, workers: int) -> None:
        self.cache_uri = cache_uri
        self.max_takes = max(1, takes)
        self.strict = strict
        self.pool = QualityPool(workers, nice=POST_NICE)
        self._chunks: dict[str, _Chunk] = {}  # chunks with a take being checked or to retry
        self._checking: dict[Future[Verdict], ChunkAudio] = {}

    def first_attempts(self, batch: Batch) -> dict[str, int]:
        """The attempt each retried chunk of `batch` starts from (the Engine protocol's
        `attempts`; chunks on their first take are left out: they start from 0)."""
        return {
            chunk.chunk_id: self._chunks[chunk.chunk_id].next_attempt
            for chunk in batch.chunks
            if chunk.chunk_id in self._chunks
        }

    def submit(self, chunk: Chunk, take: ChunkAudio, *, kept_unchecked: bool = False) -> None:
        """Queue a synthesized take for its check; returns at once. `kept_unchecked`: the take
        was kept unchecked by a stopped run (ChunkCache.take_unchecked)."""
        state = self._chunks.setdefault(take.chunk_id, _Chunk(chunk))
        state.next_attempt = max(state.next_attempt + 1, take.attempts)
        take_number = len(state.takes) + 1  # a chunk's takes are checked one after another
        future = self.pool.call(
            check_and_keep, take, chunk.text, self.cache_uri, take_number, kept_unchecked
        )
        self._checking[future] = take

    @property
    def checking(self) -> int:
        """Takes submitted and not decided yet."""
        return len(self._checking)

    def synthesis_failed(self, outcome: ChunkOutcome) -> Checked | None:
        """A retry's synthesis failed: settle on the best earlier take. None: no earlier take,
        the failure is the chunk's."""
        state = self._chunks.get(outcome.chunk_id)
        if state is None or not state.takes:
            return None
        return self._settle(state)

    def ready(self) -> list[Retry | Checked]:
        """What the checks finished since the last call decided."""
        decided: list[Retry | Checked] = []
        for future in [f for f in self._checking if f.done()]:
            take = self._checking.pop(future)
            state = self._chunks[take.chunk_id]
            try:
                verdict = future.result()
            except NarrateError:
                raise  # the cache's storage is unusable: the run stops
            except BrokenExecutor:  # every later check would fail too
                raise EngineError(
                    "a quality check process died",
                    "out of host memory? or run with --quality off",
                ) from None
            except Exception as exc:  # e.g. audio the aligner cannot take: this chunk fails
                del self._chunks[take.chunk_id]
                error = f"unexpected {type(exc).__name__} in the quality check: {exc}"
                decided.append(Checked(ChunkOutcome(take.chunk_id, error, take.attempts), None))
                continue
            state.takes.append((take, verdict))
            if verdict.passed or len(state.takes) >= self.max_takes:
                decided.append(self._settle(state))
            else:
                decided.append(Retry(state.chunk, state.next_attempt, verdict.reason))
        return decided

    def _settle(self, state: _Chunk) -> Checked:
        del self._chunks[state.chunk.chunk_id]
        take, verdict = state.takes[best_take([v for _, v in state.takes])]
        count = len(state.takes)
        error = None
        if not verdict.passed:
            if self.strict:
                error = f"failed the quality check in {count} takes ({verdict.reason})"
            else:  # the best of the failing takes is kept, and the book is marked
                _cache(self.cache_uri).put(take, quality_score=verdict.score, takes=count)
        spent = max(t.attempts for t, _ in state.takes)  # attempts, whichever take is kept
        faults = "" if verdict.passed else verdict.reason  # names words and spans, with times
        outcome = ChunkOutcome(take.chunk_id, error, spent, verdict.score, count, faults)
        return Checked(outcome, verdict)

    def abandon(self) -> tuple[list[Checked], int]:
        """The run stops: checks not started are called off, the ones running finish, and
        every chunk not settled keeps one take unchecked (ChunkCache.put_unchecked): the take
        nobody heard, else the best of those that failed (the next run hears it again, then
        retries from its next seed). Returns what the last checks settled, and how many takes
        were kept unchecked. The gate is closed after."""
        unheard = {}
        for future in [f for f in self._checking if f.cancel()]:
            take = self._checking.pop(future)
            unheard[take.chunk_id] = take
        self.pool.close()  # waits for the checks already running (a second or two at most)
        try:  # a failing take stays in _chunks
            settled = [d for d in self.ready() if isinstance(d, Checked)]
        except NarrateError:  # the checks broke: what nobody heard is still kept
            settled = []
        kept = 0
        for chunk_id, state in self._chunks.items():
            take = unheard.get(chunk_id)
            if take is None and state.takes:
                take = state.takes[best_take([v for _, v in state.takes])][0]
            if take is not None:
                _cache(self.cache_uri).put_unchecked(take)
                kept += 1
        self._chunks.clear()
        return settled, kept

    def __len__(self) -> int:
        """Chunks the gate has not settled yet (checking, or waiting for a retry)."""
        return len(self._chunks)

    def close(self) -> None:
        self.pool.close()
