"""Database requests per book: batched status updates and the paged request queue.

Target (issue: publishing): <= 1 database request per 250 books.

A StatusWriter, through the real firebase-admin SDK, moves `--books` books through their
lifecycle against the RTDB-compatible test server, which counts every request:
- burst: every book `processing`, then every book `ready` (a window of finished books, or a
  rerun that republishes a catalog): batches are bounded by 500 books / 256 kB per request;
- streaming: books finish one by one at `--rate` books/s; a request goes out once 250 books
  wait or the oldest has waited 5 s, so fast streams batch like bursts;
- trickle: `--trickle` books finishing at 0.5 books/s (a slow window's tail): at most one
  request every 5 s, however slowly books arrive;
- request queue: reading `--books` requested books a page (500) at a time.

    python bench/publish_db.py [--books 1000] [--rate 100] [--trickle 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the RTDB-compatible server the tests use

from support.rtdb_server import EMULATOR_ENV, RTDBServer  # noqa: E402

from narrate.database import STATUS, StatusWriter, open_database  # noqa: E402
from narrate.sources import requested_books  # noqa: E402

TARGET_BOOKS_PER_REQUEST = 250
TRICKLE_RATE = 0.5  # books/s


def ready(status: StatusWriter, book_id: str) -> None:
    status.ready(
        book_id,
        url=f"https://firebasestorage.googleapis.com/v0/b/bench/o/narrations%2F{book_id}.mp3"
        "?alt=media&token=0b5c7a52-6f1e-4d38-9a63-0123456789ab",
        duration_s=312.48,
        path=f"narrations/{book_id}.mp3",
        format="mp3",
        watermark_payload=12345,
        content_hash="3f2a9c0d1e4b5a6978c0d1e2",
    )


def lifecycle(
    server: RTDBServer, name: str, ids: list[str], rate: float | None
) -> tuple[int, float]:
    """PATCH requests (and seconds) to take every book to `ready`; `rate` None: all at once."""
    db = open_database(f"https://{name}.firebaseio.com", status_file=Path("unused"))
    start = time.perf_counter()
    status = StatusWriter(db)
    for book_id in ids:
        status.processing(book_id)
    if rate is None:
        status.flush()
    for book_id in ids:
        ready(status, book_id)
        if rate is not None:
            time.sleep(1 / rate)
    failed = status.close()
    seconds = time.perf_counter() - start
    db.close()
    if failed:
        raise SystemExit(f"{len(failed)} books failed to update")
    return len(server.requests(name, "PATCH")), seconds


def queue_reads(server: RTDBServer, ids: list[str]) -> int:
    db = open_database("https://bench-queue.firebaseio.com", status_file=Path("unused"))
    db.update({f"books/{i}/{STATUS}": "requested" for i in ids})
    db.update({f"books/{i}/narrative": "A short story." for i in ids})
    found = sum(1 for _ in requested_books(db))
    db.close()
    assert found == len(ids), found
    return sum("orderBy" in r.params for r in server.requests("bench-queue", "GET"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="books/s when streaming")
    parser.add_argument("--trickle", type=int, default=20, help="books arriving at 0.5/s")
    args = parser.parse_args()
    ids = [f"book-{i:06d}" for i in range(args.books)]

    with RTDBServer() as server:
        os.environ[EMULATOR_ENV] = server.host_port
        burst, burst_s = lifecycle(server, "bench-burst", ids, None)
        streaming, _ = lifecycle(server, "bench-streaming", ids, args.rate)
        trickle, trickle_s = lifecycle(server, "bench-trickle", ids[: args.trickle], TRICKLE_RATE)
        queries = queue_reads(server, ids)

    n = args.books
    print(f"books: {n:,}  (target: <= 1 database request per {TARGET_BOOKS_PER_REQUEST} books)")
    verdict = "meets" if n / burst >= TARGET_BOOKS_PER_REQUEST else "MISSES"
    print(
        f"burst      processing + ready: {burst} PATCH requests = 1 per {n / burst:.0f} books "
        f"({burst / n:.4f} per book, {burst_s:.2f} s), {verdict} the target"
    )
    print(
        f"streaming  {args.rate:g} books/s: {streaming} PATCH requests = "
        f"1 per {n / streaming:.0f} books ({streaming / n:.4f} per book)"
    )
    print(
        f"trickle    {args.trickle} books at {TRICKLE_RATE:g} books/s: {trickle} PATCH requests "
        f"in {trickle_s:.0f} s = one every {trickle_s / trickle:.1f} s"
    )
    print(f"queue      {n:,} requested books read in {queries} paged queries")


if __name__ == "__main__":
    main()
