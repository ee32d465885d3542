"""Which changes re-render a book that is already published, and which leave it alone.

A rerun skips a book whose published file and record carry the book's content hash; the hash
must change with everything that shapes the file (its title, the post settings) and with
nothing else, or a rerun either keeps serving stale audio or re-renders the whole catalog.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.runs import preview_args

from narrate.cli import cli
from narrate.errors import EXIT_OK

BOOK = {
    "book_id": "lamp",
    "title": "The Lamp",
    "text": "The lamp was lit at dusk. Nobody came to the door that night.",
}


def write_manifest(path: Path, **changes: str) -> Path:
    path.write_text(json.dumps(BOOK | changes) + "\n", encoding="utf-8")
    return path


def run(workdir: Path, *extra: str, watermark: Path | None = None) -> dict:
    """`narrate run` on the preview engine over `workdir`'s manifest; the report's one book
    and the run's totals."""
    args = preview_args(workdir, f"--report={workdir / 'report.json'}", *extra)
    if watermark is not None:
        args = [a for a in args if a != "--no-watermark"] + [f"--watermark-model={watermark}"]
    result = CliRunner().invoke(cli, ["run", str(workdir / "m.jsonl"), *args])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((workdir / "report.json").read_text())
    [book] = report["books"]
    return {"status": book["status"], **report["totals"]}


def published_hash(workdir: Path) -> str:
    record = json.loads((workdir / "out" / "status.json").read_text())["books"]["lamp"]
    return record["narrativeContentHash"]


@pytest.fixture(scope="module")
def published_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the book was rendered and published once, without a watermark."""
    workdir = tmp_path_factory.mktemp("published")
    write_manifest(workdir / "m.jsonl")
    assert run(workdir)["status"] == "ready"
    return workdir


@pytest.fixture
def published(published_once: Path, tmp_path: Path) -> Path:
    """This test's own copy of the published book, its cache and its status file."""
    workdir = tmp_path / "work"
    shutil.copytree(published_once, workdir)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [["--loudness=-23"], ["--format=mp3"], ["--format=flac"]],
    ids=["loudness", "mp3", "flac"],
)
def test_changing_a_post_setting_re_renders_the_published_book_from_the_cache(
    published: Path, change: list[str]
) -> None:
    before = published_hash(published)
    again = run(published, *change)
    assert again["status"] == "ready"
    assert again["chunks_synthesized"] == 0  # the speech is reused, only the file is new
    assert published_hash(published) != before
    assert run(published, *change)["status"] == "skipped"  # and stays published


@pytest.mark.slow
def test_adding_the_watermark_re_renders_the_published_book(
    published: Path, audioseal_dir: Path
) -> None:
    before = published_hash(published)
    again = run(published, watermark=audioseal_dir)
    assert (again["status"], again["chunks_synthesized"]) == ("ready", 0)
    record = json.loads((published / "out" / "status.json").read_text())["books"]["lamp"]
    assert record["narrativeWatermarkPayload"] is not None
    assert published_hash(published) != before


@pytest.mark.slow
def test_a_new_title_re_renders_the_published_book(published: Path) -> None:
    before = (published / "out" / "lamp.wav").read_bytes()
    write_manifest(published / "m.jsonl", title="The Lamp at Dusk")
    again = run(published)
    assert (again["status"], again["chunks_synthesized"]) == ("ready", 0)
    assert (published / "out" / "lamp.wav").read_bytes() != before  # the new title is tagged


@pytest.mark.slow
def test_options_that_do_not_shape_the_file_leave_the_published_book_alone(
    published: Path,
) -> None:
    before = (published / "out" / "lamp.wav").read_bytes()
    unrelated = [
        "--batch-size=2",
        "--window=1",
        "--post-workers=1",
        "--upload-workers=1",
        "--lease-seconds=30",
        "--quality=off",
    ]
    again = run(published, *unrelated)
    assert (again["status"], again["chunks_synthesized"]) == ("skipped", 0)
    assert (published / "out" / "lamp.wav").read_bytes() == before
