"""Where rows come from: manifest files, the site's request queue, and the texts behind `text_uri`.

Everything here reads (files, Cloud Storage, the database) and hands the pure planner
(narrate.plan) rows, text loaders and voice lookups; `planned_windows` is a run's rows planned
window by window, as `narrate run` and `narrate status` walk them.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from narrate.config import ChunkingConfig, EngineConfig, Lexicon
from narrate.database import (
    CLOCK_KEY,
    LEASE_EXPIRES,
    PROCESSING,
    REQUESTED,
    STATUS,
    Database,
    ServerClock,
    lease_live,
    with_retries,
)
from narrate.errors import UsageError
from narrate.manifest import ManifestReader, book_id_problem
from narrate.options import RunOptions
from narrate.plan import PlannedBook, VoiceLookup, chunk_books, no_voices, shard_rows
from narrate.plan import windows as book_windows
from narrate.records import Book, RowError
from narrate.selection import select_rows
from narrate.spoken import SpokenTooLong
from narrate.storage import open_uri
from narrate.synth.voices import VoiceLibrary
from narrate.text import chunk_book, spoken_text

log = logging.getLogger(__name__)


def manifest_rows(manifest: str, *, max_text_chars: int) -> ManifestReader:
    """A manifest's rows (JSONL, CSV or Parquet, local or gs://); `total_rows` when known."""
    return ManifestReader(manifest, max_text_chars=max_text_chars)


def catalog_rows(
    manifest: str | None,
    *,
    max_text_chars: int,
    requests_from: Database | None = None,
    collection: str = "books",
    text_field: str = "narrative",
) -> Iterable[Book | RowError]:
    """A run's rows: the site's request queue when `requests_from` is given, else MANIFEST."""
    if requests_from is not None:
        return requested_books(
            requests_from, path=collection, text_field=text_field, max_text_chars=max_text_chars
        )
    if manifest is None:
        raise UsageError("no manifest given", "pass MANIFEST, or --requests for the queue")
    return manifest_rows(manifest, max_text_chars=max_text_chars)


def default_text_root(manifest: str | None, text_root: str | None) -> str | None:
    """--text-root, else a local manifest's own folder; None (no local texts) otherwise."""
    if text_root is None and manifest and "://" not in manifest:
        return os.path.dirname(os.path.abspath(manifest))
    return text_root


def manifest_texts(manifest: str | None, text_root: str | None, max_text_chars: int) -> TextFetcher:
    """What reads a manifest's narratives in every command: inline, or behind text_uri with
    local files inside --text-root (default: the manifest's folder)."""
    return TextFetcher(default_text_root(manifest, text_root), max_text_chars)


@dataclass(frozen=True)
class SpokenBook:
    """One book of a manifest, as a run reads and speaks it."""

    book_id: str
    written: str  # its narrative: inline, or read behind text_uri
    chunks: tuple[str, ...]  # `written` as spoken (the lexicon applied), in a run's chunks
    lexicon: Lexicon | None

    @property
    def spoken(self) -> str:
        """Its whole text as spoken, in paragraphs (what `narrate spoken` prints)."""
        return spoken_text(self.written, self.lexicon)


