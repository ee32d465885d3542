"""Book status records: the Firebase Realtime Database, or a local status.json, written in batches.

The site listens on `/books/{book_id}` and shows the player once `narrativeAudioUrl` is set. A
run moves each book through `processing` -> `ready` | `failed`; `StatusWriter` queues those
changes and sends many books in one multi-path PATCH (atomic) once 250 books wait or the oldest
has waited 5 s, so a burst costs one request per 250 books and the site still updates within
seconds of a book finishing. All values are idempotent: applying
an update twice leaves the same record (only `narrativeUpdatedAt` moves), so retries and reruns
converge. The site's request queue (`narrativeAudioStatus == "requested"`, and `processing`
records whose run's lease expired) is read by narrate.sources.requested_books; a run claims
each book it takes from there with one conditional write (`StatusWriter.claim`).

Talking to the database goes through firebase-admin, which honours
`FIREBASE_DATABASE_EMULATOR_HOST` (emulator: no credentials needed) and otherwise uses
Application Default Credentials. Adapters make one attempt and classify failures; callers here
retry the transient ones (5xx, 429, timeouts, lost connections) with backoff and jitter.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from narrate.atomic import write_atomic
from narrate.errors import DatabaseError, DatabaseUnusable, UsageError

log = logging.getLogger("narrate.database")

T = TypeVar("T")

SERVER_TIMESTAMP = {".sv": "timestamp"}  # replaced by the database's clock (epoch ms)

# Record fields under /books/{book_id} (ARCHITECTURE.md: "Checkpoint and idempotence").
STATUS = "narrativeAudioStatus"  # requested | processing | ready | failed
URL = "narrativeAudioUrl"
UPDATED_AT = "narrativeUpdatedAt"
DURATION = "narrativeAudioDuration"  # seconds
AUDIO_PATH = "narrativeAudioPath"
AUDIO_FORMAT = "narrativeAudioFormat"
WATERMARK = "narrativeWatermarkPayload"
ERROR = "narrativeAudioError"
CONTENT_HASH = "narrativeContentHash"  # lets a rerun see the record already matches
# A run working on a book holds a lease on its record: the run's id and a deadline (epoch ms,
# the database's clock), renewed while it works. A `processing` record whose lease has expired
# was left by a run that is gone, and the request queue takes it again.
LEASE_RUN = "narrativeLeaseRun"
LEASE_EXPIRES = "narrativeLeaseExpiresAt"
REQUESTED = "requested"
PROCESSING = "processing"
READY = "ready"
FAILED = "failed"
NO_LEASE = {LEASE_RUN: None, LEASE_EXPIRES: None}
# A re-render of a book whose audio is published keeps its own state in one object, so the site
# goes on showing the published audio (status `ready`, its URL) until the new file replaces it:
# {status: processing | failed, runId, leaseExpiresAt, error, updatedAt}.
RENDER = "narrativeAudioRender"
RENDER_STATUS = f"{RENDER}/status"
RENDER_RUN = f"{RENDER}/runId"
RENDER_EXPIRES = f"{RENDER}/leaseExpiresAt"
RENDER_ERROR = f"{RENDER}/error"
RENDER_UPDATED_AT = f"{RENDER}/updatedAt"
CLOCK_KEY = " narrate-clock"  # no book has it (ids never start with a space): read for its Date

MAX_ERROR_CHARS = 300
_MAX_BACKOFF_S = 30.0
RETRY_BUDGET_S = 40.0  # no new attempt after this: a database down for good stops a run in < 60 s

CREDENTIALS_HINT = (
    "narrate uses Application Default Credentials: Workload Identity on GKE, "
    "`gcloud auth application-default login` on a workstation, or GOOGLE_APPLICATION_CREDENTIALS "
    "pointing to a service-account key file; for the emulator set "
    "FIREBASE_DATABASE_EMULATOR_HOST=host:port"
)
PERMISSION_HINT = (
    "the credentials may not write this database: grant the service account the Firebase "
    "Realtime Database Admin role (roles/firebasedatabase.admin) and check that --database "
    "names the right instance"
)


class DatabaseUnavailable(DatabaseUnusable):
    """A failure worth retrying: 5xx, 429, a timeout or a lost connection (still failing after
    the retries, the database is unusable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="the database may be overloaded or unreachable; rerun")


