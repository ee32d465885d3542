"""Previews: render (or look at) only some books of a catalog, through the same cache.

`--book ID` (repeatable) keeps those books; `--limit N` the first N books of the manifest (the
rest is not read); `--sample N --seed S` N books drawn at random, the same N for the same seed,
in manifest order. They combine: the named books first narrow the rows, then the limit or the
sample. A named book the manifest lacks is reported as a rejected row, so a typo is not a
silent empty run.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from narrate.errors import UsageError
from narrate.records import Book, RowError


@dataclass(frozen=True)
class Selection:
    book_ids: tuple[str, ...] = ()
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.sample is not None:
            raise UsageError(
                "--limit and --sample both pick books", hint="give one of them (with --book)"
            )

    @property
    def everything(self) -> bool:
        return not self.book_ids and self.limit is None and self.sample is None


def select_rows(rows: Iterable[Book | RowError], selection: Selection) -> Iterator[Book | RowError]:
    """The rows a preview renders (every row when nothing is selected)."""
    if selection.everything:
        yield from rows
        return
    picked = _named(rows, selection.book_ids) if selection.book_ids else iter(rows)
    if selection.limit is not None:
        yield from _first_books(picked, selection.limit)
    elif selection.sample is not None:
        yield from _sampled(picked, selection.sample, selection.seed)
    else:
        yield from picked


def _named(rows: Iterable[Book | RowError], book_ids: tuple[str, ...]) -> Iterator[Book | RowError]:
    wanted = set(book_ids)
    seen: set[str] = set()
    for row in rows:
        if row.book_id in wanted:
            seen.add(row.book_id)  # type: ignore[arg-type]  # in `wanted`: a str
            yield row
            if seen == wanted and isinstance(row, Book):
                return  # every named book found: the rest of the manifest is not read
    for book_id in book_ids:
        if book_id not in seen:
            message = f"--book {book_id}: no row of the manifest has this book_id"
            yield RowError(0, "not_in_manifest", message, book_id=book_id, field="book_id")


def _first_books(rows: Iterable[Book | RowError], limit: int) -> Iterator[Book | RowError]:
    """Rows up to the `limit`-th valid book (rejected rows among them are reported)."""
    if limit <= 0:
        return
    books = 0
    for row in rows:
        yield row
        if isinstance(row, Book):
            books += 1
            if books == limit:
                return


def _sampled(rows: Iterable[Book | RowError], size: int, seed: int) -> Iterator[Book]:
    """`size` valid books drawn uniformly (reservoir sampling: one pass, `size` books held),
    given back in manifest order. Rejected rows outside the sample are not reported."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, Book]] = []
    seen = 0
    for row in rows:
        if not isinstance(row, Book):
            continue
        if len(reservoir) < size:
            reservoir.append((seen, row))
        else:
            slot = rng.randrange(seen + 1)
            if slot < size:
                reservoir[slot] = (seen, row)
        seen += 1
    for _, book in sorted(reservoir, key=lambda pair: pair[0]):
        yield book