def spoken_books(
    manifest: str,
    book_ids: list[str] | None,
    *,
    chunking: ChunkingConfig,
    text_root: str | None = None,
) -> Iterator[SpokenBook]:
    """The named books of a manifest (all valid ones: None), in manifest order, read and spoken
    as a run does: the same TextFetcher (--text-root) and the same chunking (--lexicon), so
    `narrate check` and `narrate spoken` hear what a run says. UsageError naming a named book
    that is missing or rejected, or any book whose text cannot be read or is too long."""
    fetch = manifest_texts(manifest, text_root, chunking.max_text_chars)
    missing = list(dict.fromkeys(book_ids)) if book_ids is not None else []
    for row in manifest_rows(manifest, max_text_chars=chunking.max_text_chars):
        if book_ids is not None:
            if row.book_id not in missing:
                continue
            missing.remove(row.book_id)
            if isinstance(row, RowError):
                raise UsageError(f"book {row.book_id!r} is rejected: {row}")
        elif isinstance(row, RowError):
            continue
        try:
            written = fetch(row)
            chunks = chunk_book(row.book_id, written, config=chunking, engine_fingerprint="")
        except (TextUriError, OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"book {row.book_id!r}: text_uri cannot be read ({exc})") from None
        except SpokenTooLong as exc:
            raise UsageError(f"book {row.book_id!r}: {exc}") from None
        yield SpokenBook(row.book_id, written, tuple(c.text for c in chunks), chunking.lexicon)
    if missing:
        raise UsageError(f"book {missing[0]!r} is not in {manifest}")


class TextUriError(UsageError):
    """A `text_uri` narrate will not read (outside the text root, not a regular file)."""


