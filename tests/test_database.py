"""Status records and the request queue, through the real firebase-admin SDK.

The database is the RTDB-compatible test server (tests/support/rtdb_server.py), or the official
emulator when FIREBASE_DATABASE_EMULATOR_HOST is set; the same behaviour is checked against the
local status file where it applies.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.rtdb_server import EMULATOR_ENV, RTDBServer, RTDBTarget

from narrate.database import (
    CREDENTIALS_HINT,
    ERROR,
    LEASE_EXPIRES,
    LEASE_RUN,
    PERMISSION_HINT,
    QUEUED,
    RENDER,
    STATUS,
    UPDATED_AT,
    URL,
    Database,
    DatabaseRejected,
    LocalStatusFile,
    ServerClock,
    StatusWriter,
    open_database,
    short_error,
)
from narrate.errors import DatabaseError, DatabaseUnusable, UsageError
from narrate.records import Book, RowError
from narrate.sources import requested_books

READY_FIELDS = {
    "narrativeAudioStatus",
    "narrativeAudioUrl",
    "narrativeUpdatedAt",
    "narrativeAudioDuration",
    "narrativeAudioPath",
    "narrativeAudioFormat",
    "narrativeWatermarkPayload",
    "narrativeContentHash",
}


@pytest.fixture(params=["rtdb", "local"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The same behaviour through both backends."""
    if request.param == "rtdb":
        target: RTDBTarget = request.getfixturevalue("rtdb")
        db = open_database(target.url, status_file=tmp_path / "unused.json", timeout=10)
    else:
        db = open_database(None, status_file=tmp_path / "status.json")
    yield db
    db.close()


@pytest.fixture
def remote(rtdb: RTDBTarget, tmp_path: Path) -> Iterator[Database]:
    db = open_database(rtdb.url, status_file=tmp_path / "unused.json", timeout=10)
    yield db
    db.close()


def writer(db: Database, **kw) -> StatusWriter:
    return StatusWriter(db, **{"max_wait": 60.0, "backoff": 0.01} | kw)


def publish(status: StatusWriter, book_id: str, content_hash: str = "hash-1") -> None:
    status.ready(
        book_id,
        url=f"https://example.test/{book_id}.wav",
        duration_s=12.3456,
        path=f"narrations/{book_id}.wav",
        format="wav",
        watermark_payload=4242,
        content_hash=content_hash,
    )


def without_timestamps(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_timestamps(v) for k, v in value.items() if k != UPDATED_AT}
    return value


# ---- the Database adapters ---------------------------------------------------


def test_update_writes_many_paths_resolves_server_time_and_deletes_nulls(database: Database):
    before = int(time.time() * 1000)
    database.update({"books/a/title": "A", "books/a/n": 1, "books/b/title": "B"})
    database.update({"books/a/n": None, "books/b/at": {".sv": "timestamp"}})
    after = int(time.time() * 1000)

    books = database.get("books")
    assert books["a"] == {"title": "A"}
    assert books["b"]["title"] == "B"
    assert before <= books["b"]["at"] <= after
    database.update({"books/a/title": None})
    assert set(database.get("books")) == {"b"}  # an emptied record disappears
    assert database.get("books/missing") is None


