"""Batch planning: chunks of many books sorted by length and grouped into batches.

Rows of a batch are padded to its longest row (CSM generates every row to the batch's largest
frame cap), so grouping chunks of similar length is what keeps accelerators busy. A catalog is
planned in windows of books, and a run sorts each window in groups of consecutive books just
large enough to keep padding efficiency >= 0.95 (`plan_book_batches`), so books finish and
publish throughout the run and memory stays bounded on a 1M-row manifest.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from narrate.config import FRAME_RATE, ChunkingConfig, EngineConfig, PlanConfig
from narrate.errors import UsageError
from narrate.records import Batch, Book, Chunk, RowError, unique_chunks

if TYPE_CHECKING:  # narrate.text loads the C++ core; `plan --help` need not
    from narrate.text import BookMeasure

# voice name -> (voice key for chunk ids, prompt positions); raises UsageError for unknown voices
VoiceLookup = Callable[[str | None], tuple[str, int]]
T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

LISTED_BOOKS = 1000  # books listed by id in a plan's counts of forms left as written
TextLoader = Callable[[Book], str]


@dataclass(frozen=True, slots=True)
class PlannedBook:
    """A valid book and its chunks, in reading order."""

    book: Book
    chunks: tuple[Chunk, ...]

    @property
    def characters(self) -> int:
        return sum(len(c.text) for c in self.chunks)


def no_voices(voice: str | None) -> tuple[str, int]:
    """Voice lookup for plans without a voice library: every voice is its own name, no prompt."""
    return (voice or "", 0)


def inline_text(book: Book) -> str:
    """The default text loader: the manifest's own text (a `text_uri` needs a loader that reads,
    e.g. narrate.sources.TextFetcher)."""
    if book.text is None:
        raise UsageError(f"no text loader for text_uri {book.text_uri!r}")
    return book.text


@dataclass(frozen=True, slots=True)
class BookText:
    """A valid book with its narrative loaded and its voice resolved: ready to chunk."""

    book: Book
    text: str
    voice_key: str
    prompt_positions: int

    def empty_error(self) -> RowError:
        return RowError(
            self.book.row, "empty_text", "text: nothing to speak", self.book.book_id, "text"
        )

    def too_long_error(self, error: Exception) -> RowError:
        """The text as spoken is over the limit (narrate.spoken.SpokenTooLong)."""
        return RowError(self.book.row, "text_too_long", str(error), self.book.book_id, "text")


def book_texts(
    items: Iterable[Book | RowError],
    *,
    chunking: ChunkingConfig,
    voices: VoiceLookup = no_voices,
    text_loader: TextLoader = inline_text,
) -> Iterator[BookText | RowError]:
    """Each valid book's text and voice; a book whose text or voice cannot be resolved, or whose
    text (behind `text_uri`) is over the limit, becomes a RowError. Without a `text_loader`,
    only inline texts are read (narrate.sources.TextFetcher reads `text_uri`)."""
    from narrate.errors import NarrateError
    from narrate.language import language_error

    for item in items:
        if isinstance(item, RowError):
            yield item
            continue
        try:
            voice_key, prompt_positions = voices(item.voice)
        except NarrateError as exc:
            yield RowError(item.row, "bad_voice", f"voice: {exc}", item.book_id, "voice")
            continue
        try:
            text = text_loader(item)
        except (NarrateError, OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, OSError) and exc.strerror:
                message = f"text_uri: {item.text_uri!r}: {exc.strerror}"
            else:
                message = f"text_uri: {exc}"
            yield RowError(item.row, "bad_text_uri", message, item.book_id, "text_uri")
            continue
        if len(text) > chunking.max_text_chars:
            yield RowError(
                item.row,
                "text_too_long",
                f"text_uri: more than {chunking.max_text_chars:,} characters (the limit)",
                item.book_id,
                "text_uri",
            )
            continue
        if chunking.check_language and (error := language_error(item, text)):
            yield error
            continue
        yield BookText(item, text, voice_key, prompt_positions)


def chunk_books(
    items: Iterable[Book | RowError],
    *,
    chunking: ChunkingConfig,
    engine_fingerprint: str,
    voices: VoiceLookup = no_voices,
    text_loader: TextLoader = inline_text,
    count_tokens: Callable[[str], int] | None = None,
) -> Iterator[PlannedBook | RowError]:
    """Chunk each valid book; a book whose text or voice cannot be resolved becomes a RowError."""
    from narrate.spoken import SpokenTooLong
    from narrate.text import chunk_book

    for item in book_texts(items, chunking=chunking, voices=voices, text_loader=text_loader):
        if isinstance(item, RowError):
            yield item
            continue
        try:
            chunks = chunk_book(
                item.book.book_id,
                item.text,
                config=chunking,
                engine_fingerprint=engine_fingerprint,
                speaker=item.book.speaker,
                voice=item.book.voice,
                voice_key=item.voice_key,
                prompt_positions=item.prompt_positions,
                count_tokens=count_tokens,
            )
        except SpokenTooLong as exc:
            yield item.too_long_error(exc)
            continue
        yield PlannedBook(item.book, tuple(chunks)) if chunks else item.empty_error()


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size` books (row errors ride along without counting)."""
    window: list[T] = []
    books = 0
    for item in items:
        window.append(item)
        if not isinstance(item, RowError):
            books += 1
            if books == size:
                yield window
                window, books = [], 0
    if window:
        yield window


