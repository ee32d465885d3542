"""`narrate check`: which files say which text, checked one after another in this process
(the acoustic model loads once, whatever the number of files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from narrate.config import ChunkingConfig, Lexicon
from narrate.errors import UsageError
from narrate.quality import Verdict, check_file
from narrate.sources import spoken_books
from narrate.text import chunk_book

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".opus", ".ogg", ".m4a", ".aac"})


def audio_files(paths: tuple[str, ...] | list[str]) -> list[tuple[Path, bool]]:
    """(file, named on the command line) for each path; a folder gives its audio files."""
    found: list[tuple[Path, bool]] = []
    for each in map(Path, paths):
        if each.is_dir():
            found += [
                (f, False) for f in sorted(each.iterdir()) if f.suffix.lower() in AUDIO_SUFFIXES
            ]
        else:
            found.append((each, True))
    if not found:
        raise UsageError(f"no audio files in {', '.join(map(str, paths))}")
    return found


def text_chunks(text: str, chunking: ChunkingConfig) -> list[str]:
    """A text given on the command line, in the chunks a run would speak it in."""
    chunks = chunk_book("check", text, config=chunking, engine_fingerprint="")
    return [chunk.text for chunk in chunks] or [text]


def check_paths(
    paths: tuple[str, ...] | list[str],
    *,
    text: str | None,
    manifest: str | None,
    book_ids: list[str],
    lexicon: Lexicon | None = None,
    text_root: str | None = None,
) -> Iterator[tuple[str, Verdict]]:
    """(file, verdict) for each file, in order; UsageError before any check when the files
    and texts do not pair up. Texts are heard as a run speaks them: `lexicon` applied, a
    manifest's `text_uri` read inside `text_root` (narrate.sources.spoken_books)."""
    if (text is None) == (manifest is None):
        raise UsageError("give either --text, or --manifest (with --book to pick books)")
    if book_ids and manifest is None:
        raise UsageError("--book needs --manifest")
    files = audio_files(paths)
    chunking = ChunkingConfig(lexicon=lexicon)
    if text is not None:
        chunks = text_chunks(text, chunking)
        pairs = [(path, chunks) for path, _ in files]
    else:
        assert manifest is not None
        spoken = spoken_books(manifest, book_ids or None, chunking=chunking, text_root=text_root)
        books = {book.book_id: list(book.chunks) for book in spoken}
        if len(files) == 1 and files[0][1] and len(books) == 1:
            pairs = [(files[0][0], next(iter(books.values())))]
        else:
            pairs = _by_name(files, books, manifest, every_book=bool(book_ids))
    return ((str(path), check_file(str(path), chunks)) for path, chunks in pairs)


def _by_name(
    files: list[tuple[Path, bool]], books: dict[str, list[str]], manifest: str, every_book: bool
) -> list[tuple[Path, list[str]]]:
    """Files paired with the book they are named after; `every_book`: each book needs one."""
    pairs = []
    for path, named in files:
        book_id = path.name[: -len(path.suffix)] if path.suffix else path.name
        if book_id in books:
            pairs.append((path, books[book_id]))
        elif named:
            raise UsageError(
                f"{path} names no book checked in {manifest}",
                hint="narrate names a book's file BOOK_ID.EXT; pair one file with --book",
            )
    paired = {path.name[: -len(path.suffix)] for path, _ in pairs}
    unheard = [book for book in books if book not in paired]
    if unheard and (every_book or not pairs):
        raise UsageError(f"no audio file for book {unheard[0]!r} among the files given")
    return pairs
