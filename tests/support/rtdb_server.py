"""A Realtime Database compatible HTTP server owned by the tests, and its pytest fixtures.

It speaks the REST protocol the real firebase-admin SDK sends (firebase_admin/db.py) and that the
Firebase docs describe: GET/PUT/PATCH/DELETE on `/<path>.json`, `ns` picking the namespace,
multi-path PATCH applied atomically (overlapping paths rejected), `print=silent` (204),
`{".sv": "timestamp"}`, null deletes, arrays stored as integer-keyed objects, ETags
(`X-Firebase-ETag`, `if-match` -> 412, `if-none-match` -> 304), and queries: `orderBy` (a child,
`$key`, `$value`, `$priority`), `startAt`/`startAfter`/`endAt`/`endBefore`/`equalTo` each with an
optional `,"key"` tiebreak (the form the JS SDK's REST client sends), `limitToFirst`/`limitToLast`,
`shallow`. Ordering follows RTDB: null < false < true < numbers < strings < objects, ties by key,
and keys that are 32-bit integers sort numerically before the others.

Not emulated: security rules (only `denied`, namespaces where everything answers 401), streaming
(SSE), push ids. `faults()` answers 503/429 to a fraction of requests and drops connections
(some after applying the write), and every request lands in a log the tests can count.

It is written independently of `narrate.database`, so a misunderstanding of the protocol there
is not mirrored here. With `FIREBASE_DATABASE_EMULATOR_HOST` already set (a developer running the
official emulator), the `rtdb` fixture points the tests at it instead; tests that need the log or
fault injection then skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

EMULATOR_ENV = "FIREBASE_DATABASE_EMULATOR_HOST"
MAX_KEY_BYTES = 768
_INVALID_KEY_CHAR = re.compile(r"[.$#\[\]/\x00-\x1f\x7f]")
_INT_KEY = re.compile(r"-?0*\d{1,10}")
_INT32 = range(-(2**31), 2**31)
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


def key_rank(key: str) -> tuple:
    """RTDB key order: 32-bit integer keys numerically (shorter first on ties), then strings."""
    if _INT_KEY.fullmatch(key) and int(key) in _INT32:
        return (0, int(key), len(key))
    return (1, key.encode("utf-16-be"))


_MIN_KEY, _MAX_KEY = (-1,), (2,)


def value_rank(value: object) -> tuple:
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1,) if not value else (2,)
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


# ---- the data tree -----------------------------------------------------------


def _check_key(key: str) -> None:
    if not key or _INVALID_KEY_CHAR.search(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise RTDBError(400, f"Invalid data; couldn't parse key beginning at {key[:20]!r}")


def _segments(path: str) -> list[str]:
    segments = [s for s in path.split("/") if s]
    for segment in segments:
        _check_key(segment)
    return segments


def _stored(value: object, now_ms: int) -> object:
    """A written JSON value as RTDB keeps it: server values resolved, nulls and {} removed."""
    if isinstance(value, list):
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        return value
    if ".sv" in value:
        if value != {".sv": "timestamp"}:
            raise RTDBError(400, f"Invalid data; unsupported server value {value!r}")
        return now_ms
    out = {}
    for key, child in value.items():
        _check_key(key)
        child = _stored(child, now_ms)
        if child is not None and child != {}:
            out[key] = child
    return out or None


def _as_json(value: object) -> object:
    """Integer-keyed objects read back as arrays when more than half the slots are filled."""
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


class _Tree:
    """One namespace's data, as nested dicts; None is "no data"."""

    def __init__(self) -> None:
        self.root: object = None

    def get(self, segments: list[str]) -> object:
        node = self.root
        for segment in segments:
            if not isinstance(node, dict):
                return None
            node = node.get(segment)
        return node

    def set(self, segments: list[str], value: object) -> None:
        if not segments:
            self.root = value
            return
        if not isinstance(self.root, dict):
            if value is None:
                return
            self.root = {}
        trail, node = [], self.root
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
        for parent, segment in reversed(trail):  # deleting the last child deletes the parent
            if parent[segment]:
                break
            del parent[segment]
        if not self.root:
            self.root = None


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
        self._trees: dict[str, _Tree] = {}
        self._log: list[LoggedRequest] = []
        self._faults = Faults()
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
            return _as_json(json.loads(json.dumps(self._tree(namespace).get(_segments(path)))))

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

    def _tree(self, namespace: str) -> _Tree:
        return self._trees.setdefault(namespace, _Tree())

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
        segments = _segments(path)
        payload = None
        if method in ("PUT", "PATCH"):
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                raise RTDBError(400, "Invalid data; couldn't parse JSON object.") from None
        with self._lock:
            tree = self._tree(namespace)
            current = tree.get(segments)
            etag = etag_of(_as_json(current))
            wants_etag = headers.get("X-Firebase-ETag", "").lower() == "true"
            out_headers = {"ETag": etag} if wants_etag else {}
            if method == "GET":
                if headers.get("if-none-match") == etag:
                    return 304, None, {"ETag": etag}
                return 200, self._read(namespace, path, current, params), out_headers
            expected = headers.get("if-match")
            if expected is not None and expected != etag:
                raise RTDBError(412, "ETag mismatch", etag=etag, body=_as_json(current))
            now_ms = int(time.time() * 1000)
            if method == "PATCH":
                written = self._patch(tree, segments, payload, now_ms)
            else:  # PUT, DELETE
                written = _stored(payload, now_ms) if method == "PUT" else None
                tree.set(segments, written)
            if expected is not None or wants_etag:
                out_headers["ETag"] = etag_of(_as_json(tree.get(segments)))
            return 200, _as_json(written), out_headers

    def _read(self, namespace: str, path: str, value: object, params: dict[str, str]) -> object:
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
        index = ("/" + "/".join(_segments(path)), order_by)
        if self.indexes is not None and not order_by.startswith("$") and index not in self.indexes:
            message = f'Index not defined, add ".indexOn": "{order_by}", for path "{index[0]}"'
            raise RTDBError(400, message + ", to the rules")
        return _as_json(_query(value, order_by, params))

    @staticmethod
    def _patch(tree: _Tree, segments: list[str], payload: object, now_ms: int) -> object:
        if not isinstance(payload, dict):
            raise RTDBError(400, "Invalid data; PATCH needs a JSON object")
        updates = [(segments + _segments(k), _stored(v, now_ms)) for k, v in payload.items()]
        paths = sorted("/".join(p) for p, _ in updates)
        for shorter, longer in zip(paths, paths[1:], strict=False):
            if longer == shorter or longer.startswith(shorter + "/"):
                raise RTDBError(400, f"Path '{shorter}' is an ancestor of '{longer}' in the update")
        for path, value in updates:  # validated above, so the update applies whole or not at all
            tree.set(path, value)
        return {k: v for k, (_, v) in zip(payload, updates, strict=True)}


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
        url = f"http://{self.host_port}/{quote(path.strip('/'))}.json?ns={self.namespace}"
        data = None if method in ("GET", "DELETE") else json.dumps(value).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", "Bearer owner")  # the emulator's admin token
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")


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