def plan_batches(chunks: Iterable[Chunk], config: PlanConfig, *, sort: bool = True) -> list[Batch]:
    """Group chunks into batches under `batch_size` rows and `max_batch_positions`.

    Sorted longest first (ties by id, so every pod plans the same batches): long batches start
    while the queue is full, and short ones fill in at the end. `sort=False` keeps input order
    (only to measure what sorting buys).
    """
    ordered = unique_chunks(chunks)
    if sort:
        ordered.sort(key=lambda c: (-c.positions, c.chunk_id))
    lengths = batch_lengths([c.positions for c in ordered], config, descending=sort)
    bounds = [0, *itertools.accumulate(lengths)]
    return [Batch(tuple(ordered[start:end])) for start, end in itertools.pairwise(bounds)]


MIN_GROUP_BATCHES = 4  # a sort group holds at least this many full batches of chunks
MIN_GROUP_EFFICIENCY = 0.95


def plan_book_batches(books: Sequence[Sequence[Chunk]], config: PlanConfig) -> list[Batch]:
    """Batches for consecutive books (each its chunks still to synthesize), sorted in groups
    of books (`book_groups`) rather than across the whole window, so the first books finish
    after the first group's batches instead of at the window's end."""
    batches: list[Batch] = []
    positions = [[c.positions for c in chunks] for chunks in books]
    for start, end in book_groups(positions, config):
        batches += plan_batches([c for chunks in books[start:end] for c in chunks], config)
    return batches


def book_groups(
    books: Sequence[Sequence[int]], config: PlanConfig, min_efficiency: float = MIN_GROUP_EFFICIENCY
) -> list[tuple[int, int]]:
    """Ranges of consecutive books (by the positions of their distinct chunks) sorted together.

    A group closes once its own plan keeps `min_efficiency` of padding efficiency (tried when
    it holds MIN_GROUP_BATCHES batches' worth of chunks, then each time it doubles); a last
    group that cannot is joined to the one before it. `narrate plan` and a run group alike.
    """
    groups: list[tuple[int, int]] = []
    start, group = 0, []
    next_try = MIN_GROUP_BATCHES * config.batch_size
    for end, positions in enumerate(books, 1):
        group.extend(positions)
        if len(group) < next_try:
            continue
        if sorted_efficiency(group, config) >= min_efficiency:
            groups.append((start, end))
            start, group = end, []
            next_try = MIN_GROUP_BATCHES * config.batch_size
        else:
            next_try = 2 * len(group)
    if start < len(books):
        if groups and sorted_efficiency(group, config) < min_efficiency:
            start = groups.pop()[0]
        groups.append((start, len(books)))
    return groups


