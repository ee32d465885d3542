"""A Realtime Database compatible HTTP server owned by the tests, and its pytest fixtures.

It follows the REST protocol's rules as the Firebase docs give them and as the firebase-admin
SDK uses them (firebase_admin/db.py):

- `GET`/`PUT`/`PATCH`/`DELETE`/`POST` on `/<path>.json` (other paths: 404); `ns=` or the host's
  first label names the database.
- Data is a tree of primitives: a location holds data only if a primitive lies at or below it,
  so `null` deletes, `{}` stores nothing and a location whose last child goes goes too; writing
  below a primitive turns it into an object. Arrays are objects keyed 0, 1, ...; they read back
  as arrays when the largest key is below twice their count. Numbers are doubles (2.0 reads
  back 2). Keys may not hold `. $ # [ ] /` or control characters, nor exceed 768 bytes; the tree
  is at most 32 levels deep.
- `PATCH`: a multi-location update; each key a path relative to the URL, set as a PUT would set
  it, all or none; paths that overlap are refused. `POST` adds a child under a push id.
- Server values: `{".sv": "timestamp"}` (one clock reading per request) and
  `{".sv": {"increment": n}}` (on the number stored before the request).
- ETags: `X-Firebase-ETag: true` returns one; `if-match` makes PUT and DELETE conditional (412
  with the current value and ETag); `if-none-match` on GET answers 304; PATCH takes neither.
- `print=silent`: 204 and no body. `shallow=true`: an object's keys, each `true`.
- Queries: `orderBy` (a JSON string: a child path, `$key`, `$value`, `$priority`) with
  `startAt`/`startAfter`/`endAt`/`endBefore`/`equalTo`, each with an optional `,"key"` tiebreak
  (the form the JS SDK's REST client sends), and `limitToFirst`/`limitToLast`. Children order:
  missing child (null) < false < true < numbers < strings < objects, ties by key; keys that are
  32-bit integers sort numerically before the others, strings by UTF-16 code units.

Not emulated: security rules (only `denied`, namespaces where everything answers 401),
priorities (refused), streaming (SSE). `faults()` answers 503/429 to a fraction of requests and
drops connections (some after applying the write), and every request lands in a log the tests
can count. tests/test_rtdb_server.py checks these rules over plain HTTP.

It is written from the protocol, independently of `narrate.database`, so a misunderstanding of
the protocol there is not mirrored here. With `FIREBASE_DATABASE_EMULATOR_HOST` already set (a
developer running the official emulator), the `rtdb` fixture points the tests at it instead;
tests that need the log or fault injection then skip.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import pytest

EMULATOR_ENV = "FIREBASE_DATABASE_EMULATOR_HOST"
MAX_KEY_BYTES = 768
_INVALID_KEY_CHAR = re.compile(r"[.$#\[\]/\x00-\x1f\x7f]")
MAX_DEPTH = 32
_QUERY_PARAMS = ("startAt", "startAfter", "endAt", "endBefore", "equalTo")
_LIMIT_PARAMS = ("limitToFirst", "limitToLast")


class RTDBError(Exception):
    def __init__(self, status: int, message: str, etag: str | None = None, body: object = None):
        super().__init__(message)
        self.status, self.message, self.etag, self.body = status, message, etag, body


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    namespace: str
    path: str  # the database path, without ".json"
    params: dict[str, str]
    status: int  # 0: the connection was dropped without an answer
    body_bytes: int


@dataclass
class Faults:
    unavailable: float = 0.0  # fraction answered 503
    throttled: float = 0.0  # fraction answered 429
    dropped: float = 0.0  # fraction whose connection closes unanswered (half after the write)
    rng: random.Random = field(default_factory=random.Random)

    def draw(self) -> str | None:
        x = self.rng.random()
        half = self.dropped / 2
        rates = {"503": self.unavailable, "429": self.throttled, "drop": half, "lost": half}
        for kind, rate in rates.items():
            if x < rate:
                return kind
            x -= rate
        return None


# ---- ordering ----------------------------------------------------------------


def integer_key(key: str) -> int | None:
    """The key as a 32-bit integer, if the database orders it as one: an optional "-", then
    ASCII digits (leading zeros allowed, at most 10 after them), within the 32-bit range."""
    digits = key.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > 10:
        return None
    number = int(key)
    return number if -(2**31) <= number < 2**31 else None


def key_rank(key: str) -> tuple:
    """Integer keys first, numerically (equal numbers: the shorter spelling first); then the
    other keys by UTF-16 code units, as the database compares strings."""
    number = integer_key(key)
    if number is not None:
        return (0, number, len(key))
    return (1, key.encode("utf-16-be"))


_MIN_KEY, _MAX_KEY = (-1,), (2,)


def value_rank(value: object) -> tuple:
    """Child values order: no value, false, true, numbers, strings (code units), objects."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (2,) if value else (1,)
    if isinstance(value, int | float):
        return (3, value)
    if isinstance(value, str):
        return (4, value.encode("utf-16-be"))
    return (5,)


