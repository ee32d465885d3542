"""Storage targets (local folder, Cloud Storage through the real fake-gcs-server) and Uploader."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from support.gcs import FakeGcs, FaultyProxy

from narrate.errors import StorageError, StorageUnusable, UsageError
from narrate.publish import Uploader
from narrate.records import Book, EncodedBook
from narrate.storage import (
    TOKEN_KEY,
    Storage,
    StoredObject,
    open_storage,
    open_uri,
)

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}
COMMON_META = {"model": "sesame/csm-1b", "voice": "narrator"}


def book(
    book_id: str, fmt: str = "mp3", *, version: int = 1, payload: int | None = 7
) -> EncodedBook:
    data = f"{book_id} v{version} ".encode() * 200
    return EncodedBook(
        book_id=book_id,
        data=data,
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        duration_s=12.5,
        content_hash=f"hash-{book_id}-{version}",
        watermark_payload=payload,
    )


def raw_object(server: FakeGcs, bucket: str, key: str) -> dict:
    """The object's resource as the JSON API returns it (independent of the code under test)."""
    url = f"{server.url}/storage/v1/b/{bucket}/o/{quote(key, safe='')}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture(params=["local", "gcs"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "out"))
    bucket = request.getfixturevalue("gcs_bucket")
    return open_storage(f"gs://{bucket}/some/prefix")


# --- the Storage protocol, on both backends -----------------------------------------------


def test_put_get_stat_list_delete(storage: Storage) -> None:
    stored = storage.put(
        "narrations/a.wav", b"RIFF-a", content_type="audio/wav", metadata={"contentHash": "h1"}
    )
    assert stored is not None
    assert (stored.name, stored.size, stored.content_type) == ("narrations/a.wav", 6, "audio/wav")
    storage.put("narrations/b.wav", b"RIFF-bb")
    storage.put("cache/ab/abc.flac", b"fLaC")

    assert storage.get("narrations/a.wav") == b"RIFF-a"
    stat = storage.stat("narrations/a.wav")
    assert stat is not None
    assert (stat.size, stat.content_type, dict(stat.metadata)) == (
        6,
        "audio/wav",
        {"contentHash": "h1"},
    )
    assert sorted(storage.list()) == ["cache/ab/abc.flac", "narrations/a.wav", "narrations/b.wav"]
    assert sorted(storage.list("narrations/")) == ["narrations/a.wav", "narrations/b.wav"]
    assert list(storage.list("cache/ab/ab")) == ["cache/ab/abc.flac"]

    storage.delete("narrations/a.wav")
    storage.delete("narrations/a.wav")  # deleting what is gone is not an error
    assert storage.get("narrations/a.wav") is None
    assert storage.stat("narrations/a.wav") is None
    assert sorted(storage.list()) == ["cache/ab/abc.flac", "narrations/b.wav"]


def test_overwrite_false_keeps_the_existing_object(storage: Storage) -> None:
    first = storage.put("c/x.flac", b"first", metadata={"seed": "1"}, overwrite=False)
    assert first is not None
    assert storage.put("c/x.flac", b"second", metadata={"seed": "2"}, overwrite=False) is None
    assert storage.get("c/x.flac") == b"first"
    stat = storage.stat("c/x.flac")
    assert stat is not None and stat.metadata == {"seed": "1"}


def test_overwrite_replaces_data_and_metadata(storage: Storage) -> None:
    first = storage.put("x.wav", b"one", metadata={"contentHash": "1"})
    second = storage.put("x.wav", b"two!", metadata={"contentHash": "2"}, content_type="audio/wav")
    assert first is not None and second is not None
    assert storage.get("x.wav") == b"two!"
    stat = storage.stat("x.wav")
    assert stat is not None
    assert (stat.size, stat.content_type, stat.metadata) == (4, "audio/wav", {"contentHash": "2"})
    assert stat.generation == second.generation
    if first.generation is not None:  # Cloud Storage: a new generation replaced the old one
        assert second.generation != first.generation


def test_concurrent_create_only_one_writer_wins(storage: Storage) -> None:
    writers = 8
    barrier = threading.Barrier(writers)
    results: dict[int, StoredObject | None] = {}

    def write(i: int) -> None:
        barrier.wait()
        results[i] = storage.put("race.flac", f"writer {i}".encode() * 50, overwrite=False)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, stored in results.items() if stored is not None]
    assert len(results) == writers and len(winners) == 1
    assert storage.get("race.flac") == f"writer {winners[0]}".encode() * 50


