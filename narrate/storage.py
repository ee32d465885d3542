"""Where finished books and cached chunks live: a local folder or Cloud Storage, one protocol.

Every write is atomic and guarded: locally through narrate.atomic (a temp file in the same
folder renamed into place, or linked when an existing file must not be replaced); on Cloud
Storage each write is one upload with an `if_generation_match` precondition, so the library may
retry it safely and concurrent writers never clobber each other blindly. A precondition failure
caused by our own retried upload (the first reply was lost) is recognised by content and
metadata, so an object is never written twice.

Credentials come from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud,
Workload Identity); with STORAGE_EMULATOR_HOST set, anonymous credentials are used instead.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import json
import logging
import mimetypes
import os
import re
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import quote

from narrate.atomic import write_atomic
from narrate.errors import StorageError, StorageUnusable, UsageError

if TYPE_CHECKING:
    from google.cloud import storage as gcs

log = logging.getLogger(__name__)

URL_STYLES = ("token", "signed", "public", "gs")
TOKEN_KEY = "firebaseStorageDownloadTokens"
CONTENT_HASH_KEY = "contentHash"  # object metadata: what the file was made from (EncodedBook)
SIGNED_URL_LIFETIME = timedelta(days=7)  # the V4 maximum
_META_DIR = ".narrate-meta"  # local sidecars: content type, cache control and metadata per file
MAX_RACES = 5  # precondition losses tolerated per put before giving up
RETRY_BUDGET_S = 45.0
CONNECT_TIMEOUT_S = 10.0  # an unreachable host fails fast; a slow upload still gets `timeout`
# local failures about the folder, not the file: every book would meet them
_FOLDER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}
_POOL_SIZE = 32  # HTTP connections per client: at least the uploader's worker count
_FIREBASE_HOST = "https://firebasestorage.googleapis.com"
_PUBLIC_HOST = "https://storage.googleapis.com"
_CREDENTIALS_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
    "`gcloud auth application-default login`, or run on GKE with Workload Identity"
)
_PERMISSION_HINT = (
    "the account narrate runs as needs roles/storage.objectAdmin on the bucket "
    "(check GOOGLE_APPLICATION_CREDENTIALS or the Workload Identity binding)"
)


@dataclass(frozen=True)
class StoredObject:
    name: str  # relative to the storage root
    size: int
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    generation: int | None = None


class Storage(Protocol):
    root: str  # "file:///abs/dir" or "gs://bucket/prefix", for messages

    def put(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
        cache_control: str | None = None,
        generation: int | None = None,
    ) -> StoredObject | None:
        """Store `data` atomically. With overwrite=False an existing object is kept: None.

        `generation`: the generation of the object this replaces, as `stat` saw it, so the
        first write can name it (Cloud Storage; without it a replacement first sends an upload
        that is refused). A store without generations ignores it.
        """
        ...

    def get(self, name: str) -> bytes | None: ...

    def stat(self, name: str) -> StoredObject | None: ...

    def delete(self, name: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def url(self, obj: StoredObject, style: str = "token") -> str: ...

    def key(self, name: str) -> str:
        """Where `name` lives in the store: its key in the bucket (prefix included), or the
        name itself in a local folder (what the database records as the object's path)."""
        ...


def check_name(name: str) -> None:
    """Object names are relative paths; parts starting with "." are reserved (temp, sidecars)."""
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or re.search(r"[\x00-\x1f\x7f]", name)
        or any(not part or part.startswith(".") for part in parts)
    ):
        raise UsageError(
            f"invalid object name {name!r}",
            hint="names are relative paths without empty, '.' or '..' parts or control characters",
        )


# --- local folder -------------------------------------------------------------------------


