"""Publishing a finished book: upload the file first, then patch its database record.

A book is done only when both the stored object and the record carry the book's content hash,
so re-running converges: a crash between the two steps re-patches, never re-uploads twice.
"""

from __future__ import annotations

from collections.abc import Mapping

from narrate.config import PostConfig, fingerprint
from narrate.database import CONTENT_HASH, STATUS, StatusWriter
from narrate.errors import StorageError
from narrate.plan import PlannedBook
from narrate.records import EncodedBook
from narrate.storage import CONTENT_HASH_KEY, Storage, Uploader

# what decides whether a book is done, failed or pending; the rest of a record is not read
LIFECYCLE_FIELDS = (STATUS, CONTENT_HASH)


def content_hash(planned: PlannedBook, post: PostConfig) -> str:
    """Everything that shapes a book's file: chunks (text, voice, engine), post settings, title."""
    chunk_ids = [c.chunk_id for c in planned.chunks]
    return fingerprint(planned.book.book_id, planned.book.title, chunk_ids, post)


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

    def is_published(self, book_id: str, fmt: str, content_hash: str) -> bool:
        stored = self.storage.stat(self.uploader.object_name(book_id, fmt))
        if stored is None or stored.metadata.get(CONTENT_HASH_KEY) != content_hash:
            return False
        record = self.status.record(book_id, LIFECYCLE_FIELDS) or {}
        return record.get(STATUS) == "ready" and record.get(CONTENT_HASH) == content_hash

    def publish(self, book: EncodedBook, metadata: Mapping[str, str]) -> str:
        """Upload (skipped when the same content is stored) and queue the `ready` patch."""
        (upload,) = self.uploader.upload([book], metadata)
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