def test_multi_path_update_applies_whole_or_not_at_all(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    remote.update({"books/a/title": "kept"})
    with pytest.raises(DatabaseRejected, match="ancestor"):  # overlapping paths: the real rule
        remote.update({"books/a/title": "changed", "books/b": {"x": 1}, "books/b/x": 2})
    assert rtdb.rest("GET", "books") == {"a": {"title": "kept"}}
    patches = server.requests(rtdb.namespace, "PATCH")
    assert [r.status for r in patches] == [204, 400]  # a 4xx is not retried


@pytest.mark.parametrize("page", [1, 2, 3, 50])
def test_query_equal_pages_in_database_key_order(database: Database, page: int):
    # Integer keys order numerically in the database ("9" < "123" < "100001"), before strings;
    # a cursor taken in Python's string order would repeat or skip books.
    ids = ["100001", "123", "9", "b", "a", "-5", "0012", "12", "00000000000012", "99999999999"]
    database.update({f"books/{i}/narrativeAudioStatus": "requested" for i in ids})
    database.update({"books/c/narrativeAudioStatus": "ready", "books/7/narrativeAudioStatus": "x"})

    seen: list[str] = []
    after = None
    while True:
        found = database.query_equal(
            "books", STATUS, "requested", limit=page, start_after_key=after
        )
        assert len(found) <= page
        seen += found
        if len(found) < page:
            break
        after = list(found)[-1]
    # zero-padded integers tie on value and order by length; past 32 bits a key is a string
    assert seen == [
        *("-5", "9", "12", "0012", "00000000000012", "123", "100001"),
        *("99999999999", "a", "b"),
    ]


def test_query_of_integer_keys_that_read_back_as_an_array(database: Database):
    database.update({f"books/{i}/narrativeAudioStatus": "requested" for i in range(4)})
    found = database.query_equal("books", STATUS, "requested", limit=10)
    assert list(found) == ["0", "1", "2", "3"]


def test_emulator_url_with_namespace_needs_no_environment(
    rtdb: RTDBTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv(EMULATOR_ENV)
    url = f"http://{rtdb.host_port}/?ns={rtdb.namespace}"
    db = open_database(url, status_file=tmp_path / "unused.json")
    try:
        db.update({"probe/ok": True})
    finally:
        db.close()
    assert rtdb.rest("GET", "probe") == {"ok": True}


@pytest.mark.parametrize("url", ["ftp://x.firebaseio.com", "http://localhost:9000", "books"])
def test_a_database_url_that_is_not_one_is_a_usage_error(url: str, tmp_path: Path):
    with pytest.raises(UsageError, match="not a Realtime Database URL"):
        open_database(url, status_file=tmp_path / "s.json")


def test_missing_credentials_give_a_hint_and_never_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    key_file = tmp_path / "key.json"
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWxlYWs"
    private_key = f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"
    key_file.write_text(json.dumps({"type": "service_account", "private_key": private_key}))
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))

    with pytest.raises(DatabaseError) as caught:
        open_database("https://narrate-nowhere.firebaseio.com", status_file=tmp_path / "s.json")
    assert caught.value.hint == CREDENTIALS_HINT
    assert secret not in str(caught.value)


