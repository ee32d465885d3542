"""`narrate status`: where a catalog stands, from the cache and the outputs alone."""

from __future__ import annotations

import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from narrate.database import ERROR, RENDER_ERROR, RENDER_STATUS, STATUS
from narrate.options import RunOptions
from narrate.plan import PlannedBook
from narrate.publish import LIFECYCLE_FIELDS, content_hash, open_outputs
from narrate.quality import PASS_SCORE
from narrate.records import RowError
from narrate.report import EventLog
from narrate.settings import differing_options
from narrate.sources import planned_windows

_LABELS = {"chunks_to_synthesize": "to synthesize"}
LISTED = 20  # books listed per state in the text output (--json lists every one)
COUNTS = (
    "done",
    "below_quality",
    "cached",
    "partly_cached",
    "pending",
    "failed",
    "rejected_rows",
    "chunks",
    "chunks_cached",
    "chunks_to_synthesize",
    "other_settings",
)


@dataclass
class BookState:
    book_id: str
    state: str  # below_quality | cached | partly_cached | pending | failed
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"book_id": self.book_id, "state": self.state, "reason": self.reason}


@dataclass
class CatalogStatus:
    """Where a catalog stands, from the cache and the outputs alone (no model is loaded).

    Chunks are counted as `run` counts them: each distinct chunk of a window once."""

    done: int = 0
    below_quality: int = 0  # of the done books: a chunk failed every take of the check
    cached: int = 0  # every chunk cached: only assembly and publishing are left
    partly_cached: int = 0
    pending: int = 0
    failed: int = 0
    rejected_rows: int = 0
    chunks: int = 0
    chunks_cached: int = 0
    chunks_to_synthesize: int = 0  # what `run` with these options would synthesize
    other_settings: int = 0  # not done: published, but with other settings than these
    differing_options: Counter[str] = field(default_factory=Counter)  # option -> books
    books: list[BookState] = field(default_factory=list)  # every book not done, and marked
    rejected: list[RowError] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        counts: dict[str, object] = {name: getattr(self, name) for name in COUNTS}
        return counts | {
            "differing_options": dict(self.differing_options.most_common()),
            "books": [book.to_json() for book in self.books],
            "rejected": [error.to_json() for error in self.rejected],
        }

    def render(self) -> str:
        """What `narrate status` prints: one count per line, then the books that need
        something, by state, with their reasons."""
        lines = [
            f"{_LABELS.get(name, name.replace('_', ' ')):<15}{getattr(self, name):,}"
            for name in COUNTS
        ]
        if self.other_settings:
            options = ", ".join(f"{o} ({n})" for o, n in self.differing_options.most_common())
            lines.append("")
            lines += textwrap.wrap(
                f"{self.other_settings:,} books are published with other settings than these"
                + (f"; options that differ: {options}" if options else "")
                + ". Give status the options of the run that published them to count them as done."
            )
        for state in ("failed", "below_quality", "pending", "partly_cached", "cached"):
            books = [b for b in self.books if b.state == state]
            if not books:
                continue
            lines.append(f"\n{state.replace('_', ' ')}:")
            lines += [f"  {b.book_id}: {b.reason}" for b in books[:LISTED]]
            if len(books) > LISTED:
                lines.append(f"  ... and {len(books) - LISTED:,} more (--json lists all)")
        if self.rejected:
            lines.append("\nrejected rows:")
            lines += [f"  {error}" for error in self.rejected[:LISTED]]
            if len(self.rejected) > LISTED:
                lines.append(f"  ... and {len(self.rejected) - LISTED:,} more (--json lists all)")
        return "\n".join(lines)


def catalog_status(options: RunOptions) -> CatalogStatus:
    outputs = open_outputs(options, EventLog(tty=False))
    summary = CatalogStatus()
    fmt = options.outputs.post.format

    def book_state(book: PlannedBook, missing: set[str]) -> tuple[BookState | None, list[str]]:
        """The book's state (None: done and passing) and, when a file with other settings is
        published, the options that differ."""
        book_id = book.book.book_id
        ids = {c.chunk_id for c in book.chunks}
        stored, published = outputs.publisher.lookup(
            book_id, fmt, content_hash(book, options.outputs.post)
        )
        if published and stored is not None:  # the score the publishing run stored with it
            score = stored.metadata.get("qualityScore")
            if score and float(score) < PASS_SCORE:
                reason = f"published, score {float(score):.2f}: a chunk failed every take"
                return BookState(book_id, "below_quality", reason), []
            return None, []
        differ = differing_options(stored.metadata, options) if stored is not None else []
        record = outputs.status.record(book_id, (*LIFECYCLE_FIELDS, ERROR, RENDER_ERROR)) or {}
        if record.get(STATUS) == "failed":
            return BookState(book_id, "failed", str(record.get(ERROR) or "failed")), differ
        if record.get(RENDER_STATUS) == "failed":  # its published audio stays live
            reason = f"re-render failed: {record.get(RENDER_ERROR) or 'failed'}"
            return BookState(book_id, "failed", reason), differ
        cached = len(ids - missing)
        state = "cached" if cached == len(ids) else "partly_cached" if cached else "pending"
        reason = f"{cached} of {len(ids)} chunks cached"
        if stored is not None:
            reason += "; published with other settings" + (
                f" ({', '.join(differ)})" if differ else " (or its text, title or voice changed)"
            )
        return BookState(book_id, state, reason), differ

    with ThreadPoolExecutor(16) as lookups:
        for window in planned_windows(options, outputs.db):
            summary.rejected += [item for item in window if isinstance(item, RowError)]
            books = [item for item in window if isinstance(item, PlannedBook)]
            wanted = {c.chunk_id for b in books for c in b.chunks}
            missing = outputs.cache.missing(wanted, lookups.map)
            summary.chunks += len(wanted)
            summary.chunks_cached += len(wanted) - len(missing)
            to_render: set[str] = set()
            states = lookups.map(book_state, books, [missing] * len(books))
            for book, (state, differ) in zip(books, states, strict=True):
                if state is None or state.state == "below_quality":
                    summary.done += 1
                if state is None:
                    continue
                setattr(summary, state.state, getattr(summary, state.state) + 1)
                summary.books.append(state)
                if state.state != "below_quality":
                    to_render |= {c.chunk_id for c in book.chunks}
                    if "other settings" in state.reason:
                        summary.other_settings += 1
                        summary.differing_options.update(differ)
            summary.chunks_to_synthesize += len(to_render & missing)
    summary.rejected_rows = len(summary.rejected)
    outputs.status.close()
    return summary