class DatabaseRejected(DatabaseError):
    """The database refused this request (a 4xx other than 429): sending it again will not help,
    but other requests may still succeed."""


class Database(Protocol):
    def update(self, updates: Mapping[str, object]) -> None:
        """One multi-path update, applied atomically; None deletes; values may hold
        SERVER_TIMESTAMP."""

    def get(self, path: str) -> object: ...

    def query_equal(
        self,
        path: str,
        child: str,
        value: str,
        *,
        limit: int = 500,
        start_after_key: str | None = None,
    ) -> dict[str, dict]:
        """Children of `path` whose `child` equals `value`, in key order, after
        `start_after_key`, at most `limit`."""

    def claim(self, path: str, until_ms: int, now_ms: int) -> bool:
        """Set the lease deadline at `path` to `until_ms` unless it holds a live one (later
        than `now_ms`), atomically against every other writer: True when it was set."""

    def server_time_ms(self, path: str) -> float | None:
        """The database's clock (epoch ms) as a read of `path` reports it; None where the
        host's clock is the database's (a local file)."""

    def close(self) -> None: ...


class ServerClock:
    """The database's time in epoch ms, on which every lease deadline is written and compared:
    a host whose clock is an hour off neither takes a live lease nor waits on an expired one.
    The offset from the host's clock is measured by one small read (its response's `Date`),
    again every `refresh_s`."""

    def __init__(
        self,
        db: Database,
        probe_path: str,
        *,
        host_clock: Callable[[], float] = time.time,
        refresh_s: float = 600.0,
    ) -> None:
        self.db = db
        self.probe_path = probe_path
        self.host_clock = host_clock
        self.refresh_s = refresh_s
        self._offset_ms: float | None = None
        self._measured = 0.0  # monotonic time of the last measurement
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            if self._offset_ms is None or time.monotonic() - self._measured > self.refresh_s:
                self._offset_ms = self._measure()
                self._measured = time.monotonic()
            return int(self.host_clock() * 1000 + self._offset_ms)

    def _measure(self) -> float:
        before = self.host_clock()
        read = functools.partial(self.db.server_time_ms, self.probe_path)
        server = with_retries(read, retries=3, backoff=0.5, what="the database's clock")
        if server is None:
            return 0.0
        return server - (before + self.host_clock()) / 2 * 1000  # the read's midpoint


def lease_live(expires: object, now_ms: float) -> bool:
    """Whether a lease deadline (epoch ms) still holds a book for its run. None, or anything
    that is not a number, holds nothing: a released lease, or one from before leases."""
    return isinstance(expires, int | float) and not isinstance(expires, bool) and expires > now_ms


def rtdb_key_order(key: str) -> tuple:
    """The database's key order: keys that are 32-bit integers first, numerically, then strings.

    Pages must follow the server's order: Python's string order puts "100001" before "123",
    the database does not, and a page cursor taken in the wrong order repeats or skips records.
    """
    if re.fullmatch(r"-?0*\d{1,10}", key) and -(2**31) <= int(key) < 2**31:
        return (0, int(key), len(key))
    return (1, key.encode("utf-16-be"))  # the server compares UTF-16 code units


# ---- Realtime Database through firebase-admin --------------------------------------------------


