"""CSV manifests (catalog and spreadsheet exports): the JSONL/Parquet schema and row errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from narrate.cli import cli
from narrate.errors import ManifestError
from narrate.manifest import read_manifest
from narrate.records import Book, RowError

ROWS = [
    {
        "book_id": "fox",
        "text": "The grapes are sour, he said.\nAnd left.",
        "title": "Fox",
        "speaker": 1,
    },
    {"book_id": 1234, "text": "A numeric id, as catalogs export them.", "priority": 5},
    {"book_id": "uri", "text_uri": "texts/uri.txt", "voice": "anna"},
]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_export_reads_as_the_same_books_as_its_jsonl(tmp_path: Path) -> None:
    columns = ["book_id", "text", "text_uri", "title", "speaker", "voice", "priority"]
    from_csv = list(read_manifest(write_csv(tmp_path / "m.csv", ROWS, columns)))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert from_csv == list(read_manifest(jsonl))
    assert all(isinstance(book, Book) for book in from_csv)


def test_bad_csv_rows_are_row_errors_naming_row_and_field_and_good_rows_go_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"bookId,narrative,speaker,shelf\n"
        b"a,Good text.,0,x\n"
        b"b,Bad speaker.,two,x\n"
        b"c,one,too,many,cells\n"
        b"d,\xff not utf-8,,\n"
        b"e,,,\n"
        b"a,Again.,,\n"
        b"f,Last good.,,\n"
    )
    rows = list(read_manifest(path))
    errors = {r.row: (r.reason, r.field) for r in rows if isinstance(r, RowError)}
    assert [r.book_id for r in rows if isinstance(r, Book)] == ["a", "f"]
    assert errors == {
        2: ("wrong_type", "speaker"),
        3: ("malformed_csv", None),
        4: ("invalid_utf8", "text"),
        5: ("missing_text", "text"),
        6: ("duplicate_id", "book_id"),
    }


def test_a_csv_without_an_id_column_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [{"id": "x", "text": "t"}], ["id", "text"])
    with pytest.raises(ManifestError, match="no book_id column"):
        list(read_manifest(path))
    result = CliRunner().invoke(cli, ["plan", str(path), "--engine", "preview"])
    assert result.exit_code == 2 and "hint: name the id column book_id" in result.output


def test_an_unknown_manifest_format_hint_names_options_that_exist(tmp_path: Path) -> None:
    path = tmp_path / "m.txt"
    path.write_text("id;text\n")
    result = CliRunner().invoke(cli, ["plan", str(path), "--engine", "preview"])
    assert result.exit_code == 2
    assert ".csv" in result.output and "--format" not in result.output