@pytest.mark.parametrize(
    "name", ["../escape.wav", "/abs.wav", "a/../../b", "a//b", ".hidden", "a\\b", "a\nb", ""]
)
def test_bad_names_are_rejected(storage: Storage, name: str, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError):
        storage.put(name, b"x")
    with pytest.raises(UsageError):
        storage.get(name)
    assert sorted(tmp_path.rglob("*")) == before


# --- local folder specifics ---------------------------------------------------------------


def test_local_never_writes_outside_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    storage = open_storage(str(root))
    (root / "link").symlink_to(outside)
    with pytest.raises(UsageError, match="outside"):
        storage.put("link/x.wav", b"x")
    assert list(outside.iterdir()) == []


def test_local_reads_through_links_that_stay_inside_its_root_and_refuses_one_that_leaves(
    tmp_path: Path,
) -> None:
    (tmp_path / "secret.txt").write_text("key")
    root = tmp_path / "out"
    storage = open_storage(str(root))
    storage.put("books/b1.wav", b"RIFF")
    (root / "alias").symlink_to(root / "books")
    (root / "books" / "leak.wav").symlink_to(tmp_path / "secret.txt")
    assert storage.get("alias/b1.wav") == b"RIFF"
    with pytest.raises(UsageError, match="outside"):
        storage.get("books/leak.wav")
    with pytest.raises(UsageError, match="outside"):
        storage.get("alias/leak.wav")