class RealtimeDatabase:
    """A Realtime Database instance, `https://PROJECT.firebaseio.com` (or an emulator URL
    `http://HOST:PORT/?ns=NAME`), through its own named firebase-admin app."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        import firebase_admin
        from firebase_admin import db

        parts = urlsplit(url)
        namespaced = parts.scheme == "http" and parse_qs(parts.query).get("ns")
        if not parts.netloc or not (parts.scheme == "https" or namespaced):
            raise UsageError(
                f"--database {url!r} is not a Realtime Database URL",
                hint="use https://PROJECT.firebaseio.com (or https://NAME.REGION.firebasedatabase"
                ".app); for an emulator, http://HOST:PORT/?ns=NAME",
            )
        self.url = url
        options = {"databaseURL": url, "httpTimeout": timeout}
        self._app = firebase_admin.initialize_app(
            options=options, name=f"narrate-db-{uuid.uuid4().hex[:12]}"
        )
        self._db = db
        try:
            self._root = self._call("connect", lambda: db.reference("/", app=self._app))
        except DatabaseError:
            firebase_admin.delete_app(self._app)
            raise

    def update(self, updates: Mapping[str, object]) -> None:
        if updates:
            self._call(f"update of {len(updates)} paths", lambda: self._root.update(dict(updates)))

    def get(self, path: str) -> object:
        return self._call(f"read of /{path}", lambda: self._ref(path).get())

    def query_equal(
        self,
        path: str,
        child: str,
        value: str,
        *,
        limit: int = 500,
        start_after_key: str | None = None,
    ) -> dict[str, dict]:
        query = self._ref(path).order_by_child(child)
        if start_after_key is None:
            query.equal_to(value).limit_to_first(limit)
        else:
            # The Admin SDK has no startAt(value, key); the REST API takes the key after a comma
            # (what the JS SDK's REST client sends). Percent-encoded: the SDK does not encode.
            query.start_at(value).end_at(value).limit_to_first(limit + 1)
            bound = f"{json.dumps(value)},{json.dumps(start_after_key)}"
            query._params["startAt"] = quote(bound, safe="")
        found = self._call(f"query of /{path}", query.get) or {}
        if isinstance(found, list):  # integer keys come back as an array
            found = {str(i): record for i, record in enumerate(found) if record is not None}
        keys = sorted((k for k in found if k != start_after_key), key=rtdb_key_order)
        return {k: found[k] for k in keys[:limit]}

    def claim(self, path: str, until_ms: int, now_ms: int) -> bool:
        def compare_and_set() -> bool:
            # the read's ETag makes the write conditional: if another run wrote the deadline
            # in between, the database answers 412 and the SDK returns False
            ref = self._db.reference(path, app=self._app)
            current, etag = ref.get(etag=True)
            if lease_live(current, now_ms):
                return False
            won, _, _ = ref.set_if_unchanged(etag, until_ms)
            return bool(won)

        return self._call(f"claim of /{path}", compare_and_set)

    def server_time_ms(self, path: str) -> float | None:
        def read_date() -> float | None:
            ref = self._db.reference(path, app=self._app)
            # the SDK's own session (credentials, timeout, emulator); `get` drops the headers
            headers, _ = ref._client.headers_and_body("get", ref._add_suffix())
            date = headers.get("Date")
            if not date:
                return None
            # `Date` counts whole seconds: the middle of that second is at most 0.5 s off
            return parsedate_to_datetime(date).timestamp() * 1000 + 500

        return self._call(f"clock read of /{path}", read_date)

    def close(self) -> None:
        import firebase_admin

        firebase_admin.delete_app(self._app)

    def _ref(self, path: str):  # -> firebase_admin.db.Reference
        return self._call(f"path /{path}", lambda: self._db.reference(path, app=self._app))

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One attempt; failures become DatabaseUnavailable (retry), DatabaseRejected or
        DatabaseError (credentials, permissions, configuration: stop the run)."""
        from firebase_admin.exceptions import FirebaseError
        from google.auth import exceptions as auth_errors

        try:
            return call()
        except FirebaseError as exc:
            raise self._classify(what, exc) from None
        except auth_errors.TransportError as exc:
            raise DatabaseUnavailable(
                f"{what}: cannot reach Google's token service: {exc}"
            ) from None
        except auth_errors.GoogleAuthError as exc:  # no credentials, or refused ones
            message = f"{what}: no usable Google credentials ({type(exc).__name__}: {exc})"
            raise DatabaseUnusable(short_error(message), hint=CREDENTIALS_HINT) from None
        except ValueError as exc:  # the SDK refusing a path or an argument
            raise DatabaseRejected(f"{what}: {exc}") from None

    def _classify(self, what: str, exc: Exception) -> DatabaseError:
        response = getattr(exc, "http_response", None)
        status = response.status_code if response is not None else None
        message = short_error(f"{what} failed" + (f" ({status})" if status else "") + f": {exc}")
        if status is None or status >= 500 or status in (408, 429):
            return DatabaseUnavailable(message)
        if status in (401, 403):
            return DatabaseUnusable(message, hint=PERMISSION_HINT)
        if status == 404:
            return DatabaseUnusable(message, hint=f"check that --database {self.url} exists")
        if status == 400 and "Index not defined" in message:
            hint = f'add ".indexOn": ["{STATUS}"] under the books path in the database rules'
            return DatabaseUnusable(message, hint=hint)
        return DatabaseRejected(message)


