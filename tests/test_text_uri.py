"""`text_uri` reads only what the operator allows, and hostile manifest lines are row errors.

A manifest comes from elsewhere: a row must not make narrate read (and publish as audio) a
local file outside the folder the operator named, wait on a FIFO, or exhaust memory.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from narrate.cli import cli
from narrate.config import ChunkingConfig
from narrate.plan import PlannedBook, chunk_books
from narrate.records import Book, RowError
from narrate.sources import TextFetcher

STORY = "Once upon a time there was a river. It ran to the sea."


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """texts/ holds the catalog's texts; secret.txt sits beside it, outside the text root."""
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "story.txt").write_text(STORY, encoding="utf-8")
    (root / "sub" / "nested.txt").write_text(STORY, encoding="utf-8")
    (tmp_path / "secret.txt").write_text("PRIVATE KEY do not read aloud.", encoding="utf-8")
    return root


def planned(root: Path | None, *uris: str, max_chars: int = 10_000) -> list[PlannedBook | RowError]:
    rows = [Book(f"b{i}", i + 1, text_uri=uri) for i, uri in enumerate(uris)]
    chunking = ChunkingConfig(max_text_chars=max_chars)
    fetch = TextFetcher(str(root) if root else None, max_chars)
    return list(chunk_books(rows, chunking=chunking, engine_fingerprint="t", text_loader=fetch))


def test_texts_inside_the_root_are_read_by_relative_or_absolute_path(library: Path) -> None:
    out = planned(library, "story.txt", "sub/nested.txt", str(library / "story.txt"))
    assert all(isinstance(item, PlannedBook) for item in out), out
    assert all(item.chunks[0].text.startswith("Once upon") for item in out)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "uri",
    ["../secret.txt", "sub/../../secret.txt", "/etc/hostname", "/proc/self/environ", "/etc/passwd"],
)
def test_paths_leading_out_of_the_root_are_refused_and_other_rows_go_on(
    library: Path, uri: str
) -> None:
    first, second = planned(library, uri, "story.txt")
    assert isinstance(first, RowError), first
    assert first.field == "text_uri" and first.reason == "bad_text_uri"
    assert "outside the text root" in first.message
    assert isinstance(second, PlannedBook)


def test_a_symlink_out_of_the_root_is_refused(library: Path) -> None:
    (library / "link.txt").symlink_to(library.parent / "secret.txt")
    (library / "linkdir").symlink_to(library.parent)
    for uri in ("link.txt", "linkdir/secret.txt"):
        (error,) = planned(library, uri)
        assert isinstance(error, RowError) and "outside the text root" in error.message


def test_devices_and_fifos_are_refused_without_reading_or_waiting(library: Path) -> None:
    os.mkfifo(library / "pipe")
    (library / "zero").symlink_to("/dev/zero")  # inside the root only by name
    fifo, directory = planned(library, "pipe", "sub")
    assert isinstance(fifo, RowError) and "not a regular file" in fifo.message
    assert isinstance(directory, RowError) and "not a regular file" in directory.message
    (zero,) = planned(Path("/dev"), "zero")  # an operator who names /dev still gets no device
    assert isinstance(zero, RowError) and "not a regular file" in zero.message


def test_no_local_reads_at_all_without_a_root(library: Path) -> None:
    (error,) = planned(None, str(library / "story.txt"))
    assert isinstance(error, RowError) and "--text-root" in error.message


def test_a_huge_text_is_refused_after_reading_only_the_limit(library: Path) -> None:
    (library / "huge.txt").write_bytes(b"word " * 2_000_000)  # 10 MB
    (error,) = planned(library, "huge.txt", max_chars=1_000)
    assert isinstance(error, RowError) and error.reason == "text_too_long"

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            Counting.consumed += len(data)
            return data

        def read1(self, size: int = -1) -> bytes:
            data = super().read1(size)
            Counting.consumed += len(data)
            return data

    text = TextFetcher(None, 1_000)._read(Counting(b"word " * 2_000_000))
    assert len(text) == 1_001
    assert Counting.consumed <= 64 * 1024  # bounded by the limit, not by the file


def test_cli_plan_reads_texts_beside_the_manifest_and_refuses_the_rest(library: Path) -> None:
    manifest = library / "catalog.jsonl"
    rows = [
        {"book_id": "ok", "text_uri": "story.txt"},
        {"book_id": "escape", "text_uri": "../secret.txt"},
        {"book_id": "system", "text_uri": "/etc/hostname"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["plan", str(manifest), "--json", "--engine", "preview", "--jobs", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["books"] == 1 and summary["rows_rejected"] == 2

    # the operator may widen the root on purpose; relative paths resolve against it
    result = CliRunner().invoke(cli, [*args, "--text-root", str(library.parent)])
    assert result.exit_code == 1, result.output
    examples = json.dumps(json.loads(result.stdout)["rejected_rows"])
    assert "'story.txt': No such file" in examples and "'../secret.txt' is outside" in examples
    manifest.write_text(json.dumps({"book_id": "wide", "text_uri": "secret.txt"}) + "\n")
    result = CliRunner().invoke(cli, [*args, "--text-root", str(library.parent)])
    assert result.exit_code == 0 and json.loads(result.stdout)["books"] == 1, result.output


def test_hostile_json_lines_are_row_errors_and_good_rows_survive(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"book_id": "first", "text": STORY}),
        "[" * 200_000 + "]" * 200_000,
        '{"book_id": "deep", "text": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"book_id": ' + "9" * 5_000 + ', "text": "Too many digits."}',
        json.dumps({"book_id": "last", "text": STORY}),
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for command in (["plan", "--json", "--jobs", "1"], ["status", "--json"]):
        result = CliRunner().invoke(
            cli,
            [command[0], str(manifest), *command[1:], "--engine", "preview"]
            + (
                ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]
                if command[0] == "status"
                else []
            ),
        )
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        summary = json.loads(result.stdout)
        if command[0] == "plan":
            assert summary["books"] == 2 and summary["rows_rejected"] == 3
            reasons = json.dumps(summary["rejected_rows"])
            assert "nested too deeply" in reasons and "too many digits" in reasons
        else:
            assert summary["rejected_rows"] == 3 and summary["pending"] == 2