def test_local_leaves_only_plain_files_and_lists_no_sidecars(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/out")
    stored = storage.put("b1.wav", b"RIFF", content_type="audio/wav", metadata={"k": "v"})
    assert stored is not None
    assert storage.root == (tmp_path / "out").as_uri()
    visible = [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    assert visible == ["b1.wav"]
    assert not list((tmp_path / "out").glob("*.tmp")) and not list(
        (tmp_path / "out").glob(".*.tmp")
    )
    assert list(storage.list()) == ["b1.wav"]
    url = storage.url(stored, "token")
    assert url == (tmp_path / "out" / "b1.wav").as_uri()
    assert Path(urlsplit(url).path).read_bytes() == b"RIFF"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_local_outputs_and_cache_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    """A published file and a cached chunk get the permissions any program's files get."""
    script = (
        "import os, sys\n"
        f"os.umask({umask:#o})\n"
        "from narrate.storage import open_storage\n"
        "out = open_storage(sys.argv[1])\n"
        "out.put('book.wav', b'RIFF', overwrite=True)\n"
        "out.put('ab/chunk.flac', b'fLaC', overwrite=False)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)

    for name in ("book.wav", "ab/chunk.flac"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_local_file_without_sidecar_still_stats(tmp_path: Path) -> None:
    (tmp_path / "old.mp3").write_bytes(b"ID3")
    stat = open_storage(str(tmp_path)).stat("old.mp3")
    assert stat is not None and (stat.size, stat.content_type, stat.metadata) == (
        3,
        "audio/mpeg",
        {},
    )


# --- Cloud Storage specifics --------------------------------------------------------------


def test_gcs_objects_live_under_the_prefix(gcs_bucket: str, fake_gcs: FakeGcs) -> None:
    storage = open_storage(f"gs://{gcs_bucket}/run-1/")
    assert storage.root == f"gs://{gcs_bucket}/run-1"
    storage.put("n/a.wav", b"abc", content_type="audio/wav", cache_control="no-store")
    resource = raw_object(fake_gcs, gcs_bucket, "run-1/n/a.wav")
    assert (resource["contentType"], resource["cacheControl"], resource["size"]) == (
        "audio/wav",
        "no-store",
        "3",
    )


def test_gcs_stale_generation_is_refused_by_the_server(gcs_bucket: str) -> None:
    """The precondition our writes rely on is enforced by the server, not just by us."""
    from google.api_core.exceptions import PreconditionFailed

    from narrate.storage import gcs_client

    storage = open_storage(f"gs://{gcs_bucket}")
    first = storage.put("x", b"1")
    storage.put("x", b"2")
    assert first is not None
    blob = gcs_client().bucket(gcs_bucket).blob("x")
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string(b"3", if_generation_match=first.generation, timeout=10)
    assert storage.get("x") == b"2"


def test_open_uri_reads_local_and_gs(gcs_bucket: str, tmp_path: Path) -> None:
    storage = open_storage(f"gs://{gcs_bucket}/texts")
    storage.put("book.txt", "Once upon a time… ünïcode".encode())
    with open_uri(f"gs://{gcs_bucket}/texts/book.txt") as stream:
        assert stream.read().decode() == "Once upon a time… ünïcode"
        stream.seek(5)
        assert stream.read(4) == b"upon"
    (tmp_path / "m.jsonl").write_bytes(b'{"book_id": "a"}\n')
    for uri in (str(tmp_path / "m.jsonl"), f"file://{tmp_path}/m.jsonl"):
        with open_uri(uri) as stream:
            assert stream.read() == b'{"book_id": "a"}\n'
    with pytest.raises(FileNotFoundError):
        open_uri(f"gs://{gcs_bucket}/texts/missing.txt")


def test_manifests_and_texts_are_read_from_gs(gcs_bucket: str) -> None:
    """The manifest reader and `text_uri` go through open_uri: both formats, both fields."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from narrate.manifest import read_manifest
    from narrate.sources import TextFetcher

    storage = open_storage(f"gs://{gcs_bucket}")
    storage.put("texts/b2.txt", b"The second book, from a text file.")
    rows = [
        {"book_id": "b1", "text": "The first book.", "text_uri": None},
        {"book_id": "b2", "text": None, "text_uri": f"gs://{gcs_bucket}/texts/b2.txt"},
    ]
    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    storage.put("m/catalog.parquet", parquet.getvalue())
    storage.put("m/catalog.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    for name in ("catalog.parquet", "catalog.jsonl"):
        books = list(read_manifest(f"gs://{gcs_bucket}/m/{name}"))
        assert [b.book_id for b in books if isinstance(b, Book)] == ["b1", "b2"], books
        load_text = TextFetcher(None, 1_000)  # gs:// texts need no local root
        assert [load_text(b) for b in books if isinstance(b, Book)] == [
            "The first book.",
            "The second book, from a text file.",
        ]


def test_missing_bucket_is_a_clear_error(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    storage = open_storage("gs://no-such-bucket-here/out")
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.put("a.wav", b"x")
    with pytest.raises(StorageError, match="bucket does not exist"):
        list(storage.list())


def test_signed_urls_are_refused_against_the_emulator(gcs_bucket: str) -> None:
    storage = open_storage(f"gs://{gcs_bucket}")
    stored = storage.put("a.wav", b"x")
    assert stored is not None
    with pytest.raises(StorageError, match="emulator"):
        storage.url(stored, "signed")


# --- credentials --------------------------------------------------------------------------


def service_account_file(tmp_path: Path, private_key: str) -> Path:
    info = {
        "type": "service_account",
        "project_id": "narrate-test",
        "private_key_id": "key-1",
        "private_key": private_key,
        "client_email": "narrate@narrate-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    return path


@pytest.fixture
def real_gcs_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No emulator: the code talks (or would talk) to the real Cloud Storage."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    return monkeypatch


def test_missing_credentials_give_a_hint(real_gcs_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_gcs_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(StorageError) as error:
        open_storage("gs://narrate-books/out")
    assert "credentials" in error.value.message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in (error.value.hint or "")


def test_broken_key_file_is_not_echoed(
    real_gcs_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "MIIEsecret" + uuid.uuid4().hex
    key = f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"
    real_gcs_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, key)))
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as error:
        open_storage("gs://narrate-books/out")
    assert secret not in str(error.value) and secret not in caplog.text
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_signed_and_token_urls_for_real_cloud_storage(
    real_gcs_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A service-account key signs V4 URLs locally (no request is made)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    real_gcs_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path, pem)))
    storage = open_storage("gs://narrate-books/audio")
    obj = StoredObject("narrations/b 1.mp3", 3, "audio/mpeg", {TOKEN_KEY: "tok-1,tok-0"})

    assert storage.url(obj, "token") == (
        "https://firebasestorage.googleapis.com/v0/b/narrate-books/o/"
        "audio%2Fnarrations%2Fb%201.mp3?alt=media&token=tok-1"
    )
    assert storage.url(obj, "public") == (
        "https://storage.googleapis.com/narrate-books/audio/narrations/b%201.mp3"
    )
    assert storage.url(obj, "gs") == "gs://narrate-books/audio/narrations/b 1.mp3"
    with caplog.at_level(logging.WARNING, logger="narrate.storage"):
        signed = storage.url(obj, "signed")
    query = parse_qs(urlsplit(signed).query)
    assert signed.startswith(
        "https://storage.googleapis.com/narrate-books/audio/narrations/b%201.mp3?"
    )
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["604800"]  # 7 days, the V4 maximum
    assert len(query["X-Goog-Signature"][0]) == 512
    assert "will break" in caplog.text
    with pytest.raises(UsageError):
        storage.url(obj, "ftp")


@contextlib.contextmanager
def bucket_answering(
    status: int, gcs_bucket: str, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    """The bucket behind a proxy that answers every request with `status`."""
    with FaultyProxy(fake_gcs.url, fixed_status=status) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield open_storage(f"gs://{gcs_bucket}")


def test_permission_denied_names_the_role(
    gcs_bucket: str, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bucket_answering(403, gcs_bucket, fake_gcs, monkeypatch) as storage:
        with pytest.raises(StorageError, match="permission denied") as error:
            storage.put("a.wav", b"x")
        assert "roles/storage" in (error.value.hint or "")
        # not one book's problem: the uploader stops instead of failing every book in turn
        with pytest.raises(StorageUnusable, match="permission denied"):
            Uploader(storage).upload([book("b1"), book("b2")], COMMON_META)


def test_a_request_refused_for_one_object_fails_only_that_book(
    gcs_bucket: str, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bucket_answering(400, gcs_bucket, fake_gcs, monkeypatch) as storage:
        (upload,) = Uploader(storage).upload([book("b1")], COMMON_META)
    assert not upload.ok and upload.url is None and "cannot stat" in (upload.error or "")


# --- Uploader ---------------------------------------------------------------------------


def test_uploader_objects_metadata_and_token_urls(gcs_bucket: str, fake_gcs: FakeGcs) -> None:
    storage = open_storage(f"gs://{gcs_bucket}")
    books = [
        book("b-wav", "wav"),
        book("b-flac", "flac", payload=None),
        book("b-mp3", "mp3"),
        book("b-opus", "opus"),
    ]
    uploads = Uploader(storage, cache_control="public, max-age=600").upload(books, COMMON_META)

    assert [u.book_id for u in uploads] == [b.book_id for b in books]
    for encoded, upload in zip(books, uploads, strict=True):
        key = f"narrations/{encoded.book_id}.{encoded.format}"
        resource = raw_object(fake_gcs, gcs_bucket, key)
        metadata = resource["metadata"]
        token = metadata[TOKEN_KEY]
        assert (upload.name, upload.uploaded, upload.error) == (key, True, None)
        assert resource["contentType"] == CONTENT_TYPES[encoded.format]
        assert resource["cacheControl"] == "public, max-age=600"
        assert metadata == {
            "bookId": encoded.book_id,
            "generatedAt": metadata["generatedAt"],
            "contentHash": encoded.content_hash,
            "model": "sesame/csm-1b",
            "voice": "narrator",
            "watermarked": "false" if encoded.watermark_payload is None else "true",
            "watermarkPayload": "" if encoded.watermark_payload is None else "7",
            TOKEN_KEY: token,
        }
        assert datetime.fromisoformat(metadata["generatedAt"]).tzinfo is not None
        assert uuid.UUID(token)
        assert upload.url == (
            f"{fake_gcs.url}/v0/b/{gcs_bucket}/o/{quote(key, safe='')}?alt=media&token={token}"
        )
        assert storage.get(key) == encoded.data

    public = Uploader(storage, url_style="public").upload(books[:1], COMMON_META)[0]
    assert fetch(public.url or "") == books[0].data
    gs = Uploader(storage, url_style="gs").upload(books[:1], COMMON_META)[0]
    assert gs.url == f"gs://{gcs_bucket}/narrations/b-wav.wav"


def test_uploader_rerun_uploads_nothing_and_changes_keep_the_token(storage: Storage) -> None:
    uploader = Uploader(storage, workers=4)
    books = [book(f"b{i}") for i in range(6)]
    first = uploader.upload(books, COMMON_META)
    stats = {u.name: storage.stat(u.name) for u in first}
    generations = {name: stat.generation for name, stat in stats.items() if stat}

    rerun = uploader.upload(books, COMMON_META)
    assert [(u.uploaded, u.error) for u in rerun] == [(False, None)] * 6
    assert [u.url for u in rerun] == [u.url for u in first]
    assert {u.name: getattr(storage.stat(u.name), "generation", -1) for u in rerun} == generations

    changed = [book("b2", version=2), *books[3:]]
    again = uploader.upload(changed, COMMON_META)
    assert [u.uploaded for u in again] == [True, False, False, False]
    assert again[0].url == first[2].url  # the token survives, so the old link keeps working
    assert storage.get("narrations/b2.mp3") == changed[0].data
    stat, old = storage.stat("narrations/b2.mp3"), stats["narrations/b2.mp3"]
    assert stat is not None and old is not None
    assert stat.metadata["contentHash"] == "hash-b2-2"
    assert stat.metadata[TOKEN_KEY] == old.metadata[TOKEN_KEY]


def test_uploader_reports_per_book_errors_and_publishes_the_rest(storage: Storage) -> None:
    books = [book("ok-1"), book("../evil"), book("ok-2")]
    uploads = Uploader(storage).upload(books, COMMON_META)
    assert [u.ok for u in uploads] == [True, False, True]
    assert "invalid object name" in (uploads[1].error or "")
    assert sorted(storage.list()) == ["narrations/ok-1.mp3", "narrations/ok-2.mp3"]


def test_uploader_concurrent_bulk(storage: Storage) -> None:
    books = [book(f"bulk-{i:03d}", ("wav", "mp3")[i % 2]) for i in range(40)]
    uploads = Uploader(storage, workers=8, object_template="books/{book_id}/audio.{ext}").upload(
        books, COMMON_META
    )
    assert all(u.ok and u.uploaded for u in uploads)
    assert sorted(storage.list("books/")) == sorted(
        f"books/{b.book_id}/audio.{b.format}" for b in books
    )
    for encoded in books[::7]:
        assert storage.get(f"books/{encoded.book_id}/audio.{encoded.format}") == encoded.data


def test_uploader_rejects_bad_settings(storage: Storage) -> None:
    with pytest.raises(UsageError):
        Uploader(storage, url_style="ftp")
    with pytest.raises(UsageError):
        Uploader(storage, object_template="narrations/{bookid}.{ext}")


# --- fault injection ----------------------------------------------------------------------


def upload_posts(proxy: FaultyProxy, status: int) -> int:
    """Uploads the server accepted (status 200) or refused (412), as seen through the proxy."""
    return sum(
        1
        for e in proxy.exchanges
        if e.method == "POST" and e.path.startswith("/upload/") and e.upstream_status == status
    )


@pytest.mark.slow
def test_replacing_changed_books_sends_each_file_once(gcs_bucket: str, fake_gcs: FakeGcs) -> None:
    # a catalog re-render replaces most objects: each one is uploaded once, naming the
    # generation that stat saw, not first sent as a new object and refused
    books = [book(f"r{i}", "wav") for i in range(4)]
    with FaultyProxy(fake_gcs.url) as proxy, pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        uploader = Uploader(open_storage(f"gs://{gcs_bucket}"), workers=1)
        assert all(u.uploaded for u in uploader.upload(books, COMMON_META))
        changed = [book(b.book_id, "wav", version=2) for b in books]
        assert all(u.uploaded and u.ok for u in uploader.upload(changed, COMMON_META))
        assert (upload_posts(proxy, 200), upload_posts(proxy, 412)) == (8, 0)
    for encoded in changed:
        url = f"{fake_gcs.url}/{gcs_bucket}/narrations/{encoded.book_id}.wav"
        assert fetch(url) == encoded.data


def test_uploads_survive_503s_and_dropped_connections(
    gcs_bucket: str, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = [book(f"f{i:02d}", "wav") for i in range(30)]
    with FaultyProxy(fake_gcs.url, fail_rate=0.2, drop_rate=0.1, seed=1) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        uploader = Uploader(open_storage(f"gs://{gcs_bucket}"), workers=8)

        first = uploader.upload(books, COMMON_META)
        assert [u.error for u in first] == [None] * 30 and all(u.uploaded for u in first)
        # every object was written exactly once: one accepted upload each, lost replies included
        assert upload_posts(proxy, 200) == 30
        # the faults hit the uploads themselves, including an accepted upload whose reply was lost
        faults = {
            (e.fate, e.upstream_status) for e in proxy.exchanges if e.path.startswith("/upload/")
        }
        assert {("503", None), ("drop-before", None), ("drop-after", 200)} <= faults

        changed = [book(f"f{i:02d}", "wav", version=2) for i in range(0, 30, 3)]
        accepted = upload_posts(proxy, 200)
        second = uploader.upload([*changed, *books[1:30:3]], COMMON_META)
        assert [u.uploaded for u in second] == [True] * 10 + [False] * 10
        assert all(u.ok for u in second)
        assert upload_posts(proxy, 200) - accepted == 10

    expected = {b.book_id: b for b in books} | {b.book_id: b for b in changed}
    for upload in first:
        resource = raw_object(fake_gcs, gcs_bucket, upload.name)
        encoded = expected[upload.book_id]
        assert resource["metadata"]["contentHash"] == encoded.content_hash
        assert fetch(f"{fake_gcs.url}/{gcs_bucket}/{upload.name}") == encoded.data
    # replaced objects kept their token, so the URLs from the first run still point at them
    assert {u.book_id: u.url for u in second[:10]} == {u.book_id: u.url for u in first[::3]}