# ---- local status file -------------------------------------------------------


class LocalStatusFile:
    """The same records in a local JSON file (no `--database`): `{"books": {id: {...}}}`.

    Each update rewrites the file atomically (narrate.atomic), so a crash leaves the
    previous or the new state, never half of one; server timestamps become epoch milliseconds.
    Several processes may share the file (shards writing to one local folder): an update holds
    an exclusive lock on a lock file beside it and merges into what is on disk now, not into
    what this process read earlier, so no process drops another's books.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock = threading.Lock()
        self._data: dict = {}
        self._seen: tuple[int, int, int] | None = None  # the file version _data holds
        with self._lock:
            self._refresh()

    def update(self, updates: Mapping[str, object]) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock, self._file_lock():
            self._refresh()
            for key, value in updates.items():
                _set_path(self._data, _segments(key), _resolved(value, now_ms))
            self._write()

    def get(self, path: str) -> object:
        with self._lock:
            self._refresh()
            return json.loads(json.dumps(_get_path(self._data, _segments(path))))

    def query_equal(
        self,
        path: str,
        child: str,
        value: str,
        *,
        limit: int = 500,
        start_after_key: str | None = None,
    ) -> dict[str, dict]:
        with self._lock:
            self._refresh()
            children = _get_path(self._data, _segments(path))
            if not isinstance(children, dict):
                return {}
            after = rtdb_key_order(start_after_key) if start_after_key is not None else None
            keys = sorted(
                (
                    key
                    for key, record in children.items()
                    if _get_path(record, _segments(child)) == value
                    and (after is None or rtdb_key_order(key) > after)
                ),
                key=rtdb_key_order,
            )
            return json.loads(json.dumps({key: children[key] for key in keys[:limit]}))

    def claim(self, path: str, until_ms: int, now_ms: int) -> bool:
        with self._lock, self._file_lock():  # other processes sharing the file wait too
            self._refresh()
            if lease_live(_get_path(self._data, _segments(path)), now_ms):
                return False
            _set_path(self._data, _segments(path), until_ms)
            self._write()
            return True

    def server_time_ms(self, path: str) -> float | None:
        return None  # every process sharing the file reads this host's clock

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise DatabaseUnusable(f"cannot lock the status file {self.path}: {exc}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # say for whom it waits: a hung process holds it forever
                holder = Path(self.lock_path).read_text(errors="replace").strip() or "unknown"
                log.warning("waiting for the lock on %s, held by %s", self.path, holder)
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
                log.info("took the lock on %s", self.path)
            with contextlib.suppress(OSError):  # who holds it, for the next one that waits
                handle.truncate(0)
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
            yield

    def _refresh(self) -> None:
        """Reload the file if another process replaced it since this one last read or wrote."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._data, self._seen = {}, None
            return
        except OSError as exc:
            raise self._unreadable(exc) from None
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version == self._seen:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data, version = {}, None
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from None
        if not isinstance(data, dict):
            raise DatabaseError(f"the status file {self.path} does not hold a JSON object")
        self._data, self._seen = data, version

    def _unreadable(self, exc: Exception) -> DatabaseError:
        return DatabaseError(
            f"cannot read the status file {self.path}: {exc}",
            hint="fix or delete it (it only caches what the run publishes)",
        )

    def _write(self) -> None:
        try:
            write_atomic(self.path, json.dumps(self._data, ensure_ascii=False, indent=1))
            info = self.path.stat()
        except OSError as exc:
            raise DatabaseUnusable(f"cannot write the status file {self.path}: {exc}") from None
        self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def _get_path(node: object, segments: list[str]) -> object:
    for segment in segments:
        if not isinstance(node, dict):
            return None
        node = node.get(segment)
    return node


def _set_path(root: dict, segments: list[str], value: object) -> None:
    """Set (None: delete) like the database does: emptied parents disappear too."""
    trail, node = [], root
    for segment in segments[:-1]:
        child = node.get(segment)
        if not isinstance(child, dict):
            if value is None:
                return
            child = node[segment] = {}
        trail.append((node, segment))
        node = child
    if value is None:
        node.pop(segments[-1], None)
    else:
        node[segments[-1]] = value
    for parent, segment in reversed(trail):
        if parent[segment]:
            break
        del parent[segment]