def _child(value: object, path: str) -> object:
    for segment in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    return value


# ---- the data: leaves at paths -------------------------------------------------

Location = tuple[str, ...]


def _check_key(key: str) -> None:
    if not key or _INVALID_KEY_CHAR.search(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise RTDBError(400, f"Invalid data; couldn't parse key beginning at {key[:20]!r}")


def _location(path: str) -> Location:
    """`a/b/c` (slashes at either end or doubled are ignored) as a location; every key checked."""
    keys = tuple(k for k in path.split("/") if k)
    for key in keys:
        _check_key(key)
    return keys


def _as_json(value: object) -> object:
    """Objects whose keys are all non-negative integers read back as arrays when the largest
    key is below twice their count (missing slots are null), as the SDKs render them."""
    if not isinstance(value, dict):
        return value
    value = {k: _as_json(v) for k, v in value.items()}
    if value and all(k.isdigit() and (k == "0" or not k.startswith("0")) for k in value):
        top = max(int(k) for k in value)
        if top < 2 * len(value):
            return [value.get(str(i)) for i in range(top + 1)]
    return value


def etag_of(value: object) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()


class _Store:
    """One namespace's data as the database models it: every primitive (string, number,
    boolean) at its location, and nothing else. An object exists only as the locations below
    it, so the rules "null deletes", "an empty object is no data" and "deleting a location's
    last child deletes the location" need no code of their own.

    `_order` keeps the locations sorted: a location's descendants follow it contiguously.
    """

    def __init__(self) -> None:
        self._leaves: dict[Location, object] = {}
        self._order: list[Location] = []

    def _span(self, at: Location) -> tuple[int, int]:
        start = end = bisect.bisect_left(self._order, at)
        while end < len(self._order) and self._order[end][: len(at)] == at:
            end += 1
        return start, end

    def leaf(self, at: Location) -> object:
        """The primitive stored exactly at `at`, if any (server values read it)."""
        return self._leaves.get(at)

    def read(self, at: Location) -> object:
        """The JSON value at `at` (objects as dicts); None: no data."""
        if at in self._leaves:
            return self._leaves[at]
        start, end = self._span(at)
        if start == end:
            return None
        out: dict = {}
        for location in self._order[start:end]:
            node = out
            for key in location[len(at) : -1]:
                node = node.setdefault(key, {})
            node[location[-1]] = self._leaves[location]
        return out

    def replace(self, writes: dict[Location, dict[Location, object]]) -> None:
        """For each location `at` in `writes`, make its leaves (all at or below `at`) everything
        stored at or below `at`; the locations may not overlap. A primitive at a location above
        `at` is replaced: it becomes the object holding the new data."""
        gone: set[Location] = set()
        for at, leaves in writes.items():
            if leaves:
                gone.update(at[:depth] for depth in range(len(at)) if at[:depth] in self._leaves)
            start, end = self._span(at)
            gone.update(self._order[start:end])
        added = {location: leaf for leaves in writes.values() for location, leaf in leaves.items()}
        for location in gone:
            del self._leaves[location]
        self._leaves.update(added)
        # two sorted runs: sorting them together is one merge
        kept = [location for location in self._order if location not in gone]
        self._order = sorted(kept + sorted(added))


def _leaves(value: object, at: Location, server_value) -> dict[Location, object]:
    """A written JSON value as the primitives it stores, each at its location. Arrays are
    objects keyed 0, 1, ...; nulls and empty objects store nothing; `server_value(at, spec)`
    resolves `{".sv": spec}`."""
    if len(at) > MAX_DEPTH:
        raise RTDBError(400, f"Invalid data; the tree is deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        value = {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        if ".sv" in value:
            if len(value) != 1:
                raise RTDBError(400, "Invalid data; a server value holds only .sv")
            return {at: server_value(at, value[".sv"])}
        out: dict[Location, object] = {}
        for key, child in value.items():
            if key in (".value", ".priority"):
                raise RTDBError(400, "priorities are not emulated by the test server")
            _check_key(key)
            out |= _leaves(child, (*at, key), server_value)
        return out
    if value is None:
        return {}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # numbers are doubles there: 2.0 reads back as 2
    return {at: value}


def _server_values(store: _Store, now_ms: int):
    """`{".sv": "timestamp"}`: the server's clock, one reading per request; `{".sv":
    {"increment": n}}`: the number stored at that location before this request plus n (n
    alone if none is there)."""

    def resolve(at: Location, spec: object) -> object:
        if spec == "timestamp":
            return now_ms
        delta = spec.get("increment") if isinstance(spec, dict) and len(spec) == 1 else None
        if isinstance(delta, int | float) and not isinstance(delta, bool):
            current = store.leaf(at)
            number = isinstance(current, int | float) and not isinstance(current, bool)
            return current + delta if number else delta
        raise RTDBError(400, f"Invalid data; unsupported server value {spec!r}")

    return resolve


# ---- queries -----------------------------------------------------------------


def _bound(raw: str) -> tuple[object, str | None]:
    try:
        parts = json.loads(f"[{raw}]")
    except ValueError:
        raise RTDBError(400, f"Invalid query bound {raw!r}") from None
    if len(parts) not in (1, 2) or (len(parts) == 2 and not isinstance(parts[1], str)):
        raise RTDBError(400, f"Invalid query bound {raw!r}")
    return parts[0], parts[1] if len(parts) == 2 else None


def _query(value: object, order_by: str, params: dict[str, str]) -> object:
    if not isinstance(value, dict):
        return value

    def position(key: str, child: object) -> tuple:
        if order_by in ("$key", "$priority"):  # no priorities are stored: they order by key
            return (key_rank(key), ())
        index = child if order_by == "$value" else _child(child, order_by)
        return (value_rank(index), key_rank(key))

    def bound_position(raw: str, is_start: bool) -> tuple:
        bound, key = _bound(raw)
        if order_by == "$key":
            if not isinstance(bound, str):
                raise RTDBError(400, "Provided key index type is invalid, must be string")
            return (key_rank(bound), ())
        tiebreak = key_rank(key) if key is not None else _MIN_KEY if is_start else _MAX_KEY
        return (value_rank(bound), tiebreak)

    entries = sorted(((position(k, v), k, v) for k, v in value.items()), key=lambda e: e[0])
    low = high = None  # (position, inclusive)
    if "equalTo" in params:
        if any(p in params for p in _QUERY_PARAMS if p != "equalTo"):
            raise RTDBError(400, "equalTo cannot be combined with startAt/endAt")
        low = (bound_position(params["equalTo"], True), True)
        high = (bound_position(params["equalTo"], False), True)
    for name, is_start, inclusive in (
        ("startAt", True, True),
        ("startAfter", True, False),
        ("endAt", False, True),
        ("endBefore", False, False),
    ):
        if name in params:
            bound = (bound_position(params[name], is_start), inclusive)
            low, high = (bound, high) if is_start else (low, bound)
    if low is not None:
        entries = [e for e in entries if e[0] > low[0] or (low[1] and e[0] == low[0])]
    if high is not None:
        entries = [e for e in entries if e[0] < high[0] or (high[1] and e[0] == high[0])]
    if "limitToFirst" in params and "limitToLast" in params:
        raise RTDBError(400, "limitToFirst and limitToLast cannot both be set")
    for name in _LIMIT_PARAMS:
        if name in params:
            try:
                limit = int(params[name])
            except ValueError:
                raise RTDBError(400, f"{name} must be an integer") from None
            first = name == "limitToFirst"
            entries = entries[:limit] if first else entries[max(0, len(entries) - limit) :]
    return {k: v for _, k, v in entries}


# ---- the server --------------------------------------------------------------


class RTDBServer:
    """Start with `with RTDBServer() as server:`; point firebase-admin at `server.host_port`.

    `indexes`: when given, a set of (path, child) pairs; an `orderBy` child query on any other
    pair fails with the real database's "Index not defined" error (the emulator, like the default
    here, does not enforce indexes).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, indexes=None) -> None:
        self.indexes: set[tuple[str, str]] | None = indexes
        self.denied: set[str] = set()  # namespaces that answer 401 "Permission denied"
        self._stores: dict[str, _Store] = {}
        self._log: list[LoggedRequest] = []
        self._faults = Faults()
        self._push_ids = PushIds()
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer((host, port), _Handler)
        self._http.daemon_threads = True
        self._http.rtdb = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def host_port(self) -> str:
        host, port = self._http.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> RTDBServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    # -- for tests --

    def data(self, namespace: str, path: str = "/") -> object:
        with self._lock:
            return _as_json(self._store(namespace).read(_location(path)))

    def requests(self, namespace: str | None = None, method: str | None = None):
        with self._lock:
            return [
                r
                for r in self._log
                if (namespace is None or r.namespace == namespace)
                and (method is None or r.method == method)
            ]

    @contextlib.contextmanager
    def faults(
        self, *, unavailable: float = 0.0, throttled: float = 0.0, dropped: float = 0.0, seed=0
    ) -> Iterator[None]:
        with self._lock:
            self._faults = Faults(unavailable, throttled, dropped, random.Random(seed))
        try:
            yield
        finally:
            with self._lock:
                self._faults = Faults()

    # -- request handling (called from handler threads) --

    def _store(self, namespace: str) -> _Store:
        return self._stores.setdefault(namespace, _Store())

    def draw_fault(self) -> str | None:
        with self._lock:
            return self._faults.draw()

    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def handle(
        self, method: str, namespace: str, path: str, params: dict, headers, body: bytes
    ) -> tuple[int, object, dict[str, str]]:
        """Returns (status, JSON body, extra headers); raises RTDBError for error answers."""
        if namespace in self.denied:
            raise RTDBError(401, "Permission denied")
        at = _location(path)
        payload = _parse_body(body) if method in ("PUT", "PATCH", "POST") else None
        wants_etag = headers.get("X-Firebase-ETag", "").lower() == "true"
        expected = headers.get("if-match")
        if method == "PATCH" and (wants_etag or expected is not None):
            raise RTDBError(400, "ETags are not supported with PATCH")
        with self._lock:
            store = self._store(namespace)
            unchanged_if = headers.get("if-none-match")
            uses_etag = wants_etag or expected is not None or unchanged_if is not None
            etag = etag_of(_as_json(store.read(at))) if uses_etag else None
            if method == "GET":
                if unchanged_if is not None and unchanged_if == etag:
                    return 304, None, {"ETag": etag}
                answer = self._read(store, at, params)
                return 200, answer, {"ETag": etag} if wants_etag else {}
            if expected is not None and expected != etag:
                current = _as_json(store.read(at))
                raise RTDBError(412, "ETag mismatch", etag=etag, body=current)
            server_value = _server_values(store, int(time.time() * 1000))
            if method == "PATCH":
                answer = self._patch(store, at, payload, server_value)
            elif method == "POST":  # a new child under a fresh push id
                name = self._push_ids.next()
                store.replace({(*at, name): _leaves(payload, (*at, name), server_value)})
                answer = {"name": name}
            else:  # PUT, DELETE
                store.replace({at: _leaves(payload, at, server_value)})
                answer = _as_json(store.read(at))
            if not uses_etag:
                return 200, answer, {}
            return 200, answer, {"ETag": etag_of(_as_json(store.read(at)))}

    def _read(self, store: _Store, at: Location, params: dict[str, str]) -> object:
        value = store.read(at)
        if params.get("shallow") == "true":
            if any(p in params for p in ("orderBy", *_QUERY_PARAMS, *_LIMIT_PARAMS)):
                raise RTDBError(400, "shallow cannot be combined with a query")
            return {k: True for k in value} if isinstance(value, dict) else value
        if "orderBy" not in params:
            if any(p in params for p in (*_QUERY_PARAMS, *_LIMIT_PARAMS)):
                raise RTDBError(400, "orderBy must be defined when other query parameters are")
            return _as_json(value)
        try:
            order_by = json.loads(params["orderBy"])
        except ValueError:
            order_by = None
        if not isinstance(order_by, str):
            raise RTDBError(400, 'orderBy must be a JSON string, e.g. orderBy="$key"')
        index = ("/" + "/".join(at), order_by)
        if self.indexes is not None and not order_by.startswith("$") and index not in self.indexes:
            message = f'Index not defined, add ".indexOn": "{order_by}", for path "{index[0]}"'
            raise RTDBError(400, message + ", to the rules")
        return _as_json(_query(value, order_by, params))

    @staticmethod
    def _patch(store: _Store, at: Location, payload: object, server_value) -> object:
        """A multi-location update: each key (a relative path) is set as a PUT would set it, all
        or none; no path may lie inside another."""
        if not isinstance(payload, dict):
            raise RTDBError(400, "Invalid data; PATCH needs a JSON object")
        targets = {key: (*at, *_location(key)) for key in payload}
        ordered = sorted(targets.values())  # a location's descendants sort right after it
        for shorter, longer in zip(ordered, ordered[1:], strict=False):
            if longer[: len(shorter)] == shorter:
                first, second = "/".join(shorter), "/".join(longer)
                raise RTDBError(400, f"Path '{first}' is an ancestor of '{second}' in the update")
        # every server value reads the data as it was before this request
        updates = {targets[k]: _leaves(v, targets[k], server_value) for k, v in payload.items()}
        store.replace(updates)
        return {key: _as_json(store.read(targets[key])) for key in payload}


def _parse_body(body: bytes) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        return json.loads(body or b"null", parse_constant=refuse)
    except ValueError:
        raise RTDBError(400, "Invalid data; couldn't parse JSON object.") from None


class PushIds:
    """Push ids as the SDKs make them: 8 characters of the millisecond clock, then 12 random
    ones, in an alphabet that sorts like its characters' order, so later ids sort later; ids
    made in one millisecond count up."""

    ALPHABET = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"

    def __init__(self) -> None:
        self._last_ms = -1
        self._tail: list[int] = []

    def next(self) -> str:
        now_ms = int(time.time() * 1000)
        if now_ms == self._last_ms:
            i = len(self._tail) - 1
            while self._tail[i] == 63:  # carry
                self._tail[i] = 0
                i -= 1
            self._tail[i] += 1
        else:
            self._tail = [random.randrange(64) for _ in range(12)]
        self._last_ms = now_ms
        head = ""
        for _ in range(8):
            head = self.ALPHABET[now_ms % 64] + head
            now_ms //= 64
        return head + "".join(self.ALPHABET[i] for i in self._tail)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _serve(self, method: str) -> None:
        rtdb: RTDBServer = self.server.rtdb  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        namespace = params.get("ns") or (self.headers.get("Host") or "default").split(".")[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = unquote(url.path).removesuffix(".json")
        entry = dict(method=method, namespace=namespace, path=path, params=params)
        entry["body_bytes"] = len(body)
        fault = rtdb.draw_fault()
        if fault in ("drop", "lost"):
            if fault == "lost":  # the request was carried out, only the answer is lost
                with contextlib.suppress(RTDBError):
                    rtdb.handle(method, namespace, path, params, {}, body)
            rtdb.record(LoggedRequest(status=0, **entry))
            self.close_connection = True
            return
        headers: dict[str, str] = {}
        try:
            if fault:
                raise RTDBError(int(fault), "Service Unavailable" if fault == "503" else "Too Many")
            if not url.path.endswith(".json"):
                raise RTDBError(404, "Not found: REST paths end in .json")
            status, result, headers = rtdb.handle(
                method, namespace, path, params, self.headers, body
            )
        except RTDBError as error:
            status, result = error.status, {"error": error.message}
            if error.status == 412:
                result, headers = error.body, {"ETag": error.etag or ""}
        silent = params.get("print") == "silent" and status == 200
        rtdb.record(LoggedRequest(status=204 if silent else status, **entry))
        data = b"" if silent or status == 304 else json.dumps(result).encode()
        self.send_response(204 if silent else status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# ---- fixtures ----------------------------------------------------------------


@dataclass
class RTDBTarget:
    """One test's database: a fresh namespace on the test server (or the external emulator)."""

    namespace: str
    host_port: str
    server: RTDBServer | None

    @property
    def url(self) -> str:
        return f"https://{self.namespace}.firebaseio.com"

    def require_server(self) -> RTDBServer:
        if self.server is None:
            pytest.skip(f"needs the test server's request log or faults; {EMULATOR_ENV} is set")
        return self.server

    def rest(self, method: str, path: str, value: object = None) -> object:
        """Plain REST to the database, bypassing the code under test (seeding, inspecting)."""
        answer = self.request(method, path, value)
        if answer.status >= 400:
            raise AssertionError(f"{method} {path}: {answer.status} {answer.body}")
        return answer.body

    def request(
        self,
        method: str,
        path: str,
        value: object = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw_path: str | None = None,
    ) -> Answer:
        """One REST request as a client would send it; any status comes back as an Answer.
        `raw_path` replaces `/{path}.json` (to send a malformed one)."""
        query = urlencode({"ns": self.namespace} | (params or {}))
        url_path = raw_path if raw_path is not None else f"/{quote(path.strip('/'))}.json"
        data = None if method in ("GET", "DELETE") else json.dumps(value).encode()
        request = urllib.request.Request(
            f"http://{self.host_port}{url_path}?{query}", data=data, method=method
        )
        request.add_header("Authorization", "Bearer owner")  # the emulator's admin token
        for name, header in (headers or {}).items():
            request.add_header(name, header)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, got, text = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, got, text = error.code, error.headers, error.read()
        return Answer(status, got.get("ETag"), json.loads(text) if text else None, text)


@dataclass(frozen=True)
class Answer:
    status: int
    etag: str | None
    body: object  # the decoded JSON; None when the answer had no body
    raw: bytes


@pytest.fixture(scope="session")
def rtdb_server() -> Iterator[RTDBServer | None]:
    if os.environ.get(EMULATOR_ENV):
        yield None
        return
    with RTDBServer() as server:
        yield server


@pytest.fixture
def rtdb(rtdb_server: RTDBServer | None, monkeypatch: pytest.MonkeyPatch) -> RTDBTarget:
    namespace = f"narrate-test-{uuid.uuid4().hex[:12]}"
    if rtdb_server is None:
        return RTDBTarget(namespace, os.environ[EMULATOR_ENV], None)
    monkeypatch.setenv(EMULATOR_ENV, rtdb_server.host_port)
    return RTDBTarget(namespace, rtdb_server.host_port, rtdb_server)