@dataclass(frozen=True)
class TextFetcher:
    """Reads a book's narrative: inline, or behind `text_uri`.

    A manifest is data from elsewhere, so it must not choose which local files narrate reads
    (and publishes as audio): gs:// objects are read, local paths only inside `root`, the folder
    the operator names with --text-root (default: the manifest's own folder; None: no local
    reads). Paths are resolved before the check, so `..` and symlinks cannot lead out of it;
    only regular files are opened (no FIFO, device or /proc entry), and at most `max_chars` + 1
    characters are read, so a huge file costs no more memory than the limit. Picklable: plan
    workers read texts themselves.
    """

    root: str | None
    max_chars: int

    def __call__(self, book: Book) -> str:
        if book.text is not None:
            return book.text
        assert book.text_uri is not None  # the manifest reader guarantees one of the two
        if book.text_uri.startswith("gs://"):
            with open_uri(book.text_uri) as stream:
                return self._read(stream)
        with self._open_local(book.text_uri) as stream:
            return self._read(stream)

    def _read(self, stream: BinaryIO) -> str:
        text = io.TextIOWrapper(stream, encoding="utf-8")  # type: ignore[arg-type]
        return text.read(self.max_chars + 1)

    def _open_local(self, uri: str) -> BinaryIO:
        if self.root is None:
            raise TextUriError(
                f"{uri!r} is a local path, and no --text-root allows local texts for this "
                "manifest (it is not a local file)"
            )
        root = os.path.realpath(self.root)
        path = os.path.realpath(os.path.join(root, uri))  # an absolute uri replaces the root
        if os.path.commonpath([root, path]) != root:
            raise TextUriError(f"{uri!r} is outside the text root {self.root} (--text-root)")
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TextUriError(f"{uri!r} is not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def planned_windows(options: RunOptions, db: Database) -> Iterator[list[PlannedBook | RowError]]:
    """This shard's rows in windows of books, chunked as every pod (and `narrate plan`) does."""
    rows = catalog_rows(
        options.manifest,
        max_text_chars=options.catalog.chunking.max_text_chars,
        requests_from=db if options.requests else None,
        collection=options.outputs.path_template.split("/{book_id}")[0],
        text_field=options.text_field,
    )
    voices = voice_lookup(options.catalog.engine, options.catalog.voices_dir)
    texts = manifest_texts(
        options.manifest, options.catalog.text_root, options.catalog.chunking.max_text_chars
    )
    selected = select_rows(rows, options.selection)
    for window in book_windows(
        shard_rows(selected, options.outputs.shard), options.catalog.plan.window_books
    ):
        yield list(
            chunk_books(
                window,
                chunking=options.catalog.chunking,
                engine_fingerprint=options.catalog.engine.fingerprint(),
                voices=voices,
                text_loader=texts,
            )
        )


def voice_lookup(engine: EngineConfig, root: str) -> VoiceLookup:
    """CSM chunks are keyed by the voice prompt's content; the preview engine has no prompts."""
    return LibraryVoices(root) if engine.engine == "csm" else no_voices


class LibraryVoices:
    """Voice lookup backed by the voice library (`voices/NAME/`): key = content fingerprint.
    Picklable (planning hands it to worker processes); each voice is read once per process."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known: dict[str | None, tuple[str, int]] = {None: ("", 0)}

    def __call__(self, name: str | None) -> tuple[str, int]:
        if name not in self._known:
            voice = VoiceLibrary(Path(self.root)).get(name)
            self._known[name] = (voice.fingerprint, voice.positions)
        return self._known[name]


def requested_books(
    db: Database,
    *,
    path: str = "books",
    text_field: str = "narrative",
    page_size: int = 500,
    max_text_chars: int = 200_000,
    retries: int = 5,
    backoff: float = 0.5,
    now_ms: float | None = None,
    host_clock: Callable[[], float] = time.time,
) -> Iterator[Book | RowError]:
    """Books whose status is `requested` (the site's "Generate narrative" button), then books
    left `processing` by a run that is gone (their lease expired at `now_ms`, or they have
    none), each in key order, read a page at a time with an indexed query. A record whose
    lease is live is skipped whatever its status: a run holds it (a `requested` one was
    just claimed, its `processing` mark not yet sent). `row` counts them from 1. Invalid
    records come out as RowErrors for the runner to mark failed. What is read here is only a
    candidate: the runner claims each book (StatusWriter.claim) before working on it.
    Leases are compared on the database's clock (`now_ms`, else a ServerClock's).
    """
    if now_ms is None:
        clock = ServerClock(db, f"{path}/{CLOCK_KEY}/{LEASE_EXPIRES}", host_clock=host_clock)
        now = float(clock.now_ms())
    else:
        now = now_ms
    row = 0
    for status in (REQUESTED, PROCESSING):
        for book_id, record in _records_with_status(
            db, path, status, page_size=page_size, retries=retries, backoff=backoff
        ):
            if _lease_held(record, now):
                continue  # a live run is working on it (or has just claimed it)
            row += 1
            if status == PROCESSING:
                log.info("book %s: its run's lease expired, taking it again", book_id)
            yield _requested_book(row, book_id, record, text_field, max_text_chars)


def _records_with_status(
    db: Database, path: str, status: str, *, page_size: int, retries: int, backoff: float
) -> Iterator[tuple[str, object]]:
    after = None
    while True:
        query = functools.partial(
            db.query_equal, path, STATUS, status, limit=page_size, start_after_key=after
        )
        page = with_retries(query, retries=retries, backoff=backoff, what=f"request queue /{path}")
        yield from page.items()
        if len(page) < page_size:
            return
        after = next(reversed(page))


def _lease_held(record: object, now_ms: float) -> bool:
    return lease_live(record.get(LEASE_EXPIRES) if isinstance(record, dict) else None, now_ms)


def _requested_book(
    row: int, book_id: str, record: object, text_field: str, max_text_chars: int
) -> Book | RowError:
    problem = book_id_problem(book_id)
    if problem:
        return RowError(row, "invalid_id", problem, book_id=book_id, field="book_id")
    text = record.get(text_field) if isinstance(record, dict) else None
    reason = message = None
    if text is None:
        reason, message = "missing_text", f"the record has no {text_field!r} field"
    elif not isinstance(text, str):
        reason, message = "wrong_type", f"{text_field} must be a string, got {type(text).__name__}"
    elif not text.strip():
        reason, message = "empty_text", f"{text_field} is empty or only whitespace"
    elif len(text) > max_text_chars:
        reason = "text_too_long"
        message = f"{text_field} has {len(text):,} characters, over the limit of {max_text_chars:,}"
    if reason:
        return RowError(row, reason, message, book_id=book_id, field=text_field)
    title = record.get("title")
    return Book(book_id, row=row, text=text, title=title if isinstance(title, str) else None)