def sorted_efficiency(positions: Sequence[int], config: PlanConfig) -> float:
    """Padding efficiency of these chunk positions sorted longest first and batched."""
    ordered = sorted(positions, reverse=True)
    computed, i = 0, 0
    for size in batch_lengths(ordered, config, descending=True):
        computed += ordered[i] * size
        i += size
    return sum(ordered) / computed if computed else 1.0


def batch_lengths(
    positions: Sequence[int], config: PlanConfig, *, descending: bool = False
) -> list[int]:
    """Rows of each batch, filled greedily in order: a batch closes at `batch_size` rows or
    when its rows x its widest row would pass `max_batch_positions` (always at least one row).

    `descending`: positions are sorted longest first, so a batch's first row is its widest
    and its size is known at once (a plan of 10^7 chunks loops per batch, not per chunk).
    """
    lengths: list[int] = []
    i, n = 0, len(positions)
    while i < n:
        widest, size = positions[i], 1
        most = min(config.batch_size, n - i)
        if descending:
            size = max(1, min(most, config.max_batch_positions // widest))
        else:
            while size < most:
                wider = max(widest, positions[i + size])
                if (size + 1) * wider > config.max_batch_positions:
                    break
                widest, size = wider, size + 1
        lengths.append(size)
        i += size
    return lengths


def padding_efficiency(batches: Sequence[Batch]) -> float:
    """Useful / computed positions: 1.0 means no padding at all."""
    computed = sum(b.computed_positions for b in batches)
    return sum(b.useful_positions for b in batches) / computed if computed else 1.0


@dataclass
class PlanSummary:
    """What `narrate plan` reports: counts, and every rejected row (in row order)."""

    books: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_rows: list[RowError] = field(default_factory=list)
    chunks: int = 0
    unique_chunks: int = 0
    characters: int = 0
    expected_frames: float = 0.0
    batches: int = 0
    useful_positions: int = 0
    computed_positions: int = 0
    # forms the spoken step left as written, their reading not certain (narrate spoken
    # --explain shows them): in all, in how many books, and per book for the first books
    left_as_written: int = 0
    books_left_as_written: int = 0
    left_as_written_by_book: dict[str, int] = field(default_factory=dict)

    def add_error(self, error: RowError) -> None:
        self.rejected[error.reason] += 1
        self.rejected_rows.append(error)

    def add_left_as_written(self, book_id: str, forms: int) -> None:
        self.left_as_written += forms
        self.books_left_as_written += 1
        if len(self.left_as_written_by_book) < LISTED_BOOKS:
            self.left_as_written_by_book[book_id] = forms

    def add_books(
        self,
        books: Sequence[BookMeasure],
        chunking: ChunkingConfig,
        plan: PlanConfig,
    ) -> None:
        """Count one window's books and the batches its distinct chunks make (as a run would:
        identical chunks once, in `book_groups`, each longest first, `batch_lengths`)."""
        import numpy as np

        self.books += len(books)
        self.chunks += sum(b.chunks for b in books)
        chars = sum(b.characters for b in books)
        self.characters += chars
        self.expected_frames += chunking.expected_frames(chars)
        positions = np.frombuffer(b"".join(b.positions for b in books), dtype=np.int32)
        hashes = np.frombuffer(b"".join(b.text_hashes for b in books), dtype=np.uint64)
        _, first = np.unique(hashes, return_index=True)
        is_first = np.zeros(len(positions), dtype=bool)
        is_first[first] = True  # a chunk is synthesized for the first book that has it
        ends = np.cumsum([b.chunks for b in books])[:-1]
        per_book = [
            p[f].tolist()
            for p, f in zip(np.split(positions, ends), np.split(is_first, ends), strict=True)
        ]
        for start, end in book_groups(per_book, plan):  # sorted in groups, as a run does
            group = [p for book in per_book[start:end] for p in book]
            distinct = np.sort(np.asarray(group, dtype=np.int64))[::-1]
            self.unique_chunks += len(distinct)
            lengths = batch_lengths(distinct.tolist(), plan, descending=True)
            self.batches += len(lengths)
            sizes = np.asarray(lengths, dtype=np.int64)
            widest = distinct[np.cumsum(sizes) - sizes]  # each batch's first row
            self.useful_positions += int(distinct.sum())
            self.computed_positions += int((widest * sizes).sum())

    def merge(self, other: PlanSummary) -> None:
        """Add another part of the catalog (summaries of consecutive windows, in order)."""
        self.rejected.update(other.rejected)
        self.rejected_rows.extend(other.rejected_rows)
        for book_id, forms in other.left_as_written_by_book.items():
            if len(self.left_as_written_by_book) < LISTED_BOOKS:
                self.left_as_written_by_book[book_id] = forms
        self.left_as_written += other.left_as_written
        self.books_left_as_written += other.books_left_as_written
        for name in ("books", "chunks", "unique_chunks", "characters", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.expected_frames += other.expected_frames
        self.useful_positions += other.useful_positions
        self.computed_positions += other.computed_positions

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def audio_hours(self) -> float:
        return self.expected_frames / FRAME_RATE / 3600

    @property
    def padding_efficiency(self) -> float:
        return self.useful_positions / self.computed_positions if self.computed_positions else 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "books": self.books,
            "rows_rejected": self.rows_rejected,
            "rejected_by_reason": dict(self.rejected.most_common()),
            "rejected_rows": [error.to_json() for error in self.rejected_rows],
            "chunks": self.chunks,
            "unique_chunks": self.unique_chunks,
            "characters": self.characters,
            "estimated_audio_hours": round(self.audio_hours, 3),
            "batches": self.batches,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "forms_left_as_written": self.left_as_written,
            "books_with_forms_left_as_written": self.books_left_as_written,
            "forms_left_as_written_by_book": self.left_as_written_by_book,
        }


@dataclass(frozen=True)
class Planner:
    """Turns windows of manifest rows into plan summaries; picklable, so planning can fan
    windows out to processes (voices are looked up inside the process)."""

    engine: EngineConfig
    chunking: ChunkingConfig
    plan: PlanConfig
    voices: VoiceLookup = no_voices  # picklable (see narrate.sources.LibraryVoices)
    text_loader: TextLoader = inline_text  # a module-level function

    def summary(self, rows: Iterable[Book | RowError]) -> PlanSummary:
        """One window, measured: the chunks a run would make, counted in C++ (`measure_book`)."""
        from narrate.spoken import SpokenTooLong
        from narrate.text import measure_book

        summary = PlanSummary()
        measured: list[BookMeasure] = []
        engine_fingerprint = self.engine.fingerprint()
        for item in book_texts(
            rows, chunking=self.chunking, voices=self.voices, text_loader=self.text_loader
        ):
            if isinstance(item, RowError):
                summary.add_error(item)
                continue
            try:
                measure = measure_book(
                    item.text,
                    config=self.chunking,
                    engine_fingerprint=engine_fingerprint,
                    speaker=item.book.speaker,
                    voice_key=item.voice_key,
                    prompt_positions=item.prompt_positions,
                )
            except SpokenTooLong as exc:
                summary.add_error(item.too_long_error(exc))
                continue
            if measure.left_as_written:
                summary.add_left_as_written(item.book.book_id, measure.left_as_written)
            if measure.chunks:
                measured.append(measure)
            else:
                summary.add_error(item.empty_error())
        summary.add_books(measured, self.chunking, self.plan)
        return summary


def plan_rows(
    rows: Iterable[Book | RowError],
    planner: Planner,
    *,
    total_rows: int | None = None,
    jobs: int = 1,
    progress: bool = False,
) -> PlanSummary:
    """Validate, chunk and batch a whole manifest's rows without synthesizing anything.

    Windows are independent (each is sorted and batched on its own, as in a run), so `jobs`
    processes plan them in parallel while this one reads the manifest.
    """
    from tqdm import tqdm

    summary = PlanSummary()
    with tqdm(rows, total=total_rows, unit=" rows", disable=not progress, desc="planning") as bar:
        row_windows = windows(bar, planner.plan.window_books)
        head = list(itertools.islice(row_windows, 2))
        row_windows = itertools.chain(head, row_windows)
        if jobs == 1 or len(head) < 2:  # one window: starting processes would cost more
            parts: Iterable[PlanSummary] = map(planner.summary, row_windows)
        else:
            pool = ProcessPoolExecutor(
                jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_yield_to_reader
            )
            parts = ordered_map(pool, planner.summary, row_windows, in_flight=2 * jobs)
        for part in parts:
            summary.merge(part)
    return summary


def _yield_to_reader() -> None:
    """Planning workers step back for the process that reads the manifest: it feeds them all,
    so every core it loses to them delays every worker (on 2 cores: ~20 % longer plans)."""
    with contextlib.suppress(OSError, AttributeError):  # no nice() on Windows
        os.nice(5)


def ordered_map(
    pool: ProcessPoolExecutor, fn: Callable[[U], V], items: Iterable[U], in_flight: int
) -> Iterator[V]:
    """`pool.map` that submits lazily: at most `in_flight` items wait in memory."""
    with pool:
        pending: collections.deque[Future[V]] = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def render_summary(summary: PlanSummary) -> str:
    """The human-readable report of `narrate plan`."""
    lines = [
        f"books accepted     {summary.books:,}",
        f"rows rejected      {summary.rows_rejected:,}",
    ]
    lines.extend(f"  {reason}: {count:,}" for reason, count in summary.rejected.most_common())
    lines.extend(f"  {error} [{error.reason}]" for error in summary.rejected_rows)
    lines += [
        f"chunks             {summary.chunks:,} ({summary.unique_chunks:,} unique)",
        f"characters         {summary.characters:,}",
        f"est. audio         {summary.audio_hours:,.2f} h",
        f"batches            {summary.batches:,}",
        f"padding efficiency {summary.padding_efficiency:.1%}",
        f"left as written    {summary.left_as_written:,} forms in "
        f"{summary.books_left_as_written:,} books (see narrate spoken --explain)",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Shard:
    """This pod's part of the catalog: `index` of `count` (Kubernetes Indexed Job)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None, env: Mapping[str, str]) -> Shard:
        """`I/N`; without it, JOB_COMPLETION_INDEX and NARRATE_SHARDS; else the whole catalog."""
        if text is None:
            if "JOB_COMPLETION_INDEX" not in env:
                return cls()
            text = f"{env['JOB_COMPLETION_INDEX']}/{env.get('NARRATE_SHARDS', '1')}"
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise UsageError(f"shard {text!r} is not I/N", "e.g. --shard 0/4") from None
        if not 0 <= index < count:
            raise UsageError(f"shard {text!r}: index must be in 0..{count - 1}", "e.g. --shard 0/4")
        return cls(index, count)


def shard_rows(
    items: Iterable[Book | RowError], shard: Shard, block: int = 4096
) -> Iterator[Book | RowError]:
    """This shard's rows: a deterministic, length-balanced assignment.

    Every pod reads the same manifest and computes the same assignment: within each block of
    rows, books go longest first to the least-loaded shard (loads carry over between blocks),
    so shards get similar amounts of text, not just similar book counts. Books whose text is
    behind a `text_uri` weigh the block's average (reading every text on every pod would cost
    more than it balances). Row errors go to `row % count`, so each is reported once.
    """
    if shard.count == 1:
        yield from items
        return
    loads = [0] * shard.count
    for rows in _blocks(items, block):
        books = [r for r in rows if isinstance(r, Book)]
        known = [len(b.text) for b in books if b.text is not None]
        average = sum(known) // len(known) if known else 1
        weight = {b.row: len(b.text) if b.text is not None else average for b in books}
        mine: set[int] = set()
        for book in sorted(books, key=lambda b: (-weight[b.row], b.row)):
            target = min(range(shard.count), key=lambda s: (loads[s], s))
            loads[target] += weight[book.row]
            if target == shard.index:
                mine.add(book.row)
        for row in rows:
            if (
                (row.row in mine)
                if isinstance(row, Book)
                else (row.row % shard.count == shard.index)
            ):
                yield row


def _blocks(items: Iterable[Book | RowError], size: int) -> Iterator[tuple[Book | RowError, ...]]:
    iterator = iter(items)
    while block := tuple(itertools.islice(iterator, size)):
        yield block
