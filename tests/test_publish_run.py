"""`narrate run` publishing for real: fake-gcs-server + the RTDB test server, through the real
google-cloud-storage and firebase-admin clients.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from google.cloud import storage as gcs
from support.gcs import FakeGcs, FaultyProxy
from support.runs import preview_args

import narrate.sources
from narrate.cli import cli
from narrate.database import StatusWriter, open_database
from narrate.post import watermark_payload
from narrate.storage import gcs_client

BOOKS = {
    "alpha": "The lamp was lit at dusk. Nobody came to the door that night.",
    "beta": "Mr. Darcy bowed. Elizabeth did not. The room fell silent for a moment.",
    "gamma": "Rain on the harbour. Gulls on the wall. A ship came in at noon.",
}


def write_manifest(path: Path, books: dict[str, str]) -> Path:
    rows = (json.dumps({"book_id": b, "title": b.title(), "text": t}) for b, t in books.items())
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def blobs(bucket: str, prefix: str) -> dict[str, gcs.Blob]:
    return {b.name: b for b in gcs_client().list_blobs(bucket, prefix=prefix)}


@pytest.mark.slow
def test_run_publishes_objects_and_records_then_converges(
    tmp_path: Path, gcs_bucket: str, rtdb, audioseal_dir: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", BOOKS)
    args = [
        str(manifest),
        "--engine",
        "preview",
        "--devices",
        "cpu",
        "--out",
        f"gs://{gcs_bucket}/site",
        "--cache",
        f"gs://{gcs_bucket}/cache",
        "--database",
        rtdb.url,
        "--watermark-model",
        str(audioseal_dir),
    ]
    totals = invoke(*args)
    assert totals["ready"] == 3

    objects = blobs(gcs_bucket, "site/")
    assert sorted(objects) == [f"site/narrations/{b}.wav" for b in sorted(BOOKS)]
    records = rtdb.rest("GET", "books")
    for book_id in BOOKS:
        blob = objects[f"site/narrations/{book_id}.wav"]
        meta = blob.metadata
        assert blob.content_type == "audio/wav"
        assert meta["bookId"] == book_id and meta["model"] == "espeak-ng"
        assert meta["watermarked"] == "true"
        assert meta["watermarkPayload"] == str(watermark_payload(book_id))
        token = meta["firebaseStorageDownloadTokens"]
        record = records[book_id]
        assert record["narrativeAudioStatus"] == "ready"
        name = quote(f"site/narrations/{book_id}.wav", safe="")
        assert record["narrativeAudioUrl"].endswith(
            f"/v0/b/{gcs_bucket}/o/{name}?alt=media&token={token}"
        )
        assert record["narrativeAudioPath"] == f"site/narrations/{book_id}.wav"
        assert record["narrativeAudioFormat"] == "wav"
        assert record["narrativeWatermarkPayload"] == watermark_payload(book_id)
        assert record["narrativeContentHash"] == meta["contentHash"]
        assert record["narrativeAudioDuration"] > 1.0
        assert isinstance(record["narrativeUpdatedAt"], int)
    generations = {name: b.generation for name, b in objects.items()}

    server = rtdb.require_server()
    patches = len(server.requests(rtdb.namespace, "PATCH"))
    totals = invoke(*args)
    assert totals["skipped"] == 3 and totals["chunks_synthesized"] == 0
    assert {n: b.generation for n, b in blobs(gcs_bucket, "site/").items()} == generations
    assert len(server.requests(rtdb.namespace, "PATCH")) == patches  # nothing new to write

    changed = {**BOOKS, "beta": BOOKS["beta"] + " Then she laughed."}
    write_manifest(manifest, changed)
    totals = invoke(*args)
    assert (totals["ready"], totals["skipped"]) == (1, 2)
    after = {n: b.generation for n, b in blobs(gcs_bucket, "site/").items()}
    assert [n for n in after if after[n] != generations[n]] == ["site/narrations/beta.wav"]
    # the replaced object keeps its token: links already on the site keep working
    assert rtdb.rest("GET", "books/beta/narrativeAudioUrl") == records["beta"]["narrativeAudioUrl"]


@pytest.mark.slow
def test_a_new_book_costs_one_upload_and_no_second_lookup(
    tmp_path: Path, gcs_bucket: str, fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the window's lookup already asked storage whether each object exists: the upload
    # trusts that answer (its write names the generation it expects, so a stale answer is
    # caught) instead of asking again, halving the round trips of a catalog's first render
    manifest = write_manifest(tmp_path / "m.jsonl", BOOKS)
    monkeypatch.chdir(tmp_path)  # the local status file
    with FaultyProxy(fake_gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        args = [str(manifest), *preview_args(tmp_path), f"--out=gs://{gcs_bucket}/site"]
        assert invoke(*args)["ready"] == 3
    lookups = [e for e in proxy.exchanges if "site%2Fnarrations%2F" in e.path]
    assert sorted(e.method for e in lookups) == ["GET"] * len(BOOKS)  # one each, at planning
    uploads = [e for e in proxy.exchanges if e.path.startswith("/upload/")]
    assert len(uploads) == len(BOOKS)


@pytest.mark.slow
def test_request_queue_renders_exactly_the_requested_books(tmp_path: Path, rtdb) -> None:
    rtdb.rest(
        "PUT",
        "books",
        {
            "wanted": {"narrative": "Please read me aloud.", "narrativeAudioStatus": "requested"},
            "also": {"narrative": "Me too, please.", "narrativeAudioStatus": "requested"},
            "blank": {"narrative": "   ", "narrativeAudioStatus": "requested"},
            "done": {
                "narrative": "Leave me be.",
                "narrativeAudioStatus": "ready",
                "narrativeAudioUrl": "https://example.invalid/done.wav",
            },
            "quiet": {"narrative": "Nobody asked for me."},
        },
    )
    result = CliRunner().invoke(
        cli,
        ["run", "--requests", *preview_args(tmp_path, f"--database={rtdb.url}")],
    )
    assert result.exit_code == 1, result.output  # the blank request failed; the rest rendered
    books = rtdb.rest("GET", "books")
    assert books["wanted"]["narrativeAudioStatus"] == "ready"
    assert books["also"]["narrativeAudioStatus"] == "ready"
    assert books["blank"]["narrativeAudioStatus"] == "failed"
    assert "narrative" in books["blank"]["narrativeAudioError"]
    assert books["done"] == {
        "narrative": "Leave me be.",
        "narrativeAudioStatus": "ready",
        "narrativeAudioUrl": "https://example.invalid/done.wav",
    }
    assert books["quiet"] == {"narrative": "Nobody asked for me."}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["also.wav", "wanted.wav"]


@pytest.mark.slow
def test_a_requested_book_another_run_takes_after_this_one_read_the_queue_is_left_to_it(
    tmp_path: Path, rtdb, monkeypatch: pytest.MonkeyPatch
) -> None:
    rtdb.rest(
        "PUT",
        "books",
        {
            "mine": {"narrative": "Read me, please.", "narrativeAudioStatus": "requested"},
            "theirs": {"narrative": "Read me too.", "narrativeAudioStatus": "requested"},
        },
    )
    other = StatusWriter(open_database(rtdb.url, status_file=tmp_path / "x.json"), run_id="them")
    read_queue = narrate.sources.requested_books

    def queue_read_then_raced(*args, **kwargs):
        yield from read_queue(*args, **kwargs)  # both books read as `requested`...
        assert other.claim("theirs")  # ...then a run started at the same moment takes one

    monkeypatch.setattr(narrate.sources, "requested_books", queue_read_then_raced)
    result = CliRunner().invoke(
        cli,
        ["run", "--requests", *preview_args(tmp_path, f"--database={rtdb.url}")],
    )
    other.close()
    assert result.exit_code == 0, result.output
    books = rtdb.rest("GET", "books")
    assert books["mine"]["narrativeAudioStatus"] == "ready"
    assert books["theirs"]["narrativeAudioStatus"] == "requested"  # the other run's to mark
    assert "narrativeLeaseRun" not in books["theirs"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["mine.wav"]
    skipped = [json.loads(line) for line in result.stderr.splitlines() if "book_skipped" in line]
    assert [(e["book_id"], e["reason"]) for e in skipped] == [("theirs", "taken by another run")]


@pytest.mark.slow
def test_run_under_database_faults_converges_to_the_fault_free_state(tmp_path: Path, rtdb) -> None:
    server = rtdb.require_server()
    manifest = write_manifest(tmp_path / "m.jsonl", BOOKS)
    args = [str(manifest), *preview_args(tmp_path, f"--database={rtdb.url}")]
    with server.faults(unavailable=0.2, dropped=0.1, seed=3):
        totals = invoke(*args)
    assert totals["ready"] == 3
    faulty = rtdb.rest("GET", "books")
    for record in faulty.values():
        record.pop("narrativeUpdatedAt")
    # the same catalog rendered from scratch without faults, recorded in a local status file
    clean = tmp_path / "clean"
    invoke(str(manifest), *preview_args(clean))
    expected = json.loads((clean / "out" / "status.json").read_text())["books"]
    for record in expected.values():
        record.pop("narrativeUpdatedAt")
        record["narrativeAudioUrl"] = None
    for record in faulty.values():
        record["narrativeAudioUrl"] = None
    assert faulty == expected
