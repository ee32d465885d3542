"""`narrate detect`: which files carry a watermark, and which book their payload points to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from narrate.errors import UsageError
from narrate.manifest import read_manifest
from narrate.post.encode import decode
from narrate.post.watermark import Watermarker, watermark_payload
from narrate.records import Book

DETECTED = 0.5  # share of the audio judged watermarked above which a file counts as marked


@dataclass(frozen=True, slots=True)
class FileDetection:
    path: str
    probability: float
    payload: int
    books: tuple[str, ...] | None = None  # book ids with this payload; None without a manifest

    @property
    def watermarked(self) -> bool:
        return self.probability >= DETECTED

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "watermarked": self.watermarked,
            "probability": round(self.probability, 4),
            "payload": self.payload,
            "books": list(self.books) if self.books is not None else None,
        }

    def __str__(self) -> str:
        verdict = "watermarked" if self.watermarked else "no watermark"
        line = f"{self.path}: {verdict} (p={self.probability:.2f}), payload {self.payload}"
        if self.books is not None:
            line += f", books: {', '.join(self.books) or 'none in the manifest'}"
        return line


def books_by_payload(manifest: str) -> dict[int, list[str]]:
    """Every valid book id of the manifest, under its payload (16 bits: ids can share one)."""
    found: dict[int, list[str]] = defaultdict(list)
    for row in read_manifest(manifest):
        if isinstance(row, Book):
            found[watermark_payload(row.book_id)].append(row.book_id)
    return found


def detect_files(
    paths: Iterable[str], watermarker: Watermarker, books: dict[int, list[str]] | None = None
) -> list[FileDetection]:
    results = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        audio, rate = decode(data)
        found = watermarker.detect(audio, rate)
        detection = FileDetection(path, found.probability, found.payload)
        if books is not None:  # an unmarked file's payload is noise: it names no book
            named = books.get(found.payload, ()) if detection.watermarked else ()
            detection = replace(detection, books=tuple(named))
        results.append(detection)
    return results
