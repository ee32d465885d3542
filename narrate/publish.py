"""Publishing a finished book: upload the file first, then patch its database record.

A book is done only when both the stored object and the record carry the book's content hash,
so re-running converges: a crash between the two steps re-patches, never re-uploads twice.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from narrate.cache import ChunkCache
from narrate.config import PostConfig, fingerprint
from narrate.database import (
    CONTENT_HASH,
    RENDER_STATUS,
    STATUS,
    Database,
    StatusWriter,
    open_database,
)
from narrate.errors import InfrastructureError, NarrateError, StorageError
from narrate.options import RunOptions, check_template
from narrate.plan import PlannedBook
from narrate.records import EncodedBook
from narrate.report import EventLog
from narrate.storage import (
    CONTENT_HASH_KEY,
    MAX_RACES,
    TOKEN_KEY,
    Storage,
    StoredObject,
    check_name,
    check_url_style,
    open_storage,
)

log = logging.getLogger(__name__)
# what decides whether a book is done, failed or pending; the rest of a record is not read
LIFECYCLE_FIELDS = (STATUS, CONTENT_HASH, RENDER_STATUS)


def content_hash(planned: PlannedBook, post: PostConfig) -> str:
    """Everything that shapes a book's file: chunks (text, voice, engine), post settings, title."""
    chunk_ids = [c.chunk_id for c in planned.chunks]
    return fingerprint(planned.book.book_id, planned.book.title, chunk_ids, post)


@dataclass(frozen=True)
class Upload:
    """What happened to one book: its object, the URL for the database, or the error."""

    book_id: str
    name: str
    url: str | None
    uploaded: bool  # False when an object with the same content hash was already there
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Uploader:
    """Publishes encoded books concurrently; idempotent per book through the content hash."""

    def __init__(
        self,
        storage: Storage,
        *,
        workers: int = 16,
        object_template: str = "narrations/{book_id}.{ext}",
        url_style: str = "token",
        cache_control: str = "public, max-age=3600",
    ) -> None:
        check_url_style(url_style)
        check_template(object_template, "--object-name", ("book_id", "ext"), "{book_id}.{ext}")
        check_name(object_template.format(book_id="id", ext="wav"))  # e.g. "../{book_id}"
        self.storage = storage
        self.workers = max(1, workers)
        self.object_template = object_template
        self.url_style = url_style
        self.cache_control = cache_control

    def object_name(self, book_id: str, ext: str) -> str:
        return self.object_template.format(book_id=book_id, ext=ext)

    def upload(
        self,
        books: Sequence[EncodedBook],
        common_meta: Mapping[str, str],
        seen: Mapping[str, StoredObject | None] | None = None,
    ) -> list[Upload]:
        """One Upload per book, in order. Errors are per book: the others still publish.

        `seen`: what a `stat` of a book's object found moments ago (None: no object), by book
        id; those books skip their own `stat`, so a new object costs one request. A stale
        entry costs nothing but a retry: every write names the generation it replaces."""
        publish: Callable[[EncodedBook], Upload] = functools.partial(
            self._publish, common_meta=common_meta, seen=seen or {}
        )
        if len(books) <= 1 or self.workers == 1:
            return [publish(book) for book in books]
        with ThreadPoolExecutor(min(self.workers, len(books)), "upload") as pool:
            return list(pool.map(publish, books))

    def _publish(
        self,
        book: EncodedBook,
        common_meta: Mapping[str, str],
        seen: Mapping[str, StoredObject | None],
    ) -> Upload:
        name = book.book_id
        try:
            name = self.object_name(book.book_id, book.format)
            existing = seen[book.book_id] if book.book_id in seen else self.storage.stat(name)
            for _ in range(MAX_RACES):
                if existing and existing.metadata.get(CONTENT_HASH_KEY) == book.content_hash:
                    return Upload(book.book_id, name, self._url(existing), uploaded=False)
                stored = self.storage.put(
                    name,
                    book.data,
                    content_type=book.content_type,
                    metadata=self._metadata(book, common_meta, existing),
                    cache_control=self.cache_control,
                    overwrite=existing is not None,
                    generation=existing.generation if existing else None,
                )
                if stored is not None:
                    return Upload(book.book_id, name, self._url(stored), uploaded=True)
                existing = self.storage.stat(name)  # another writer created it meanwhile
            raise StorageError(f"{self.storage.root}/{name} kept changing while narrate wrote it")
        except InfrastructureError:
            raise  # the store itself is unusable: every book would fail, the run stops
        except Exception as exc:  # one bad book must not lose the others
            message = exc.message if isinstance(exc, NarrateError) else repr(exc)
            log.warning("upload of %s failed: %s", book.book_id, message)
            return Upload(book.book_id, name, None, uploaded=False, error=message[:500])

    def _url(self, obj: StoredObject) -> str:
        return self.storage.url(obj, self.url_style)

    @staticmethod
    def _metadata(
        book: EncodedBook, common_meta: Mapping[str, str], existing: StoredObject | None
    ) -> dict[str, str]:
        # keep the token of the object being replaced, so URLs already published keep working
        token = existing.metadata.get(TOKEN_KEY) if existing else None
        payload = book.watermark_payload
        return {
            "model": "",
            "voice": "",
            **{key: str(value) for key, value in common_meta.items()},
            "bookId": book.book_id,
            "generatedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            CONTENT_HASH_KEY: book.content_hash,
            "watermarked": "true" if payload is not None else "false",
            "watermarkPayload": "" if payload is None else str(payload),
            TOKEN_KEY: token or str(uuid.uuid4()),
        }