class LocalStorage:
    """A folder. Metadata lives in sidecar JSON files under `.narrate-meta/`."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory).expanduser().resolve()
        with _local_errors(f"create {self.dir}"):
            self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir.as_uri()

    def _path(self, name: str) -> Path:
        check_name(name)
        path = self.dir / name
        if self._through_link(name) and not path.resolve().is_relative_to(self.dir):
            raise UsageError(f"object name {name!r} leads outside {self.dir}")
        return path

    def _through_link(self, name: str) -> bool:
        """Whether a part of `name` is a symlink: only then can it lead out of the root, which
        is resolved already (a few `lstat`s, where resolving the whole path costs a dozen)."""
        here = str(self.dir)
        for part in name.split("/"):
            here = f"{here}/{part}"
            try:
                if stat.S_ISLNK(os.lstat(here).st_mode):
                    return True
            except OSError:  # missing (or unreadable): nothing further down to follow
                return False
        return False

    def _sidecar(self, name: str) -> Path:
        return self.dir / _META_DIR / f"{name}.json"

    def put(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
        cache_control: str | None = None,
        generation: int | None = None,
    ) -> StoredObject | None:
        path, sidecar = self._path(name), self._sidecar(name)
        if not overwrite and path.exists():
            return None
        record = {"contentType": content_type, "cacheControl": cache_control}
        record["metadata"] = {k: str(v) for k, v in (metadata or {}).items()}
        with _local_errors(f"write {path}"):
            if overwrite:
                # drop the old sidecar first: a crash before the new one lands leaves a
                # file without a content hash (republished next run), never a stale hash
                sidecar.unlink(missing_ok=True)
                write_atomic(path, data)
            elif not write_atomic(path, data, overwrite=False):
                return None
            write_atomic(sidecar, json.dumps(record))
        return StoredObject(name, len(data), content_type, record["metadata"])

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        with _local_errors(f"read {path}"):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

    def stat(self, name: str) -> StoredObject | None:
        path = self._path(name)
        with _local_errors(f"stat {path}"):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return None
            try:
                record = json.loads(self._sidecar(name).read_text())
            except (FileNotFoundError, ValueError):
                record = {}
        content_type = record.get("contentType") or mimetypes.guess_type(name)[0]
        return StoredObject(
            name, size, content_type or "application/octet-stream", record.get("metadata", {})
        )

    def delete(self, name: str) -> None:
        path = self._path(name)
        with _local_errors(f"delete {path}"):
            path.unlink(missing_ok=True)
            self._sidecar(name).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        # walk only the deepest folder the prefix names
        start = self.dir / prefix.rpartition("/")[0]
        for folder, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(folder).relative_to(self.dir).as_posix()
            for file in sorted(files):
                name = file if rel == "." else f"{rel}/{file}"
                if not file.startswith(".") and name.startswith(prefix):
                    yield name

    def key(self, name: str) -> str:
        return name

    def url(self, obj: StoredObject, style: str = "token") -> str:
        """A file:// URL whatever the style: tokens and signatures mean nothing locally."""
        check_url_style(style)
        return self._path(obj.name).as_uri()


@contextmanager
def _local_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        kind = StorageUnusable if exc.errno in _FOLDER_ERRNOS else StorageError
        raise kind(
            f"cannot {what}: {exc.strerror or exc}", hint="check the folder's permissions and space"
        ) from exc


# --- Cloud Storage ------------------------------------------------------------------------