def _resolved(value: object, now_ms: int) -> object:
    if value == SERVER_TIMESTAMP:
        return now_ms
    if isinstance(value, Mapping):
        children = {k: _resolved(v, now_ms) for k, v in value.items()}
        return {k: v for k, v in children.items() if v is not None} or None
    return value


def open_database(url: str | None, *, status_file: Path, timeout: float = 10.0) -> Database:
    """`--database URL` -> RealtimeDatabase; none -> LocalStatusFile(status_file)."""
    if url is None:
        return LocalStatusFile(status_file)
    return RealtimeDatabase(url, timeout=timeout)


# ---- retries and error text --------------------------------------------------


def with_retries(
    call: Callable[[], T],
    *,
    retries: int,
    backoff: float,
    what: str,
    budget_s: float = RETRY_BUDGET_S,
) -> T:
    """`call()`, retried on DatabaseUnavailable with exponential backoff and jitter, until
    `retries` retries or `budget_s` seconds (counted from the first attempt) are spent."""
    started = time.monotonic()
    for attempt in itertools.count():
        try:
            return call()
        except DatabaseUnavailable as exc:
            delay = min(_MAX_BACKOFF_S, backoff * 2**attempt) * random.uniform(0.5, 1.0)
            if attempt >= retries or time.monotonic() - started + delay > budget_s:
                raise
            log.info("%s: %s; retry %d/%d in %.2fs", what, exc.message, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


_SECRETS = [
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
    ),
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[\w.~+/=-]+"),
    re.compile(
        r"(?i)([?&](?:token|access_token|auth|key|sig|signature|x-goog-signature|"
        r"x-goog-credential)=)[^&\s\"']+"
    ),
    re.compile(
        r"(?i)\b((?:api[_-]?key|token|secret|password|passwd|private[_-]?key|client[_-]?secret)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
    re.compile(r"\bya29\.[\w.-]+"),  # Google OAuth access tokens
    re.compile(r"\bAIza[\w-]{30,}"),  # Google API keys
    re.compile(r"[A-Za-z0-9+_-]{32,}={0,2}"),  # long opaque runs: keys, tokens, signatures
]


def _redacted(match: re.Match) -> str:
    return (match.group(1) if match.re.groups else "") + "[redacted]"


def short_error(error: str | BaseException) -> str:
    """An error as the site may show it: one line, at most 300 characters, no traceback, nothing
    that looks like a token or key."""
    text = str(error)
    if "Traceback (most recent call last)" in text:  # keep the exception line, not the stack
        text = [line for line in text.splitlines() if line.strip()][-1]
    for pattern in _SECRETS:
        text = pattern.sub(_redacted, text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# ---- the status lifecycle ----------------------------------------------------


@dataclass(frozen=True)
class Prior:
    """What a book's record held before this run took it: what a stop puts back.

    `published`: the record links audio (`narrativeAudioUrl`); a re-render then leaves its
    status and URL alone and works in `narrativeAudioRender` (`render`: that object as it was).
    """

    status: str | None = None
    error: str | None = None
    published: bool = False
    render: dict | None = None


QUEUED = Prior(REQUESTED)  # a book the request queue gave this run


def _merge(pending: dict[str, object], fields: Mapping[str, object]) -> None:
    """Queue `fields` over `pending` as one multi-path update allows: a path and one below it
    may not both be sent, so a field replaces what is queued beneath it, and a field beneath
    a queued object goes into that object."""
    for key, value in fields.items():
        for below in [k for k in pending if k.startswith(key + "/")]:
            del pending[below]
        parent, _, leaf = key.rpartition("/")
        if parent in pending:
            node = pending[parent]
            pending[parent] = (dict(node) if isinstance(node, dict) else {}) | {leaf: value}
        else:
            pending[key] = value


class StatusWriter:
    """Queues each book's status changes and sends them in batched multi-path updates.

    Queued updates are sent once `batch_books` books wait, or once the oldest has waited
    `max_wait` seconds: a burst of finished books costs one request per `batch_books` books,
    books trickling in one request every `max_wait` seconds at most, and no record lags more
    than `max_wait` behind its book. One PATCH carries up to `max_books` books and `max_bytes`
    of JSON. Updates reach the database in the order they were queued (one flush at a time); a
    book queued twice before a flush is sent once, with its latest fields.
    `flush()`/`close()` return the books whose update the database refused: report them
    failed; the next run retries them. A database that cannot be used (credentials,
    permissions, still unavailable after retries) raises DatabaseUnusable instead, from the
    next call or `check()` when the timer hit it: the run cannot publish.

    `processing` takes a lease on the book's record for this writer's `run_id`, renewed every
    `lease_s / 3` while the book is held; `ready`, `failed` and `release` let it go. Deadlines
    are on the database's clock (ServerClock). A book with published audio is re-rendered in
    its `narrativeAudioRender` fields: its status stays as it was (`ready`), with its URL,
    until `ready` replaces URL, status and fields in one update; a failure is recorded there
    too. `release` puts back exactly what `prior` read before the run took the book.
    """

    def __init__(
        self,
        db: Database,
        *,
        path_template: str = "books/{book_id}",
        batch_books: int = 250,
        max_wait: float = 5.0,
        max_books: int = 500,
        max_bytes: int = 1_000_000,
        retries: int = 5,
        backoff: float = 0.5,
        run_id: str | None = None,
        lease_s: float = 600.0,
        host_clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.lease_s = lease_s
        probe = f"{path_template.format(book_id=CLOCK_KEY)}/{LEASE_EXPIRES}"
        self.clock = ServerClock(db, probe, host_clock=host_clock)
        # books whose lease this writer keeps renewing: the field holding each one's deadline
        self._held: dict[str, str] = {}
        self._priors: dict[str, Prior] = {}  # what each book taken held before
        self._renew_at = time.monotonic() + lease_s / 3
        self.path_template = path_template
        self.batch_books = batch_books
        self.max_wait = max_wait
        self.max_books = max_books
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff
        self._pending: dict[str, dict[str, object]] = {}
        self._first_pending: float | None = None  # when the oldest pending update was queued
        self._failed: list[str] = []
        self._fatal: DatabaseError | None = None
        # guards _pending, _first_pending, _held, _renew_at, _failed, _fatal
        self._lock = threading.Lock()
        # the timer's wake-up: a first update queued, a batch full, a first lease held
        self._due = threading.Condition(self._lock)
        self._send_lock = threading.Lock()  # one flush at a time keeps updates in order
        self._closed = threading.Event()
        self._timer = threading.Thread(
            target=self._flush_on_timer, name="status-flush", daemon=True
        )
        self._timer.start()

    def prior(self, book_id: str) -> Prior:
        """The book's record as `release` would put it back: its status and error, or, once
        it links audio, its re-render object. One read for a book without a status."""
        path = self.path_template.format(book_id=book_id)
        status = self._read(f"{path}/{STATUS}")
        if status is None:
            return Prior()
        status = status if isinstance(status, str) else None
        if self._read(f"{path}/{URL}") is not None:
            render = self._read(f"{path}/{RENDER}")
            return Prior(
                status, published=True, render=render if isinstance(render, dict) else None
            )
        error = self._read(f"{path}/{ERROR}")
        return Prior(status, error if isinstance(error, str) else None)

    def processing(self, book_id: str, prior: Prior = Prior()) -> None:
        """The run takes the book: `processing`, with this run's lease (a re-render of a
        published book: in its render fields, leaving status and URL as the site sees them)."""
        with self._lock:
            self._priors[book_id] = prior
        if prior.published:
            fields = {RENDER_STATUS: PROCESSING, RENDER_RUN: self.run_id, RENDER_ERROR: None}
            self._queue(book_id, fields | self._deadline(RENDER_EXPIRES), RENDER_UPDATED_AT)
            lease = RENDER_EXPIRES
        else:
            fields = {STATUS: PROCESSING, LEASE_RUN: self.run_id}
            self._queue(book_id, fields | self._deadline(LEASE_EXPIRES))
            lease = LEASE_EXPIRES
        with self._lock:
            if not self._held:  # the first lease held: its renewal is due lease_s / 3 from now
                self._renew_at = time.monotonic() + self.lease_s / 3
                self._due.notify()  # the timer's wait now ends at the renewal too
            self._held[book_id] = lease

    def claim(self, book_id: str) -> bool:
        """Take the book's lease before working on it, unless a live run holds it: one
        conditional write, so two runs reading the request queue at once never both take a
        book (the one that loses skips it). `processing` then marks the record."""
        path = f"{self.path_template.format(book_id=book_id)}/{LEASE_EXPIRES}"
        now_ms = self._now_ms()
        until_ms = now_ms + int(self.lease_s * 1000)
        call = functools.partial(self.db.claim, path, until_ms, now_ms)
        return with_retries(call, retries=self.retries, backoff=self.backoff, what=f"claim {path}")

    def release(self, book_id: str) -> str | None:
        """This run stops before finishing the book: its record gets back exactly what it held
        before (`requested` only for a book the request queue gave). The status put back."""
        with self._lock:
            prior = self._priors.pop(book_id, Prior())
        if prior.published:
            self._queue(book_id, {RENDER: prior.render}, None, release=True)
        elif prior.status is None:  # no status before: nothing of this run's is left
            fields = {STATUS: None, ERROR: prior.error, UPDATED_AT: None} | NO_LEASE
            self._queue(book_id, fields, None, release=True)
        else:
            fields = {STATUS: prior.status, ERROR: prior.error} | NO_LEASE
            self._queue(book_id, fields, release=True)
        return prior.status

    def held(self) -> list[str]:
        """The books this writer holds a lease on (marked processing, not yet settled)."""
        with self._lock:
            return sorted(self._held)

    def check(self) -> None:
        """Raise the error that made the database unusable, if the timer met one."""
        with self._lock:
            if self._fatal is not None:
                raise self._fatal

    def ready(
        self,
        book_id: str,
        *,
        url: str,
        duration_s: float,
        path: str,
        format: str,
        watermark_payload: int | None,
        content_hash: str,
    ) -> None:
        fields = {STATUS: READY, URL: url, DURATION: round(duration_s, 3), AUDIO_PATH: path}
        fields |= {AUDIO_FORMAT: format, WATERMARK: watermark_payload, CONTENT_HASH: content_hash}
        with self._lock:
            self._priors.pop(book_id, None)
        # one update: the site never sees the new URL with the old fields, or the reverse
        self._queue(book_id, fields | {ERROR: None, RENDER: None} | NO_LEASE, release=True)

    def failed(self, book_id: str, error: str) -> None:
        """Marks the book failed. A re-render that fails leaves the published audio and its
        status in place: the error goes in its render fields."""
        with self._lock:
            prior = self._priors.pop(book_id, Prior())
        if prior.published:
            fields = {RENDER_STATUS: FAILED, RENDER_ERROR: short_error(error)}
            fields |= {RENDER_RUN: None, RENDER_EXPIRES: None}
            self._queue(book_id, fields, RENDER_UPDATED_AT, release=True)
        else:
            fields = {STATUS: FAILED, ERROR: short_error(error)} | NO_LEASE
            self._queue(book_id, fields, release=True)

    def flush(self, timeout: float | None = None) -> list[str]:
        """Send what is queued; the books whose update was refused. `timeout`: give up (those
        books count as refused) rather than wait longer for a slow database."""
        self._send_pending(timeout)
        with self._lock:
            if self._fatal is not None:
                raise self._fatal  # the refused books stay for unrecorded()
            failed, self._failed = self._failed, []
        return failed

    def close(self, timeout: float | None = None) -> list[str]:
        """Flush and stop the timer; a stopping run bounds the wait with `timeout`."""
        started = time.monotonic()
        with self._lock:
            self._closed.set()
            self._due.notify()
        self._timer.join(timeout)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return self.flush(left)

    def unrecorded(self) -> list[str]:
        """After DatabaseUnusable: the books whose updates were never sent."""
        with self._lock:
            return [*self._failed, *self._pending]

    def record(self, book_id: str, fields: Sequence[str] | None = None) -> dict | None:
        """The stored record (updates still queued here are not in it yet). With `fields`, only
        those are read, one small GET each: the whole record holds the site's narrative too,
        which a rerun over 100k books should not download."""
        path = self.path_template.format(book_id=book_id)
        if fields is None:
            value = self._read(path)
            return value if isinstance(value, dict) else None
        values = {name: self._read(f"{path}/{name}") for name in fields}
        return {name: value for name, value in values.items() if value is not None} or None

    def _read(self, path: str) -> object:
        read = functools.partial(self.db.get, path)
        return with_retries(read, retries=self.retries, backoff=self.backoff, what=f"read {path}")

    def _queue(
        self,
        book_id: str,
        fields: dict[str, object],
        touched: str | None = UPDATED_AT,
        *,
        release: bool = False,
    ) -> None:
        """Queue `fields` for the book, with the server's time in `touched`; `release`: the
        book's lease is let go."""
        if touched is not None:
            fields = fields | {touched: SERVER_TIMESTAMP}
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            if release:
                self._held.pop(book_id, None)
            _merge(self._pending.setdefault(book_id, {}), fields)
            if self._first_pending is None:  # the timer starts counting this one's wait
                self._first_pending = time.monotonic()
                self._due.notify()
            elif len(self._pending) >= self.batch_books:
                self._due.notify()

    def _now_ms(self) -> int:
        """The database's time; a database unusable for reading it is unusable for the run."""
        try:
            return self.clock.now_ms()
        except DatabaseError as exc:
            with self._lock:
                self._fatal = self._fatal or exc
            raise

    def _deadline(self, field: str) -> dict[str, object]:
        return {field: self._now_ms() + int(self.lease_s * 1000)}

    def _renew_leases(self) -> None:
        """Queue a new deadline for every lease held (the clock may read the database: not
        under the lock)."""
        until = self._now_ms() + int(self.lease_s * 1000)
        with self._lock:
            for book_id, field in self._held.items():
                _merge(self._pending.setdefault(book_id, {}), {field: until})

    def _flush_on_timer(self) -> None:
        while True:
            renew = False
            with self._lock:
                while not self._closed.is_set():
                    now = time.monotonic()
                    if self._held and now >= self._renew_at:
                        self._renew_at = now + self.lease_s / 3
                        renew = True
                        break  # sent now, whatever the batch: a short lease must not lapse
                    if len(self._pending) >= self.batch_books:
                        break
                    timeouts = [self._renew_at - now] if self._held else []
                    if self._first_pending is not None:
                        left = self._first_pending + self.max_wait - now
                        if left <= 0:
                            break
                        timeouts.append(left)
                    self._due.wait(min(timeouts) if timeouts else None)
                if self._closed.is_set():
                    return  # close() sends what is left
            if renew:
                with contextlib.suppress(DatabaseError):  # kept as _fatal by _now_ms
                    self._renew_leases()
            self._send_pending()

    def _send_pending(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else timeout):
            with self._lock:  # the timer's flush is still retrying: these are not sent
                self._failed.extend(self._pending)
                self._pending, self._first_pending = {}, None
            return
        try:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._first_pending = None
            for books, updates in self._batches(pending):
                self._send(books, updates, deadline)
        finally:
            self._send_lock.release()

    def _batches(
        self, pending: dict[str, dict[str, object]]
    ) -> Iterator[tuple[list[str], dict[str, object]]]:
        books: list[str] = []
        updates: dict[str, object] = {}
        size = 2  # the braces of the JSON body
        for book_id, fields in pending.items():
            prefix = self.path_template.format(book_id=book_id)
            entry = {f"{prefix}/{name}": value for name, value in fields.items()}
            entry_size = len(json.dumps(entry))  # as sent: ASCII-escaped JSON
            if books and (len(books) >= self.max_books or size + entry_size > self.max_bytes):
                yield books, updates
                books, updates, size = [], {}, 2
            books.append(book_id)
            updates |= entry
            size += entry_size
        if books:
            yield books, updates

    def _send(
        self, books: list[str], updates: dict[str, object], deadline: float | None = None
    ) -> None:
        what = f"status update of {len(books)} books"
        budget = RETRY_BUDGET_S if deadline is None else deadline - time.monotonic()
        try:
            if self._fatal is None and budget > 0:
                update = functools.partial(self.db.update, updates)
                with_retries(
                    update, retries=self.retries, backoff=self.backoff, what=what, budget_s=budget
                )
                return
        except DatabaseRejected as exc:
            log.warning("%s; these books are retried by the next run", exc.message)
        except DatabaseError as exc:  # unusable: credentials, permissions, down after retries
            with self._lock:
                self._fatal = self._fatal or exc
        with self._lock:
            self._failed.extend(books)