class Publisher:
    def __init__(
        self,
        storage: Storage,
        status: StatusWriter,
        *,
        object_template: str,
        url_style: str,
    ) -> None:
        self.storage = storage
        self.status = status
        self.uploader = Uploader(storage, object_template=object_template, url_style=url_style)

    def object_path(self, name: str) -> str:
        """The path recorded in the database: the object's full name in its bucket (what a
        Firebase Storage `ref()` takes), or the file name relative to a local output folder."""
        return self.storage.key(name)

    def lookup(self, book_id: str, fmt: str, content_hash: str) -> tuple[StoredObject | None, bool]:
        """The book's stored object (None: there is none) and whether the book is published
        with this content: the object and the database record both carry its hash, and no
        re-render of it failed or was left unfinished (the next run takes that again)."""
        stored = self.storage.stat(self.uploader.object_name(book_id, fmt))
        if stored is None or stored.metadata.get(CONTENT_HASH_KEY) != content_hash:
            return stored, False
        record = self.status.record(book_id, LIFECYCLE_FIELDS) or {}
        settled = record.get(RENDER_STATUS) is None
        return stored, settled and record.get(STATUS) == "ready" and record.get(
            CONTENT_HASH
        ) == content_hash

    def published(self, book_id: str, fmt: str, content_hash: str) -> Mapping[str, str] | None:
        """The stored object's metadata when the book is published with this content, else
        None (`narrate status` reads the quality score there)."""
        stored, published = self.lookup(book_id, fmt, content_hash)
        return stored.metadata if published and stored is not None else None

    def publish(
        self,
        book: EncodedBook,
        metadata: Mapping[str, str],
        seen: Mapping[str, StoredObject | None] | None = None,
    ) -> str:
        """Upload (skipped when the same content is stored) and queue the `ready` patch;
        `seen` as for `Uploader.upload`."""
        (upload,) = self.uploader.upload([book], metadata, seen)
        if upload.error:
            raise StorageError(f"upload of {upload.name} failed: {upload.error}")
        self.status.ready(
            book.book_id,
            url=upload.url,
            duration_s=book.duration_s,
            path=self.object_path(upload.name),
            format=book.format,
            watermark_payload=book.watermark_payload,
            content_hash=book.content_hash,
        )
        return upload.url


@dataclass
class Outputs:
    """Where a run's results go: the chunk cache, the published files, the database records."""

    cache: ChunkCache
    publisher: Publisher
    status: StatusWriter
    db: Database


def status_file(out: str) -> Path:
    """The local status file used without --database: beside a local output, else .narrate/."""
    return (Path(".narrate") if out.startswith("gs://") else Path(out)) / "status.json"


def open_outputs(options: RunOptions, log: EventLog) -> Outputs:
    local_out = not options.outputs.out.startswith("gs://")
    if options.outputs.database is None and not local_out:
        log.event(
            "warning", message=f"no --database: statuses go to {status_file(options.outputs.out)}"
        )
    db = open_database(options.outputs.database, status_file=status_file(options.outputs.out))
    status = StatusWriter(db, path_template=options.outputs.path_template, lease_s=options.lease_s)
    template = options.outputs.object_template or (
        "{book_id}.{ext}" if local_out else "narrations/{book_id}.{ext}"
    )
    publisher = Publisher(
        open_storage(options.outputs.out),
        status,
        object_template=template,
        url_style=options.url_style,
    )
    return Outputs(ChunkCache(open_storage(options.outputs.cache)), publisher, status, db)