class GcsStorage:
    """Objects under `gs://bucket/prefix`, through google-cloud-storage."""

    def __init__(
        self, bucket: str, prefix: str, client: gcs.Client, *, timeout: float = 60.0
    ) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.root = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self.client = client
        self.timeout = (CONNECT_TIMEOUT_S, timeout)
        # every call here carries a precondition or is a read, so retrying all of them is safe.
        # 45 s of retries, delays capped at 8 s (about 9 attempts), rides out a flaky network;
        # a store still unreachable after that is down, and the run stops (exit 3) within 60 s
        self.retry = DEFAULT_RETRY.with_delay(initial=0.5, maximum=8.0).with_timeout(RETRY_BUDGET_S)
        self._bucket = client.bucket(bucket)
        self._warned_signed = False

    def key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _name(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _stored(self, blob: gcs.Blob) -> StoredObject:
        return StoredObject(
            name=self._name(blob.name),
            size=blob.size or 0,
            content_type=blob.content_type or "application/octet-stream",
            metadata=dict(blob.metadata or {}),
            generation=blob.generation,
        )

    def _get_blob(self, key: str) -> gcs.Blob | None:
        with _gcs_errors(f"stat gs://{self.bucket_name}/{key}"):
            return self._bucket.get_blob(key, timeout=self.timeout, retry=self.retry)

    def put(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
        cache_control: str | None = None,
        generation: int | None = None,
    ) -> StoredObject | None:
        from google.api_core.exceptions import PreconditionFailed

        key = self.key(name)
        wanted = {k: str(v) for k, v in (metadata or {}).items()}
        # the object we know of, else none: the common cases cost one request
        expected = generation if generation is not None else 0
        for _ in range(MAX_RACES):
            blob = self._bucket.blob(key)
            blob.metadata = wanted
            blob.cache_control = cache_control
            try:
                with _gcs_errors(f"upload gs://{self.bucket_name}/{key}"):
                    blob.upload_from_string(
                        data,
                        content_type=content_type,
                        if_generation_match=expected,
                        timeout=self.timeout,
                        retry=self.retry,
                    )
                return self._stored(blob)
            except PreconditionFailed:
                current = self._get_blob(key)
                if current is None:  # deleted meanwhile
                    expected = 0
                elif _same_object(current, data, wanted):
                    return self._stored(current)  # our own write, whose first reply was lost
                elif not overwrite:
                    return None
                else:  # replace exactly the generation we have seen
                    expected = current.generation
        raise StorageError(
            f"gs://{self.bucket_name}/{key} kept changing while narrate wrote it",
            hint="another process writes the same object; run one writer per shard",
        )

    def get(self, name: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        key = self.key(name)
        with _gcs_errors(f"download gs://{self.bucket_name}/{key}"):
            try:
                return self._bucket.blob(key).download_as_bytes(
                    timeout=self.timeout, retry=self.retry
                )
            except NotFound:
                return None

    def stat(self, name: str) -> StoredObject | None:
        blob = self._get_blob(self.key(name))
        return None if blob is None else self._stored(blob)

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        key = self.key(name)
        with _gcs_errors(f"delete gs://{self.bucket_name}/{key}"), suppress(NotFound):
            self._bucket.delete_blob(key, timeout=self.timeout, retry=self.retry)

    def list(self, prefix: str = "") -> Iterator[str]:
        start = f"{self.prefix}/{prefix}" if self.prefix else prefix
        with _gcs_errors(f"list gs://{self.bucket_name}/{start}"):
            blobs = self.client.list_blobs(
                self._bucket, prefix=start, timeout=self.timeout, retry=self.retry
            )
            for blob in blobs:
                yield self._name(blob.name)

    def url(self, obj: StoredObject, style: str = "token") -> str:
        check_url_style(style)
        key = self.key(obj.name)
        if style == "gs":
            return f"gs://{self.bucket_name}/{key}"
        if style == "public":
            return f"{_emulator_host() or _PUBLIC_HOST}/{self.bucket_name}/{quote(key)}"
        if style == "signed":
            return self._signed_url(key)
        token = obj.metadata.get(TOKEN_KEY, "").split(",")[0]
        if not token:
            raise StorageError(
                f"gs://{self.bucket_name}/{key} has no Firebase download token",
                hint=f"publish it with narrate (which sets {TOKEN_KEY}) or use --url-style gs",
            )
        host = _emulator_host() or _FIREBASE_HOST
        return (
            f"{host}/v0/b/{self.bucket_name}/o/{quote(key, safe='')}"
            f"?alt=media&token={quote(token, safe='')}"
        )

    def _signed_url(self, key: str) -> str:
        if _emulator_host():
            raise StorageUnusable(
                "signed URLs cannot be made against the storage emulator",
                hint="use --url-style token or public with an emulator",
            )
        blob = self._bucket.blob(key)
        try:
            url = blob.generate_signed_url(
                version="v4", expiration=SIGNED_URL_LIFETIME, method="GET"
            )
        except AttributeError:  # the library's answer to credentials that cannot sign
            raise StorageUnusable(
                "signed URLs need credentials with a private key",
                hint="use a service-account key (GOOGLE_APPLICATION_CREDENTIALS) "
                "or --url-style token",
            ) from None
        if not self._warned_signed:
            log.warning(
                "signed URLs expire after %d days: links written to the database will break "
                "then; --url-style token gives links that do not expire",
                SIGNED_URL_LIFETIME.days,
            )
            self._warned_signed = True
        return url


def _same_object(blob: gcs.Blob, data: bytes, metadata: Mapping[str, str]) -> bool:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    return blob.md5_hash == md5 and dict(blob.metadata or {}) == dict(metadata)


def check_url_style(style: str) -> None:
    if style not in URL_STYLES:
        raise UsageError(f"unknown URL style {style!r}", hint=f"use one of {', '.join(URL_STYLES)}")


def _emulator_host() -> str | None:
    """STORAGE_EMULATOR_HOST as a base URL (it normally carries the scheme already)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if host and "://" not in host:
        host = f"http://{host}"
    return host or None


@contextmanager
def _gcs_errors(what: str) -> Iterator[None]:
    """Turn library exceptions into StorageError with a hint. Preconditions pass through."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        yield
    except (api.PreconditionFailed, StorageError):
        raise
    except (api.Forbidden, api.Unauthorized) as exc:
        raise StorageUnusable(f"permission denied: cannot {what}", hint=_PERMISSION_HINT) from exc
    except api.NotFound as exc:
        raise StorageUnusable(
            f"cannot {what}: the bucket does not exist",
            hint="create the bucket or fix the gs:// address",
        ) from exc
    except auth.GoogleAuthError as exc:
        # the message of a refresh error can quote the token endpoint's reply; keep it out
        raise StorageUnusable(
            f"cannot {what}: no valid Google Cloud credentials ({type(exc).__name__})",
            hint=_CREDENTIALS_HINT,
        ) from None
    except (api.GoogleAPIError, requests.RequestException, OSError) as exc:
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        code = getattr(exc, "code", None)
        if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
            # a request refused for this object (a bad name, metadata or size): that book fails
            raise StorageError(f"cannot {what}: {detail[:300]}") from exc
        raise StorageUnusable(
            f"cannot {what}: {detail[:300]}",
            hint="Cloud Storage did not answer after retries; rerun later, finished work is kept",
        ) from exc


@functools.lru_cache(maxsize=4)
def _client(emulator: str | None, key_file: str | None, pid: int) -> gcs.Client:
    """One client per process and environment (a forked worker must not share its sockets).

    The arguments are the cache key: google.auth reads the key file and emulator from the
    environment itself.
    """
    import google.auth
    import requests
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import storage

    if emulator:
        credentials, project = AnonymousCredentials(), os.environ.get("GOOGLE_CLOUD_PROJECT")
        project = project or "narrate-emulator"
    else:
        try:
            scopes = ["https://www.googleapis.com/auth/devstorage.read_write"]
            credentials, project = google.auth.default(scopes=scopes)
        except DefaultCredentialsError as exc:
            # the message names the key file, never its content; the chained cause might
            raise StorageUnusable(
                f"no Google Cloud credentials for Cloud Storage: {exc}", hint=_CREDENTIALS_HINT
            ) from None
    session = AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=_POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(project=project, credentials=credentials, _http=session)


def gcs_client() -> gcs.Client:
    """The process's Cloud Storage client (emulator-aware)."""
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    return _client(_emulator_host(), key_file, os.getpid())


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise UsageError(f"invalid Cloud Storage address {uri!r}", hint="use gs://BUCKET/PREFIX")
    return bucket, path.strip("/")


def _local_path(uri: str) -> Path:
    path = uri.removeprefix("file://")
    if "://" in path:
        raise UsageError(
            f"unsupported address {uri!r}", hint="use a local path or gs://BUCKET/PATH"
        )
    return Path(path).expanduser()


def open_storage(uri: str, *, timeout: float = 60.0) -> Storage:
    """A local folder (path or file:// URL) or `gs://bucket/prefix`; names are relative to it."""
    if uri.startswith("gs://"):
        bucket, prefix = _split_gs(uri)
        return GcsStorage(bucket, prefix, gcs_client(), timeout=timeout)
    return LocalStorage(_local_path(uri))


def open_uri(uri: str, *, timeout: float = 60.0) -> BinaryIO:
    """A readable, seekable binary stream of a local file or a `gs://bucket/object`.

    A missing file raises FileNotFoundError on both, so callers handle one exception.
    """
    if not uri.startswith("gs://"):
        return _local_path(uri).open("rb")
    bucket, key = _split_gs(uri)
    storage = GcsStorage(bucket, "", gcs_client(), timeout=timeout)
    blob = storage._get_blob(key) if key else None
    if blob is None:
        raise FileNotFoundError(f"{uri} does not exist")
    with _gcs_errors(f"read {uri}"):
        # pin the generation: a reader never mixes two versions of a replaced object
        return blob.open(
            "rb", if_generation_match=blob.generation, timeout=timeout, retry=storage.retry
        )
