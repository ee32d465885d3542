"""`narrate status`: where a catalog stands, from the cache and the outputs alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from narrate.database import RENDER_STATUS, STATUS
from narrate.options import RunOptions
from narrate.plan import PlannedBook
from narrate.publish import LIFECYCLE_FIELDS, content_hash, open_outputs
from narrate.quality import PASS_SCORE
from narrate.records import RowError
from narrate.report import EventLog
from narrate.sources import planned_windows


@dataclass
class CatalogStatus:
    """Where a catalog stands, from the cache and the outputs alone (no model is loaded)."""

    done: int = 0
    below_quality: int = 0  # of the done books: a chunk failed every take of the check
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
    fmt = options.outputs.post.format

    def book_state(book: PlannedBook, missing: set[str]) -> tuple[str, int, int]:
        book_id = book.book.book_id
        ids = {c.chunk_id for c in book.chunks}
        cached = len(ids - missing)
        metadata = outputs.publisher.published(
            book_id, fmt, content_hash(book, options.outputs.post)
        )
        if metadata is not None:  # the score the run that published it stored with the file
            score = metadata.get("qualityScore")
            below = bool(score) and float(score) < PASS_SCORE
            return "below_quality" if below else "done", len(ids), cached
        record = outputs.status.record(book_id, LIFECYCLE_FIELDS) or {}
        if "failed" in (record.get(STATUS), record.get(RENDER_STATUS)):  # a failed re-render too
            return "failed", len(ids), cached
        state = "cached" if cached == len(ids) else "partly_cached" if cached else "pending"
        return state, len(ids), cached

    with ThreadPoolExecutor(16) as lookups:
        for window in planned_windows(options, outputs.db):
            summary.rejected_rows += sum(isinstance(item, RowError) for item in window)
            books = [item for item in window if isinstance(item, PlannedBook)]
            wanted = {c.chunk_id for b in books for c in b.chunks}
            missing = outputs.cache.missing(wanted, lookups.map)
            states = lookups.map(book_state, books, [missing] * len(books))
            for state, chunks, cached in states:
                if state == "below_quality":
                    summary.done += 1
                setattr(summary, state, getattr(summary, state) + 1)
                summary.chunks += chunks
                summary.chunks_cached += cached
    outputs.status.close()
    return summary
