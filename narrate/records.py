"""Dataclasses the stages hand each other (ARCHITECTURE.md: "Contracts between stages")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    import numpy as np

Pause = Literal["none", "sentence", "paragraph"]
StopReason = Literal["eos", "cap", "failed"]
T = TypeVar("T")


def pickled_by_fields(cls: type[T]) -> type[T]:
    """Pickle as (class, field values): 2-3x cheaper than the __getstate__ of slots dataclasses
    (`narrate plan` ships every manifest row to a worker process)."""
    values = attrgetter(*(f.name for f in fields(cls)))  # type: ignore[arg-type]
    cls.__reduce__ = lambda self: (cls, values(self))  # type: ignore[method-assign]
    return cls


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Book:
    """One valid manifest row. `row` is the 1-based line (JSONL) or row (Parquet) number."""

    book_id: str
    row: int
    text: str | None = None
    text_uri: str | None = None
    title: str | None = None
    speaker: int = 0
    voice: str | None = None
    language: str = "en"
    priority: int = 0


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class RowError:
    """One rejected manifest row: `reason` is a short category, `message` the detail."""

    row: int
    reason: str
    message: str
    book_id: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" + (f" ({self.book_id})" if self.book_id else "")
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, object]:
        """As plan --json and the run report list it."""
        return {
            "row": self.row,
            "book_id": self.book_id,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one book's text that CSM speaks in one generation.

    `chunk_id` hashes text, speaker, voice and engine settings, not the book: identical
    chunks of different books share one id and are synthesized once.
    """

    chunk_id: str
    book_id: str
    index: int
    text: str
    speaker: int = 0
    voice: str | None = None
    pause_before: Pause = "none"
    text_tokens: int = 0
    max_frames: int = 0
    prompt_positions: int = 0

    @property
    def positions(self) -> int:
        """Window positions this chunk may occupy: prompt + text + its frame cap."""
        return self.prompt_positions + self.text_tokens + self.max_frames


def unique_chunks(chunks: Iterable[Chunk]) -> list[Chunk]:
    """First occurrence of each chunk id: identical chunks across books are synthesized once."""
    seen: set[str] = set()
    out = []
    for chunk in chunks:
        if chunk.chunk_id not in seen:
            seen.add(chunk.chunk_id)
            out.append(chunk)
    return out


@dataclass(frozen=True, slots=True)
class Batch:
    """Chunks generated together; rows are padded to the longest one."""

    chunks: tuple[Chunk, ...]

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def useful_positions(self) -> int:
        return sum(c.positions for c in self.chunks)

    @property
    def computed_positions(self) -> int:
        return len(self.chunks) * max((c.positions for c in self.chunks), default=0)


@dataclass(slots=True)
class ChunkAudio:
    """What an engine returns for one chunk: mono float32 audio at 24 kHz and how it went."""

    chunk_id: str
    audio: np.ndarray
    frames: int
    stop_reason: StopReason
    seed: int
    attempts: int = 1
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """How one chunk's synthesis ended, as a worker (or the quality gate) reports it (its audio
    is in the cache)."""

    chunk_id: str
    error: str | None
    attempts: int
    score: float | None = None  # the quality check's score of the kept take; None: unchecked
    takes: int = 1  # takes the quality check heard (more than 1: the chunk needed retries)
    faults: str = ""  # the kept take failed the check: what it heard wrong, times in the chunk


@dataclass(slots=True)
class BookAudio:
    """A whole book's assembled audio (mono float32 at `sample_rate`)."""

    book_id: str
    audio: np.ndarray
    sample_rate: int
    watermark_payload: int | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True, slots=True)
class EncodedBook:
    """A finished, encoded book file, ready to publish.

    `content_hash` covers everything that shapes the file (chunk ids, post settings, payload):
    publishing skips a book whose stored object already carries the same hash.
    """

    book_id: str
    data: bytes
    format: str  # "wav" | "flac" | "mp3" | "opus"
    content_type: str
    duration_s: float
    content_hash: str
    watermark_payload: int | None = None

    @property
    def file_name(self) -> str:
        return f"{self.book_id}.{self.format}"