def test_permission_denied_stops_the_run_with_a_hint(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    server.denied.add(rtdb.namespace)
    status = writer(remote, max_wait=0.05)
    # Once the timer (or the read of the database's clock) has met the error, after
    # google-auth's own resends, the next call raises it instead of losing it.
    deadline = time.monotonic() + 10
    with pytest.raises(DatabaseError) as caught:
        while time.monotonic() < deadline:
            status.processing("b")
            time.sleep(0.02)
    assert caught.value.hint == PERMISSION_HINT
    # Not retried by narrate (google-auth itself resends a 401 twice after refreshing the token).
    assert len(server.requests(rtdb.namespace)) <= 3
    with pytest.raises(DatabaseError):
        status.close()


def test_a_missing_index_names_the_rule_to_add(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with RTDBServer(indexes=set()) as server:  # enforces indexes as the real database does
        monkeypatch.setenv(EMULATOR_ENV, server.host_port)
        db = open_database("https://indexless.firebaseio.com", status_file=tmp_path / "s.json")
        try:
            with pytest.raises(DatabaseError, match="Index not defined") as caught:
                list(requested_books(db))
        finally:
            db.close()
    assert '".indexOn": ["narrativeAudioStatus"]' in caught.value.hint


# ---- the status lifecycle ----------------------------------------------------


def test_lifecycle_fields_exactly_as_specified(database: Database):
    status = writer(database, run_id="run-1", lease_s=600)
    before = time.time() * 1000
    status.processing("b1")
    status.flush()
    record = status.record("b1")
    assert record.keys() == {STATUS, UPDATED_AT, LEASE_RUN, LEASE_EXPIRES}
    assert record[STATUS] == "processing" and record[LEASE_RUN] == "run-1"
    assert before + 590_000 < record[LEASE_EXPIRES] < time.time() * 1000 + 610_000
    assert isinstance(record[UPDATED_AT], int) and record[UPDATED_AT] > 1.6e12  # epoch ms

    status.failed("b1", "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA oom")
    status.flush()
    assert without_timestamps(status.record("b1")) == {
        STATUS: "failed",
        ERROR: "RuntimeError: CUDA oom",
    }

    publish(status, "b1")
    assert status.close() == []
    assert status.record("b1") == {
        "narrativeAudioStatus": "ready",
        "narrativeAudioUrl": "https://example.test/b1.wav",
        "narrativeUpdatedAt": status.record("b1")[UPDATED_AT],
        "narrativeAudioDuration": 12.346,
        "narrativeAudioPath": "narrations/b1.wav",
        "narrativeAudioFormat": "wav",
        "narrativeWatermarkPayload": 4242,
        "narrativeContentHash": "hash-1",
    }  # the error of the failed attempt is gone


def test_fields_the_site_owns_are_left_alone(database: Database):
    database.update({"books/b1/narrative": "Once upon a time.", "books/b1/title": "T"})
    status = writer(database)
    publish(status, "b1")
    status.close()
    record = status.record("b1")
    assert record["narrative"] == "Once upon a time." and record["title"] == "T"
    assert record.keys() >= READY_FIELDS


def test_reapplying_the_same_status_converges(database: Database):
    status = writer(database)
    status.processing("b1")
    publish(status, "b1")
    status.flush()
    first = status.record("b1")
    publish(status, "b1")
    status.close()
    again = writer(database)  # a rerun
    publish(again, "b1")
    again.close()
    assert without_timestamps(again.record("b1")) == without_timestamps(first)
    assert again.record("b1")[UPDATED_AT] >= first[UPDATED_AT]


def test_a_custom_path_template(database: Database):
    status = writer(database, path_template="catalog/{book_id}/audio")
    status.processing("b1")
    status.close()
    assert database.get("catalog/b1/audio")[STATUS] == "processing"
    assert database.get("books") is None


def test_the_timer_flushes_without_being_asked(database: Database):
    status = writer(database, max_wait=0.1)
    publish(status, "b1")
    deadline = time.monotonic() + 10
    while status.record("b1") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status.record("b1")[STATUS] == "ready"
    status.close()


def test_a_thousand_books_take_a_handful_of_requests(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    status = writer(remote)
    ids = [f"book-{i:04d}" for i in range(1000)]
    for book_id in ids:
        status.processing(book_id)
    assert status.flush() == []
    for book_id in ids:
        publish(status, book_id)
    assert status.close() == []

    patches = server.requests(rtdb.namespace, "PATCH")
    assert len(patches) <= 2000 / 250  # 2 x 1000 updates
    assert all(r.body_bytes <= 1_000_000 for r in patches)
    books = rtdb.rest("GET", "books")
    assert sorted(books) == ids
    assert all(r[STATUS] == "ready" and r.keys() >= READY_FIELDS for r in books.values())


def test_a_burst_is_sent_as_soon_as_a_batch_is_full_not_when_the_timer_fires(
    rtdb: RTDBTarget, remote: Database
):
    server = rtdb.require_server()
    status = writer(remote, batch_books=250, max_wait=60.0)
    for i in range(600):
        publish(status, f"b{i:03d}")
    # Each time 250 books wait they go out (with any that joined them meanwhile): long before
    # the 60 s timer, fewer than one batch's worth can still be waiting.
    sent_by_burst = 600 - 249
    deadline = time.monotonic() + 10
    while len(rtdb.rest("GET", "books") or {}) < sent_by_burst and time.monotonic() < deadline:
        time.sleep(0.05)

    assert len(rtdb.rest("GET", "books")) >= sent_by_burst
    assert status.close() == []
    patches = server.requests(rtdb.namespace, "PATCH")
    assert len(patches) <= 3 and len(rtdb.rest("GET", "books")) == 600


def test_books_trickling_in_share_a_request_every_max_wait(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    status = writer(remote, max_wait=0.5)
    started = time.monotonic()
    for i in range(30):  # 20 books/s for 1.5 s
        publish(status, f"b{i:02d}")
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while len(rtdb.rest("GET", "books") or {}) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    waited = time.monotonic() - started

    assert len(rtdb.rest("GET", "books")) == 30 and waited < 1.5 + 0.5 + 1.0  # none lags long
    assert len(server.requests(rtdb.namespace, "PATCH")) <= 4
    status.close()


def test_batches_respect_both_bounds(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    status = writer(remote, max_books=30, max_bytes=8_000)
    for i in range(100):
        status.processing(f"b{i}")
    status.flush()
    by_count = len(server.requests(rtdb.namespace, "PATCH"))
    for i in range(100):
        publish(status, f"b{i}")  # ~400 bytes each: the byte bound binds first
    status.close()
    patches = server.requests(rtdb.namespace, "PATCH")
    assert by_count == 4  # ceil(100 / 30)
    assert len(patches) - by_count >= 5
    assert all(r.body_bytes <= 8_000 for r in patches)
    assert len(rtdb.rest("GET", "books")) == 100


def test_updates_queued_twice_are_sent_once_with_the_latest_fields(
    rtdb: RTDBTarget, remote: Database
):
    server = rtdb.require_server()
    status = writer(remote)
    status.processing("b1")
    status.failed("b1", "first try")
    publish(status, "b1")
    status.close()
    assert len(server.requests(rtdb.namespace, "PATCH")) == 1
    record = rtdb.rest("GET", "books/b1")
    assert record[STATUS] == "ready" and ERROR not in record


def lifecycle(db: Database, ids: list[str]) -> list[str]:
    """A run's database traffic: the queue read, processing, ready or failed, record checks."""
    status = writer(db, max_books=20)
    queued = [b.book_id for b in requested_books(db, page_size=15, backoff=0.01)]
    assert queued == ids
    for book_id in ids:
        status.processing(book_id)
    failed = status.flush()
    for n, book_id in enumerate(ids):
        if n % 7 == 3:
            status.failed(book_id, f"book {book_id} failed the integrity gate")
        else:
            publish(status, book_id, content_hash=f"h-{book_id}")
    failed += status.close()
    assert status.record(ids[0])[STATUS] == "ready"
    return failed


def test_faults_converge_to_the_fault_free_state(
    rtdb_server: RTDBServer | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    if rtdb_server is None:
        pytest.skip(f"fault injection needs the test server; {EMULATOR_ENV} is set")
    monkeypatch.setenv(EMULATOR_ENV, rtdb_server.host_port)
    ids = sorted(f"bk{i:03d}" for i in range(120))
    finals = {}
    for name, faults in {
        "clean": {},
        "faulty": {"unavailable": 0.2, "throttled": 0.05, "dropped": 0.05, "seed": 7},
    }.items():
        url = f"https://narrate-{name}-{time.time_ns()}.firebaseio.com"
        db = open_database(url, status_file=tmp_path / "unused.json", timeout=5)
        db.update(
            {f"books/{i}/{STATUS}": "requested" for i in ids}
            | {f"books/{i}/narrative": f"Text of {i}." for i in ids}
        )
        with rtdb_server.faults(**faults):
            assert lifecycle(db, ids) == []  # every book's update got through in the end
        finals[name] = without_timestamps(db.get("books"))
        db.close()
        namespace = url.removeprefix("https://").split(".")[0]
        codes = {r.status for r in rtdb_server.requests(namespace)}
        assert codes >= ({503, 429, 0} if faults else set())  # the faults did happen
    assert finals["faulty"] == finals["clean"]
    assert sum(r[STATUS] == "ready" for r in finals["clean"].values()) == 120 - 17


def test_a_database_still_unavailable_after_retries_stops_the_writer(
    rtdb: RTDBTarget, remote: Database
):
    server = rtdb.require_server()
    status = writer(remote, retries=2, max_books=3)
    status.clock.now_ms()  # the database's clock is read once, before the outage
    with server.faults(throttled=1.0):  # 429 on everything; the SDK itself does not retry it
        for i in range(5):
            status.processing(f"b{i}")
        with pytest.raises(DatabaseUnusable, match="429"):
            status.flush()
        # the first batch tried 3 times; the second was not sent to a database known down
        assert len(server.requests(rtdb.namespace, "PATCH")) == 3
    with pytest.raises(DatabaseUnusable):
        publish(status, "b0")  # a run stops here rather than failing its books one by one
    with pytest.raises(DatabaseUnusable):
        status.check()


def test_a_refused_update_fails_only_its_books(rtdb: RTDBTarget, remote: Database):
    status = writer(remote, max_books=1, path_template="books/{book_id}")
    status.processing("b0")
    status.failed("bad.id", "a key the database refuses")  # "." is not allowed in a key
    status.processing("b2")
    assert status.flush() == ["bad.id"]
    status.check()  # the writer carries on
    publish(status, "b0")
    assert status.close() == []
    assert sorted(rtdb.rest("GET", "books")) == ["b0", "b2"]


def test_a_lease_is_renewed_while_held_and_released_when_settled(database: Database):
    status = writer(database, run_id="run-1", lease_s=0.6)
    status.processing("b1")
    status.processing("b2", QUEUED)
    status.flush()
    first = status.record("b1")[LEASE_EXPIRES]
    time.sleep(0.5)  # the timer renews after lease_s / 3
    assert status.record("b1")[LEASE_EXPIRES] > first
    publish(status, "b1")
    status.release("b2")
    status.close()
    assert status.held() == []
    assert LEASE_RUN not in status.record("b1") and LEASE_EXPIRES not in status.record("b1")
    assert without_timestamps(status.record("b2")) == {STATUS: "requested"}


def published_record(book_id: str) -> dict[str, object]:
    return {
        STATUS: "ready",
        URL: f"https://example.test/{book_id}.wav?v=1",
        "narrativeContentHash": "hash-0",
        "narrative": "The site's own text.",
    }


def test_a_re_render_keeps_the_published_audio_until_the_new_file_replaces_it(
    database: Database,
):
    database.update({"books/b1": published_record("b1")})
    status = writer(database, run_id="run-1")
    status.processing("b1", status.prior("b1"))
    status.flush()
    during = status.record("b1")
    assert during[STATUS] == "ready" and during[URL] == "https://example.test/b1.wav?v=1"
    assert during[RENDER]["status"] == "processing" and during[RENDER]["runId"] == "run-1"
    assert LEASE_EXPIRES not in during  # the lease is the re-render's own
    publish(status, "b1", content_hash="hash-1")
    status.flush()
    after = status.record("b1")
    assert after[URL] == "https://example.test/b1.wav" and after["narrativeContentHash"] == "hash-1"
    assert after[STATUS] == "ready" and RENDER not in after
    status.close()


def test_a_failed_re_render_leaves_the_published_audio_ready_with_the_error_beside_it(
    database: Database,
):
    database.update({"books/b1": published_record("b1")})
    status = writer(database)
    status.processing("b1", status.prior("b1"))
    status.failed("b1", "chunk 3 failed: the engine ran out of memory")
    status.close()
    record = status.record("b1")
    assert record[STATUS] == "ready" and record[URL] == "https://example.test/b1.wav?v=1"
    assert record[RENDER]["status"] == "failed"
    assert "out of memory" in record[RENDER]["error"] and ERROR not in record
    assert "leaseExpiresAt" not in record[RENDER]


def test_a_stop_puts_back_exactly_what_each_record_held(database: Database):
    database.update(
        {"books/published": published_record("published")}
        | {"books/failed": {STATUS: "failed", ERROR: "old error", "narrative": "x"}}
        | {"books/asked": {STATUS: "requested", "narrative": "y"}}
        | {"books/fresh/narrative": "z"}
    )
    before = {k: without_timestamps(v) for k, v in database.get("books").items()}
    status = writer(database, run_id="run-1")
    for book_id in ("published", "failed", "asked", "fresh", "new"):
        status.processing(book_id, status.prior(book_id))
    status.flush()
    assert status.record("failed")[STATUS] == "processing"
    assert [status.release(b) for b in status.held()] == [
        "requested",
        "failed",
        None,
        None,
        "ready",
    ]
    status.close()
    after = {k: without_timestamps(v) for k, v in database.get("books").items()}
    assert after == before


def test_a_book_the_queue_gave_goes_back_to_the_queue(database: Database):
    database.update({"books/b1": {STATUS: "requested", "narrative": "Hi."}})
    status = writer(database)
    assert status.claim("b1")
    status.processing("b1", QUEUED)
    status.flush()
    assert status.release("b1") == "requested"
    status.close()
    assert without_timestamps(status.record("b1")) == {STATUS: "requested", "narrative": "Hi."}


@pytest.mark.parametrize("skew_s", [3600, -3600])
def test_leases_are_on_the_database_clock_whatever_the_host_clock(
    rtdb: RTDBTarget, remote: Database, skew_s: int
):
    def skewed() -> float:
        return time.time() + skew_s

    now_ms = time.time() * 1000
    rtdb.rest(
        "PATCH",
        "books",
        {
            "live": {STATUS: "processing", LEASE_EXPIRES: now_ms + 300_000, "narrative": "a"},
            "gone": {STATUS: "processing", LEASE_EXPIRES: now_ms - 5_000, "narrative": "b"},
        },
    )
    status = writer(remote, host_clock=skewed, lease_s=60)
    assert abs(status.clock.now_ms() - time.time() * 1000) < 2_000
    # an hour ahead it does not take the live lease; an hour behind it does not wait on the
    # expired one
    assert [b.book_id for b in requested_books(remote, host_clock=skewed)] == ["gone"]
    assert not status.claim("live")
    assert status.claim("gone")
    status.processing("gone", QUEUED)
    status.flush()
    deadline = rtdb.rest("GET", f"books/gone/{LEASE_EXPIRES}")
    assert abs(deadline - (time.time() * 1000 + 60_000)) < 3_000
    status.close()


def test_the_local_status_file_keeps_time_on_the_host_clock(tmp_path: Path):
    clock = ServerClock(LocalStatusFile(tmp_path / "s.json"), "books/x")
    assert abs(clock.now_ms() - time.time() * 1000) < 1_000


# ---- the request queue -------------------------------------------------------


def test_requested_books_are_exactly_the_requested_ones(database: Database):
    long_id = "x" * 200  # a valid database key, too long for an object name
    database.update(
        {f"books/r{i:02d}/{STATUS}": "requested" for i in range(12)}
        | {f"books/r{i:02d}/narrative": f"Story number {i}." for i in range(12)}
        | {"books/r05/title": "Five", "books/done/narrativeAudioStatus": "ready"}
        | {"books/done/narrative": "Already read.", "books/nostatus/narrative": "Hi."}
        | {"books/r03/narrative": None, "books/r04/narrative": "   ", "books/r07/narrative": 42}
        | {f"books/{long_id}/{STATUS}": "requested", f"books/{long_id}/narrative": "Long."}
    )
    found = list(requested_books(database, page_size=5))

    books = [b for b in found if isinstance(b, Book)]
    errors = {e.book_id: e for e in found if isinstance(e, RowError)}
    assert [b.book_id for b in books] == [f"r{i:02d}" for i in (0, 1, 2, 5, 6, 8, 9, 10, 11)]
    assert books[0] == Book(book_id="r00", row=1, text="Story number 0.")
    assert books[3].title == "Five"
    assert {k: (e.reason, e.field) for k, e in errors.items()} == {
        "r03": ("missing_text", "narrative"),
        "r04": ("empty_text", "narrative"),
        "r07": ("wrong_type", "narrative"),
        long_id: ("invalid_id", "book_id"),
    }
    assert [item.row for item in found] == list(range(1, 14))
    assert database.get("books/done")[STATUS] == "ready"  # untouched


def test_requested_books_read_in_pages(rtdb: RTDBTarget, remote: Database):
    server = rtdb.require_server()
    remote.update(
        {f"books/q{i:03d}/{STATUS}": "requested" for i in range(23)}
        | {f"books/q{i:03d}/summary": f"Text {i}." for i in range(23)}
    )
    found = list(requested_books(remote, text_field="summary", page_size=10))
    assert [b.text for b in found] == [f"Text {i}." for i in range(23)]
    queries = [r for r in server.requests(rtdb.namespace, "GET") if "orderBy" in r.params]
    assert all(json.loads(r.params["orderBy"]) == STATUS for r in queries)
    # three pages of requests, then one (empty) of records left processing
    asked = [
        json.loads(r.params.get("equalTo", r.params.get("startAt", "")).split(",")[0])
        for r in queries
    ]
    assert asked == ["requested"] * 3 + ["processing"]


def test_the_queue_takes_processing_records_whose_lease_expired(database: Database):
    now_ms = time.time() * 1000
    database.update(
        {f"books/{b}/narrative": f"Text of {b}." for b in ("req", "gone", "old", "live")}
        | {"books/req/narrativeAudioStatus": "requested"}
        # left by a killed run: its lease ran out a minute ago
        | {"books/gone/narrativeAudioStatus": "processing", "books/gone/narrativeLeaseRun": "r1"}
        | {"books/gone/narrativeLeaseExpiresAt": now_ms - 60_000}
        # left by a run from before leases
        | {"books/old/narrativeAudioStatus": "processing"}
        # a run working on it now
        | {"books/live/narrativeAudioStatus": "processing", "books/live/narrativeLeaseRun": "r2"}
        | {"books/live/narrativeLeaseExpiresAt": now_ms + 600_000}
    )
    found = list(requested_books(database, page_size=1, now_ms=now_ms))
    assert [(b.book_id, b.row) for b in found] == [("req", 1), ("gone", 2), ("old", 3)]


def test_of_two_runs_claiming_one_requested_book_exactly_one_takes_it(database: Database):
    database.update({"books/b1/narrativeAudioStatus": "requested", "books/b1/narrative": "Hi."})
    first, second = writer(database, run_id="run-1"), writer(database, run_id="run-2")
    # both read the queue before either marked the book: only the conditional write decides
    assert [b.book_id for b in requested_books(database)] == ["b1"]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda status: status.claim("b1"), [first, second] * 4))
    assert won.count(True) == 1
    # a book just claimed is no longer offered, though its `processing` mark is not sent yet
    assert list(requested_books(database)) == []
    first.close()
    second.close()


def test_a_claim_takes_a_released_or_expired_lease_and_never_a_live_one(database: Database):
    now_ms = time.time() * 1000
    database.update(
        {"books/gone/narrativeLeaseExpiresAt": now_ms - 60_000}
        | {"books/live/narrativeLeaseExpiresAt": now_ms + 600_000}
        | {"books/released/narrativeAudioStatus": "requested"}
    )
    status = writer(database, run_id="run-3", lease_s=60)
    assert status.claim("gone") and status.claim("released")
    assert not status.claim("live")
    assert database.get("books/live/narrativeLeaseExpiresAt") == now_ms + 600_000
    assert database.get("books/gone/narrativeLeaseExpiresAt") > now_ms + 50_000
    status.close()


# ---- the local status file and error text ------------------------------------


def test_the_local_status_file_is_replaced_atomically_and_survives_reopening(tmp_path: Path):
    path = tmp_path / "out" / "status.json"
    status = writer(LocalStatusFile(path))
    publish(status, "b1")
    status.close()
    assert json.loads(path.read_text())["books"]["b1"][STATUS] == "ready"
    assert [p.name for p in path.parent.iterdir() if p.name != ".status.json.lock"] == [
        "status.json"
    ]  # no temp file left

    reopened = writer(LocalStatusFile(path))
    assert reopened.record("b1")["narrativeContentHash"] == "hash-1"
    reopened.close()


def _write_statuses(path: str, prefix: str, count: int) -> None:
    """One shard of a run without --database: its own writer on the shared status file."""
    status = StatusWriter(LocalStatusFile(Path(path)), batch_books=3, max_wait=0.01)
    for i in range(count):
        status.processing(f"{prefix}{i}")
        publish(status, f"{prefix}{i}")
        time.sleep(0.002)
    assert status.close() == []


def test_two_processes_sharing_a_status_file_keep_every_book(tmp_path: Path):
    path = tmp_path / "out" / "status.json"
    LocalStatusFile(path).update({"books/earlier/narrativeAudioStatus": "ready"})
    context = multiprocessing.get_context("spawn")
    shards = [
        context.Process(target=_write_statuses, args=(str(path), prefix, 40))
        for prefix in ("a", "b")
    ]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join(60)

    assert [shard.exitcode for shard in shards] == [0, 0]
    books = json.loads(path.read_text())["books"]
    assert len(books) == 81
    assert all(books[f"{p}{i}"][STATUS] == "ready" for p in "ab" for i in range(40))


def test_a_corrupt_status_file_is_reported(tmp_path: Path):
    path = tmp_path / "status.json"
    path.write_text('{"books": {')
    with pytest.raises(DatabaseError, match="cannot read the status file"):
        open_database(None, status_file=path)


def test_error_text_is_short_and_holds_no_secrets():
    text = (
        "Traceback (most recent call last):\n  File 'a.py', line 1\n"
        "HTTPError: 403 for https://x.test/o?alt=media&token=0a1b2c3d-aaaa-bbbb&x=1 "
        "Authorization: Bearer ya29.A0ARrdaM-secret api_key=AIzaSyD-abcdefghijklmnopqrstuvwxyz12345"
        " sig=" + "f" * 64
    )
    short = short_error(text)
    for secret in ("0a1b2c3d", "ya29.A0", "AIzaSy", "f" * 40, "Traceback", "line 1"):
        assert secret not in short
    assert short.startswith("HTTPError: 403 for https://x.test/o?alt=media&token=[redacted]")
    assert len(short_error("word " * 400)) == 300
    assert "\n" not in short_error("one\ntwo")


def test_record_fields_reads_only_those_fields(rtdb) -> None:
    server = rtdb.require_server()
    narrative = "A long narrative the site stores beside our fields. " * 200
    record = {"narrative": narrative, STATUS: "ready", "narrativeContentHash": "abc"}
    rtdb.rest("PUT", "books/b1", record)
    db = open_database(rtdb.url, status_file=Path("/nonexistent/status.json"))
    writer = StatusWriter(db)
    try:
        fields = (STATUS, "narrativeContentHash")
        assert writer.record("b1", fields) == {STATUS: "ready", "narrativeContentHash": "abc"}
        assert writer.record("missing", fields) is None
        reads = [r.path.strip("/") for r in server.requests(rtdb.namespace, "GET")]
        assert reads and all(path.rsplit("/", 1)[-1] in fields for path in reads)
        assert writer.record("b1")["narrative"] == narrative
    finally:
        writer.close()
        db.close()


def test_a_held_status_file_lock_is_logged_with_its_holder_while_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import fcntl
    import logging
    import threading

    db = LocalStatusFile(tmp_path / "status.json")
    with (tmp_path / ".status.json.lock").open("w") as held:
        held.write("pid 4242 on somehost\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="narrate.database"):
            writer_thread = threading.Thread(target=db.update, args=({"books/b1/x": 1},))
            writer_thread.start()
            deadline = time.monotonic() + 10
            while "waiting for the lock" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "held by pid 4242 on somehost" in caplog.text
            assert writer_thread.is_alive()  # it waits, and says so
            fcntl.flock(held, fcntl.LOCK_UN)
            writer_thread.join(10)
    assert db.get("books/b1/x") == 1
