"""Manifest reading: JSONL and Parquet rows become Books, bad rows RowErrors, in order."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narrate.errors import ManifestError
from narrate.manifest import ManifestReader, book_id_problem, read_manifest
from narrate.records import Book, RowError

FORMATS = ["jsonl", "parquet"]
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"

FIRST = {"book_id": "first", "text": "Call me Ishmael."}
LAST = {"book_id": "last", "text": "It was the best of times."}


def write_manifest(directory: Path, fmt: str, rows: list[dict | bytes], name: str = "") -> Path:
    """Rows as a JSONL file (a bytes row is written as that raw line) or a Parquet file."""
    path = directory / (name or f"manifest.{fmt}")
    if fmt == "jsonl":
        lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
        path.write_bytes(b"\n".join(lines) + b"\n")
    else:  # every key of every row is a column (from_pylist would take the first row's only)
        names = list(dict.fromkeys(key for row in rows for key in row))
        pq.write_table(pa.table({n: [row.get(n) for row in rows] for n in names}), path)
    return path


def read(source: object, **kw: object) -> list[Book | RowError]:
    return list(read_manifest(source, **kw))  # type: ignore[arg-type]


def only_errors(results: list[Book | RowError]) -> list[RowError]:
    return [r for r in results if isinstance(r, RowError)]


# -- bad rows, in both formats: each is reported with its row, the good rows go on ------------

BAD_ROWS = [
    ("missing_id", "book_id", {"text": "Nobody knows this book."}),
    ("missing_id", "book_id", {"book_id": "", "text": "Empty id."}),
    ("missing_id", "book_id", {"book_id": "   ", "text": "Blank id."}),
    ("invalid_id", "book_id", {"book_id": "vol.1", "text": "A dot."}),
    ("invalid_id", "book_id", {"book_id": "shelf/book", "text": "A slash."}),
    ("invalid_id", "book_id", {"book_id": "a$b", "text": "A dollar."}),
    ("invalid_id", "book_id", {"book_id": "tab\there", "text": "A control character."}),
    ("invalid_id", "book_id", {"book_id": "x" * 129, "text": "A long id."}),
    ("empty_text", "text", {"book_id": "blank", "text": ""}),
    ("empty_text", "text", {"book_id": "blank", "text": " \n\t "}),
    ("missing_text", "text", {"book_id": "silent"}),
    ("text_too_long", "text", {"book_id": "long", "text": "word " * 30}),
    ("wrong_type", "speaker", {"book_id": "spk", "text": "Hello.", "speaker": "abc"}),
    ("wrong_type", "speaker", {"book_id": "spk", "text": "Hello.", "speaker": 1.5}),
    ("wrong_type", "priority", {"book_id": "pri", "text": "Hello.", "priority": True}),
    ("wrong_type", "title", {"book_id": "ttl", "text": "Hello.", "title": 5}),
    ("invalid_value", "speaker", {"book_id": "neg", "text": "Hello.", "speaker": -1}),
    ("invalid_value", "text_uri", {"book_id": "web", "text_uri": "https://example.com/t.txt"}),
    ("duplicate_id", "book_id", {"book_id": "first", "text": "The same id again."}),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("reason", "field", "bad"), BAD_ROWS)
def test_bad_row_is_reported_and_good_rows_go_on(
    tmp_path: Path, fmt: str, reason: str, field: str, bad: dict
) -> None:
    path = write_manifest(tmp_path, fmt, [FIRST, bad, LAST])

    first, error, last = read(path, max_text_chars=100)

    assert first == Book("first", 1, "Call me Ishmael.")
    assert last == Book("last", 3, "It was the best of times.")
    assert isinstance(error, RowError)
    assert (error.row, error.reason, error.field) == (2, reason, field)
    assert field in error.message and "row 2" in str(error)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_names_the_first_row_and_a_rejected_row_claims_no_id(
    tmp_path: Path, fmt: str
) -> None:
    rows = [{"book_id": "a", "text": ""}, {"book_id": "a", "text": "One."}, FIRST]
    rows += [{"book_id": "a", "text": "Two."}]
    path = write_manifest(tmp_path, fmt, rows)

    results = read(path)

    assert [type(r).__name__ for r in results] == ["RowError", "Book", "Book", "RowError"]
    assert results[1] == Book("a", 2, "One.")
    assert results[3].reason == "duplicate_id" and "row 2" in results[3].message
    assert results[3].book_id == "a"


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_limit_is_configurable(tmp_path: Path, fmt: str) -> None:
    path = write_manifest(tmp_path, fmt, [{"book_id": "b", "text": "x" * 500}])

    assert isinstance(read(path)[0], Book)  # default limit: 200,000 characters
    (error,) = read(path, max_text_chars=499)
    assert error.reason == "text_too_long" and "500" in error.message and "499" in error.message


# -- JSONL-only failures: the line itself is broken ------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"book_id": "cut", "text": ', "malformed_json"),
        (b"not json at all", "malformed_json"),
        (b'{"book_id": "x", "text": "a"} trailing', "malformed_json"),
        (b'["book_id", "text"]', "malformed_json"),
        (b'{"book_id": "latin1", "text": "caf\xe9"}', "invalid_utf8"),
        (b'{"book_id": "half", "text": "broken \\ud800 surrogate"}', "invalid_utf8"),
        (b'{"book_id": 1.5, "text": "A float id."}', "wrong_type"),
        (b'{"book_id": true, "text": "A boolean id."}', "wrong_type"),
        (b'{"book_id": ["a"], "text": "A list id."}', "wrong_type"),
        (b'{"book_id": "num", "text": 42}', "wrong_type"),
        (b'{"book_id": "spk", "text": "Hi.", "speaker": false}', "wrong_type"),
    ],
)
def test_jsonl_broken_line_is_reported_and_next_lines_read(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = write_manifest(tmp_path, "jsonl", [FIRST, line, LAST])

    first, error, last = read(path)

    assert (first.row, last.row) == (1, 3) and isinstance(last, Book)
    assert (error.row, error.reason) == (2, reason)


def test_jsonl_rows_are_line_numbers_blank_lines_and_bom_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(FIRST), "", "   ", "{oops", json.dumps(LAST), ""]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())

    results = read(path)

    assert [(r.row, r.reason if isinstance(r, RowError) else "ok") for r in results] == [
        (1, "ok"),
        (4, "malformed_json"),
        (5, "ok"),
    ]


# -- Parquet-only: typed columns, binary columns, the file as a whole -------------------------


def test_parquet_invalid_utf8_in_binary_and_string_columns(tmp_path: Path) -> None:
    raw = [b"Good text.", b"caf\xe9 au lait", b"More good text."]
    binary = pa.array(raw, pa.binary())
    # a writer that does not validate UTF-8 can store bad bytes in a string column
    string = binary.view(pa.string())
    for name, column in [("binary", binary), ("string", string)]:
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"book_id": ["a", "b", "c"], "text": column}), path)

        results = read(path)

        assert results[0] == Book("a", 1, "Good text.") and results[2].text == "More good text."
        assert (results[1].row, results[1].reason, results[1].field) == (2, "invalid_utf8", "text")


def test_parquet_float_id_column_rejects_each_row(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"book_id": [1.5, None], "text": ["A.", "B."]}), path)

    assert [(e.reason, e.row) for e in read(path)] == [("wrong_type", 1), ("missing_id", 2)]


@pytest.mark.parametrize(
    ("columns", "missing"),
    [({"title": ["T"], "text": ["t"]}, "book_id"), ({"book_id": ["a"], "title": ["T"]}, "text")],
)
def test_parquet_without_a_required_column_is_unreadable(
    tmp_path: Path, columns: dict, missing: str
) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(columns), path)

    with pytest.raises(ManifestError, match=f"no {missing}") as info:
        ManifestReader(path)
    assert "title" in info.value.message and info.value.hint


def test_parquet_damaged_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")

    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        ManifestReader(path)


def test_parquet_reports_total_rows_and_reads_across_batches(tmp_path: Path) -> None:
    rows = [{"book_id": f"b{i}", "text": f"Text {i}."} for i in range(25)]
    rows[11]["text"] = ""
    path = write_manifest(tmp_path, "parquet", rows)
    reader = ManifestReader(path, batch_rows=4)

    results = list(reader)

    assert reader.total_rows == 25
    assert [r.row for r in results] == list(range(1, 26))
    assert only_errors(results) == [RowError(12, "empty_text", results[11].message, "b11", "text")]


# -- columns: ids, aliases, defaults, unknown names --------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_ids_become_their_decimal_string(tmp_path: Path, fmt: str) -> None:
    rows = [{"book_id": 42, "text": "A."}, {"book_id": 7, "text": "B."}]
    path = write_manifest(tmp_path, fmt, rows)

    assert [b.book_id for b in read(path)] == ["42", "7"]


def test_integral_float_ids_are_their_integer_as_pandas_writes_an_id_column_with_gaps(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"book_id": [101.0, None, 7.0], "text": ["A.", "B.", "C."]}), path)
    jsonl = write_manifest(tmp_path, "jsonl", [{"book_id": 101.0, "text": "A."}])

    assert [(r.book_id, type(r).__name__) for r in read(path)] == [
        ("101", "Book"),
        (None, "RowError"),
        ("7", "Book"),
    ]
    assert [r.book_id for r in read(jsonl)] == ["101"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_site_aliases_and_canonical_names_win(tmp_path: Path, fmt: str) -> None:
    rows = [
        {"bookId": "alias", "narrative": "From the site.", "book_id": None, "text": None},
        {"bookId": "ignored", "narrative": "Ignored.", "book_id": "both", "text": "Canonical."},
    ]
    path = write_manifest(tmp_path, fmt, rows)
    reader = ManifestReader(path)

    results = list(reader)

    assert results == [Book("alias", 1, "From the site."), Book("both", 2, "Canonical.")]
    assert reader.unknown_columns == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_optional_fields_and_defaults(tmp_path: Path, fmt: str) -> None:
    full = {
        "book_id": "full",
        "text": "Text.",
        "title": "A Title",
        "speaker": 2.0,  # pandas writes an int column with gaps as float64
        "voice": "narrator",
        "language": "fr",
        "priority": -3,
        "text_uri": None,
    }
    bare = {"book_id": "bare", "text": "Text.", "title": "  ", "voice": "", "language": None}
    by_uri = {"book_id": "uri", "text": "   ", "text_uri": "gs://texts/uri.txt"}
    path = write_manifest(tmp_path, fmt, [full, bare, by_uri])

    assert read(path) == [
        Book("full", 1, "Text.", None, "A Title", 2, "narrator", "fr", -3),
        Book("bare", 2, "Text.", speaker=0, language="en", priority=0),
        Book("uri", 3, None, text_uri="gs://texts/uri.txt"),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_columns_are_ignored_with_one_warning(
    tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"book_id": "a", "text": "A.", "author": "Austen", "isbn": None},
        {"book_id": "b", "text": "B.", "author": None, "isbn": "978"},
    ]
    path = write_manifest(tmp_path, fmt, rows)
    reader = ManifestReader(path)

    with caplog.at_level(logging.WARNING, logger="narrate.manifest"):
        first = list(reader)
        second = list(reader)

    assert first == second == [Book("a", 1, "A."), Book("b", 2, "B.")]
    assert reader.unknown_columns == ["author", "isbn"]
    warnings = [r for r in caplog.records if r.name == "narrate.manifest"]
    assert len(warnings) == 1
    assert "author" in warnings[0].getMessage() and "isbn" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "book_id",
    ["plain", "livre-été", "é" * 64, "Moby Dick (1851)", "42", "a-b_c~d", "日本語の本"],
)
def test_usable_ids(book_id: str) -> None:
    assert book_id_problem(book_id) is None


@pytest.mark.parametrize(
    "book_id",
    ["a.b", "..", "a$b", "a#b", "a[b", "a]b", "a/b", "a\nb", "a\x00b", "a\x7fb", " a", "a ",
     "é" * 65, "x" * 129, "\ud800"],
)  # fmt: skip
def test_unusable_ids(book_id: str) -> None:
    assert book_id_problem(book_id)


# -- sources: paths, file objects, formats, errors --------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_from_content_when_the_name_does_not_say(tmp_path: Path, fmt: str) -> None:
    path = write_manifest(tmp_path, fmt, [FIRST], name="catalog.data")

    reader = ManifestReader(path)

    assert reader.format == fmt and list(reader) == [Book("first", 1, "Call me Ishmael.")]


def test_explicit_format_wins_over_the_name(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "jsonl", [FIRST], name="catalog.parquet")

    assert read(path, format="jsonl") == [Book("first", 1, "Call me Ishmael.")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_objects_are_read_and_rewound(tmp_path: Path, fmt: str) -> None:
    path = write_manifest(tmp_path, fmt, [FIRST, LAST])
    stream = io.BytesIO(path.read_bytes())

    reader = ManifestReader(stream)

    assert list(reader) == list(reader) == read(path)
    assert not stream.closed  # the caller owns it


def test_jsonl_streams_rows_before_the_rest_is_written() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reading, os.fdopen(write_fd, "wb") as writing:
        writing.write(json.dumps(FIRST).encode() + b"\n")
        writing.flush()
        rows = iter(ManifestReader(reading, format="jsonl"))

        assert next(rows).book_id == "first"  # the writer has not finished the manifest

        writer = threading.Thread(target=lambda: writing.write(json.dumps(LAST).encode()))
        writer.start()
        writer.join()
        writing.close()
        assert [r.book_id for r in rows] == ["last"]


def test_spent_stream_that_cannot_rewind_is_an_error() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, json.dumps(FIRST).encode())
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reading:
        reader = ManifestReader(reading, format="jsonl")
        assert len(list(reader)) == 1
        with pytest.raises(ManifestError, match="cannot be rewound"):
            list(reader)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "nope.jsonl", "No such file"),
        (lambda d: d, "Is a directory|Permission denied"),
        (lambda d: (d / "m.txt").write_text("book_id;text\n") and d / "m.txt", "cannot tell"),
    ],
)
def test_unreadable_manifests_raise_with_a_hint(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        read(make(tmp_path), format="jsonl" if match != "cannot tell" else None)
    assert info.value.hint and info.value.exit_code == 2


def test_unknown_format_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown manifest format 'xml'"):
        ManifestReader(tmp_path / "m.xml", format="xml")


@pytest.mark.slow
def test_gs_manifests_read_like_local_ones(gcs_bucket: str) -> None:
    from narrate.storage import gcs_client

    bucket = gcs_client().bucket(gcs_bucket)
    for name in ("demo.jsonl", "demo.parquet"):
        bucket.blob(f"manifests/{name}").upload_from_filename(str(MANIFESTS / name))

        assert read(f"gs://{gcs_bucket}/manifests/{name}") == read(MANIFESTS / name)

    with pytest.raises(ManifestError, match="does not exist"):
        ManifestReader(f"gs://{gcs_bucket}/manifests/missing.jsonl").__iter__().__next__()


# -- the demo manifests ------------------------------------------------------------------------


def test_demo_manifests_are_valid_and_hold_the_same_books() -> None:
    from_jsonl = read(MANIFESTS / "demo.jsonl")
    from_parquet = read(MANIFESTS / "demo.parquet")

    assert from_jsonl == from_parquet
    assert only_errors(from_jsonl) == []
    assert 5 <= len(from_jsonl) <= 10
    words = [len(book.text.split()) for book in from_jsonl]
    assert min(words) >= 50 and max(words) <= 1500 and sum(words) <= 3500
    assert any("\n\n" in book.text for book in from_jsonl)  # paragraphs
    assert all(book.speaker == 0 and book.voice is None and book.title for book in from_jsonl)
    # the Parquet file carries exactly the JSONL rows and columns (make_demo_parquet.py)
    lines = (MANIFESTS / "demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert pq.read_table(MANIFESTS / "demo.parquet").to_pylist() == [json.loads(x) for x in lines]
