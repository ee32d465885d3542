"""Publishing throughput: bulk upload of encoded books to Cloud Storage (fake-gcs-server).

Target (issue: publishing): 500 encoded files, concurrent upload >= 5x faster than sequential.

The Uploader publishes the same 500 books twice into fresh buckets of a real fake-gcs-server:
once with one worker (sequential) and once with `--workers` threads. A server on the same
machine answers in about a millisecond with no network in between, so on 2 shared cores both
runs are bound by CPU (client, server and proxy share it) and concurrency gains little there.
Real uploads are bound by round trips instead (tens of milliseconds each from a pod to Cloud
Storage), so the same runs are repeated through a proxy that adds `--latency-ms` to every
request: that route is the one the target is about. Both are printed, from one run.

    python bench/publish.py [--files 500] [--size-kb 64] [--workers 16] [--latency-ms 30]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake-gcs-server launcher the tests use

from support.gcs import FakeGcs, FaultyProxy, fake_gcs_server  # noqa: E402

from narrate.publish import Uploader  # noqa: E402
from narrate.records import EncodedBook  # noqa: E402
from narrate.storage import open_storage  # noqa: E402

COMMON_META = {"model": "sesame/csm-1b", "voice": "narrator"}


def encoded_books(count: int, size: int) -> list[EncodedBook]:
    return [
        EncodedBook(
            book_id=f"book-{i:05d}",
            data=os.urandom(size),
            format="mp3",
            content_type="audio/mpeg",
            duration_s=size / 8000,  # 64 kbps
            content_hash=f"bench-{i}",
            watermark_payload=i % 65536,
        )
        for i in range(count)
    ]


def timed_upload(server: FakeGcs, books: Sequence[EncodedBook], workers: int) -> float:
    """Seconds to publish every book into a fresh bucket; fails loudly if any upload failed."""
    storage = open_storage(f"gs://{server.create_bucket()}/bench")
    uploader = Uploader(storage, workers=workers)
    start = time.perf_counter()
    uploads = uploader.upload(books, COMMON_META)
    seconds = time.perf_counter() - start
    failed = [u for u in uploads if not (u.ok and u.uploaded)]
    if failed:
        raise SystemExit(f"{len(failed)} uploads failed, first: {failed[0]}")
    return seconds


def _serve_proxy(upstream: str, latency_s: float, urls: multiprocessing.Queue[str]) -> None:
    with FaultyProxy(upstream, latency_s=latency_s) as proxy:
        urls.put(proxy.url)
        threading.Event().wait()


@contextlib.contextmanager
def latency_proxy(upstream: str, latency_ms: float) -> Iterator[str]:
    """A FaultyProxy that only delays, in its own process: it must not take the client's GIL."""
    context = multiprocessing.get_context("spawn")
    urls: multiprocessing.Queue[str] = context.Queue()
    process = context.Process(target=_serve_proxy, args=(upstream, latency_ms / 1000, urls))
    process.start()
    try:
        yield urls.get(timeout=60)
    finally:
        process.terminate()
        process.join()


def storage_benchmark(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    books = encoded_books(args.files, args.size_kb * 1024)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, fake_gcs_server(Path(tmp) / "server.log") as server:
        for label, route in [
            ("direct (loopback)", contextlib.nullcontext(server.url)),
            (f"+{args.latency_ms:g} ms per request", latency_proxy(server.url, args.latency_ms)),
        ]:
            with route as url:
                os.environ["STORAGE_EMULATOR_HOST"] = url
                sequential = timed_upload(server, books, workers=1)
                concurrent = timed_upload(server, books, workers=args.workers)
            rows.append((label, sequential, concurrent))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--size-kb", type=int, default=64)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    args = parser.parse_args()

    print(
        f"storage: {args.files} files x {args.size_kb} KiB to fake-gcs-server, "
        f"1 worker vs {args.workers} workers ({os.cpu_count()} CPU cores)"
    )
    print(f"  {'route':<24} {'sequential':>11} {'concurrent':>11} {'speed-up':>9}")
    for label, sequential, concurrent in storage_benchmark(args):
        rate = args.files / concurrent
        print(
            f"  {label:<24} {sequential:>10.2f}s {concurrent:>10.2f}s "
            f"{sequential / concurrent:>8.1f}x   ({rate:.0f} files/s concurrent)"
        )
    print("  target: concurrent >= 5x sequential on the round-trip-bound route")


if __name__ == "__main__":
    main()
