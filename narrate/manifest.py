"""Manifest reading: JSONL, CSV or Parquet rows in, `Book`s and `RowError`s out, streaming.

Rows are validated one at a time and yielded in manifest order, so a bad row never stops the
good ones and a 1M-row manifest never sits in memory as Python objects: Parquet is read in
record batches of `batch_rows`, CSV in blocks by pyarrow's streaming reader, JSONL line by
line. The schema is documented in
`manifests/README.md`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import TYPE_CHECKING, Any, BinaryIO

from narrate.atomic import open_regular_file
from narrate.errors import ManifestError
from narrate.records import Book, RowError

if TYPE_CHECKING:  # pyarrow is imported when a Parquet manifest is read, not with this module
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger("narrate.manifest")

FORMATS = ("jsonl", "csv", "parquet")
FIELDS = ("book_id", "text", "text_uri", "title", "speaker", "voice", "language", "priority")
ALIASES = {"bookId": "book_id", "narrative": "text"}  # the site's own field names
KNOWN_COLUMNS = frozenset(FIELDS) | frozenset(ALIASES)
MAX_ID_BYTES = 128

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
_SUFFIX_FORMATS |= {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_CSV_BLOCK_BYTES = 1 << 20  # CSV is parsed a block at a time: memory stays bounded
_CSV_INTEGERS = ("speaker", "priority")  # CSV cells are text: these are parsed here
_PARQUET_MAGIC = b"PAR1"
_UTF8_BOM = b"\xef\xbb\xbf"
# A Realtime Database key cannot hold . $ # [ ] / or ASCII control characters; a storage
# object name must not hold "/" (a book id is one object, not a folder) nor "..".
_FORBIDDEN_ID_CHAR = re.compile(r"[.$#\[\]/\\\x00-\x1f\x7f]")
_FORMAT_HINT = (
    "name the manifest .jsonl, .csv or .parquet (a spreadsheet or catalog export: save it as "
    "CSV with a header row, UTF-8)"
)

Source = str | os.PathLike | BinaryIO


MAX_MANIFEST_BYTES = 64 << 30  # far beyond any catalog: a bound for /dev/zero and its kind


def book_id_problem(book_id: str) -> str | None:
    """Why `book_id` cannot be both a Realtime Database key and an object name, or None."""
    bad = _FORBIDDEN_ID_CHAR.search(book_id)
    if bad:
        return (
            f"book_id {book_id!r} contains {bad.group()!r} (not allowed: . $ # [ ] / \\ controls)"
        )
    if book_id != book_id.strip():
        return f"book_id {book_id!r} starts or ends with whitespace"
    try:
        size = len(book_id.encode("utf-8"))
    except UnicodeEncodeError:
        return f"book_id {book_id!r} holds an unpaired surrogate, not valid UTF-8"
    if size > MAX_ID_BYTES:
        return f"book_id is {size} bytes in UTF-8, over the limit of {MAX_ID_BYTES}"
    return None


class _Rejected(Exception):
    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


def _type_name(value: object) -> str:
    return {bool: "a boolean", float: "a number", int: "an integer", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _string(value: object, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):  # Parquet binary columns
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Rejected(
                "invalid_utf8", field, f"{field} is not valid UTF-8 (byte {exc.start})"
            ) from None
    raise _Rejected("wrong_type", field, f"{field} must be a string, got {_type_name(value)}")


def _optional_string(value: object, field: str) -> str | None:
    if value is None:
        return None
    text = _string(value, field)
    return text if text and not text.isspace() else None


def _integer(value: object, field: str, default: int) -> int:
    if value is None:
        return default
    if type(value) is int:  # not bool, which is an int subclass
        return value
    # Integral floats are accepted: pandas stores an int column with gaps as float64 (NaN).
    if isinstance(value, float) and math.isnan(value):
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Rejected("wrong_type", field, f"{field} must be an integer, got {value!r}")


class _RowChecker:
    """Turns one row's raw values (in FIELDS order) into a Book, or a RowError saying why not."""

    def __init__(self, max_text_chars: int) -> None:
        self.max_text_chars = max_text_chars
        self.first_row: dict[str, int] = {}  # accepted book_id -> its row, for duplicates

    def __call__(
        self,
        row: int,
        book_id: object,
        text: object,
        text_uri: object,
        title: object,
        speaker: object,
        voice: object,
        language: object,
        priority: object,
    ) -> Book | RowError:
        ident = None
        try:
            ident = self._book_id(book_id)
            body, uri = self._text(text, text_uri)
            book = Book(
                book_id=ident,
                row=row,
                text=body,
                text_uri=uri,
                title=_optional_string(title, "title"),
                speaker=self._speaker(speaker),
                voice=_optional_string(voice, "voice"),
                language=_optional_string(language, "language") or "en",
                priority=_integer(priority, "priority", 0),
            )
        except _Rejected as bad:
            return RowError(row, bad.reason, bad.message, book_id=ident, field=bad.field)
        first = self.first_row.setdefault(ident, row)
        if first != row:
            message = f"book_id {ident!r} already used by row {first} (first row wins)"
            return RowError(row, "duplicate_id", message, book_id=ident, field="book_id")
        return book

    @staticmethod
    def _book_id(value: object) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # pandas writes an int column with gaps as float64, like speaker
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric catalog ids are common; the key is their decimal form
        ident = _string(value, "book_id")
        if not ident or ident.isspace():
            raise _Rejected("missing_id", "book_id", "book_id is missing or empty")
        problem = book_id_problem(ident)
        if problem:
            raise _Rejected("invalid_id", "book_id", problem)
        return ident

    def _text(self, text: object, text_uri: object) -> tuple[str | None, str | None]:
        body = _string(text, "text")
        uri = _optional_string(text_uri, "text_uri")
        if uri and re.search(r"[\x00-\x1f\x7f]", uri):  # no file or object has such a name
            message = f"text_uri {uri!r} holds a control character"
            raise _Rejected("invalid_value", "text_uri", message)
        if uri and "://" in uri and not uri.startswith("gs://"):
            message = f"text_uri {uri!r} must be a local path or a gs:// URI"
            raise _Rejected("invalid_value", "text_uri", message)
        if body is None or not body or body.isspace():
            if uri:
                return None, uri
            if body is None:
                raise _Rejected("missing_text", "text", "row has neither text nor text_uri")
            raise _Rejected("empty_text", "text", "text is empty or only whitespace")
        if len(body) > self.max_text_chars:
            limit = self.max_text_chars
            message = f"text has {len(body):,} characters, over the limit of {limit:,}"
            raise _Rejected("text_too_long", "text", message)
        return body, uri

    @staticmethod
    def _speaker(value: object) -> int:
        speaker = _integer(value, "speaker", 0)
        if speaker < 0:
            raise _Rejected("invalid_value", "speaker", f"speaker must be >= 0, got {speaker}")
        return speaker


class ManifestReader:
    """Iterates a manifest's rows as `Book` (valid) or `RowError` (rejected), in order.

    `source` is a local path, a `gs://bucket/path` URI, or a binary file object (read from its
    current position; the caller keeps ownership). Paths and URIs are reopened on every
    iteration; a file object is rewound when it can seek. `total_rows` is known up front for
    Parquet (for progress bars), None for JSONL. Unknown columns are ignored, listed in
    `unknown_columns` and warned about once: Parquet as iteration starts, JSONL when it ends
    (any line may add a key).

    Parquet is decoded `batch_rows` rows at a time. 1024 rows of long narratives is ~10 MB;
    on a catalog of 50-2,000-word narratives 8192 rows read no faster and doubled peak memory.
    """

    def __init__(
        self,
        source: Source,
        *,
        format: str | None = None,
        max_text_chars: int = 200_000,
        batch_rows: int = 1024,
    ) -> None:
        if format is not None and format not in FORMATS:
            raise ManifestError(f"unknown manifest format {format!r}", hint=_FORMAT_HINT)
        self.source = source
        self.name = _display_name(source)
        self.max_text_chars = max_text_chars
        self.batch_rows = batch_rows
        self.unknown_columns: list[str] = []
        self.total_rows: int | None = None
        self._start = _tell(source)
        self._iterated = False
        self._warned = False
        self.format = format or self._detect_format()
        self._parquet_columns: list[tuple[str, ...]] = []  # per field: its column, then alias
        if self.format == "parquet":
            self._read_parquet_schema()
        elif self.format == "csv":
            self._read_csv_schema()

    def __iter__(self) -> Iterator[Book | RowError]:
        if self.format == "csv":
            return self._iter_csv()
        return self._iter_parquet() if self.format == "parquet" else self._iter_jsonl()

    # -- opening -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self) -> Iterator[BinaryIO]:
        """The manifest's bytes, positioned at the start; closed afterwards if opened here."""
        if isinstance(self.source, (str, os.PathLike)):
            try:
                stream = self._open_location(os.fsdecode(self.source))
            except OSError as exc:
                raise ManifestError(
                    f"cannot read manifest {self.name}: {exc.strerror or exc}",
                    hint="check the path; a manifest is a .jsonl, .csv or .parquet file or "
                    "gs:// URI",
                ) from exc
            with stream:
                yield stream
        else:
            if self._iterated:
                if self._start is None:
                    raise ManifestError(
                        f"manifest stream {self.name} was already read and cannot be rewound",
                        hint="pass a path, or a fresh stream for every pass",
                    )
                self.source.seek(self._start)
            self._iterated = True
            yield self.source

    @staticmethod
    def _open_location(location: str) -> BinaryIO:
        if location.startswith("gs://"):
            from narrate.storage import open_uri  # imported here: storage pulls in GCS clients

            return open_uri(location)
        return open_regular_file(location, MAX_MANIFEST_BYTES)

    def _detect_format(self) -> str:
        suffix = os.path.splitext(self.name)[1].lower()
        if suffix in _SUFFIX_FORMATS:
            return _SUFFIX_FORMATS[suffix]
        with self._open() as stream:
            head = _peek(stream, 4)
        self._iterated = False  # peeking is not a pass over the rows
        if head == _PARQUET_MAGIC:
            return "parquet"
        if head.lstrip(_UTF8_BOM).lstrip()[:1] in (b"{", b""):
            return "jsonl"  # a JSON object, or empty/blank (a JSONL manifest with no rows)
        raise ManifestError(f"cannot tell the format of manifest {self.name}", hint=_FORMAT_HINT)

    # -- Parquet -----------------------------------------------------------------------------

    def _parquet_file(self, stream: BinaryIO) -> pq.ParquetFile:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not stream.seekable():
            raise ManifestError(
                f"Parquet manifest {self.name} is a stream that cannot seek",
                hint="Parquet needs random access: save it to a file, or use JSONL for streams",
            )
        try:
            # pre_buffer off + a read buffer: pages stream in, so a huge row group never has to
            # fit in memory at once
            return pq.ParquetFile(stream, pre_buffer=False, buffer_size=1 << 20)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(
                f"{self.name} is not a readable Parquet file: {exc}",
                hint="check that the upload finished, or pass the right format",
            ) from exc

    def _read_parquet_schema(self) -> None:
        with self._open() as stream:
            parquet = self._parquet_file(stream)
            names = parquet.schema_arrow.names
            self.total_rows = parquet.metadata.num_rows
        self._iterated = False
        self._place_columns(names)

    def _place_columns(self, names: list[str]) -> None:
        """Each field's column (then its alias) among a Parquet or CSV file's `names`; a
        manifest without an id or a text column is refused as a whole."""
        alias_of = {canonical: alias for alias, canonical in ALIASES.items()}
        self._parquet_columns = [
            tuple(name for name in (field, alias_of.get(field)) if name in names)
            for field in FIELDS
        ]
        self.unknown_columns = [name for name in names if name not in KNOWN_COLUMNS]
        found = ", ".join(names) or "none"
        twice = sorted({name for name in names if names.count(name) > 1 and name in KNOWN_COLUMNS})
        if twice:
            raise ManifestError(
                f"manifest {self.name} has more than one {', '.join(twice)} column",
                hint="keep one column of each name (pandas: df.loc[:, ~df.columns.duplicated()])",
            )
        if not self._parquet_columns[0]:
            raise ManifestError(
                f"manifest {self.name} has no book_id column (columns: {found})",
                hint="name the id column book_id (or bookId)",
            )
        if not self._parquet_columns[1] and not self._parquet_columns[2]:
            raise ManifestError(
                f"manifest {self.name} has no text or text_uri column (columns: {found})",
                hint="name the narrative column text (or narrative), or give text_uri",
            )

    def _iter_parquet(self) -> Iterator[Book | RowError]:
        import pyarrow as pa

        self._warn_unknown()
        check = _RowChecker(self.max_text_chars)
        wanted = [name for names in self._parquet_columns for name in names]
        row = 0
        with self._open() as stream:
            batches = self._parquet_file(stream).iter_batches(self.batch_rows, columns=wanted)
            try:
                for batch in batches:
                    # One list per field, zipped into rows: no per-row dicts or pandas.
                    values = [_field_values(batch, names) for names in self._parquet_columns]
                    for fields in zip(*values, strict=False):  # repeat() pads
                        row += 1
                        yield check(row, *fields)
            except (pa.ArrowException, OSError) as exc:
                raise ManifestError(
                    f"manifest {self.name} is damaged after row {row}: {exc}",
                    hint="rewrite or re-upload the Parquet file",
                ) from exc

    # -- CSV ---------------------------------------------------------------------------------

    def _csv_reader(self, stream: BinaryIO, invalid: list[int]) -> Any:
        """pyarrow's streaming CSV reader: every known column as bytes (UTF-8 is checked per
        row, as for the other formats), empty cells as null, a row with the wrong number of
        cells skipped and its record number appended to `invalid`."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        def skip(row: Any) -> str:
            invalid.append(row.number - 1 if row.number else 0)  # record 1 is the header
            return "skip"

        try:
            return pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(KNOWN_COLUMNS, pa.large_binary()),
                    strings_can_be_null=True,
                ),
            )
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(
                f"{self.name} is not a readable CSV file: {exc}",
                hint="a CSV manifest needs a header row naming its columns (book_id, text, ...)",
            ) from exc

    def _read_csv_schema(self) -> None:
        with self._open() as stream:
            names = self._csv_reader(stream, []).schema.names
        self._iterated = False
        self._place_columns(names)

    def _iter_csv(self) -> Iterator[Book | RowError]:
        import pyarrow as pa

        self._warn_unknown()
        check = _RowChecker(self.max_text_chars)
        invalid: list[int] = []
        row = 0
        with self._open() as stream:
            reader = self._csv_reader(stream, invalid)
            try:
                for batch in reader:
                    values = [_field_values(batch, names) for names in self._parquet_columns]
                    skipped = set(invalid)
                    for fields in zip(*values, strict=False):  # repeat() pads
                        row += 1
                        while row in skipped:  # a malformed record held this number
                            yield _wrong_cells(row)
                            row += 1
                        yield check(row, *_csv_fields(fields))
                    for number in sorted(n for n in skipped if n > row):
                        row = number
                        yield _wrong_cells(row)
                    invalid.clear()
            except (pa.ArrowException, OSError) as exc:
                raise ManifestError(
                    f"manifest {self.name} cannot be parsed after row {row}: {exc}",
                    hint="check the CSV's quoting (a cell holding commas or newlines is quoted)",
                ) from exc

    # -- JSONL -------------------------------------------------------------------------------

    def _iter_jsonl(self) -> Iterator[Book | RowError]:
        # Line by line with the json module: pyarrow's JSON reader gives up on the whole block
        # at the first bad line, and each bad line must be reported on its own.
        check = _RowChecker(self.max_text_chars)
        unknown = dict.fromkeys(self.unknown_columns)
        try:
            with self._open() as stream:
                for row, raw in enumerate(stream, start=1):
                    if row == 1 and raw.startswith(_UTF8_BOM):
                        raw = raw[len(_UTF8_BOM) :]
                    if raw.isspace() or not raw:
                        continue  # blank lines (a trailing newline, spacing) are not rows
                    parsed = _parse_line(row, raw)
                    if isinstance(parsed, RowError):
                        yield parsed
                        continue
                    for key in parsed:  # in line order, so the warning lists them as written
                        if key not in KNOWN_COLUMNS:
                            unknown.setdefault(key)
                    yield check(row, *_jsonl_fields(parsed))
        finally:
            self.unknown_columns = list(unknown)
            self._warn_unknown()

    def _warn_unknown(self) -> None:
        if self.unknown_columns and not self._warned:
            self._warned = True
            columns = ", ".join(self.unknown_columns)
            log.warning("manifest %s: ignoring unknown columns: %s", self.name, columns)


def read_manifest(source: Source, **kw: Any) -> Iterator[Book | RowError]:
    """Shorthand for iterating `ManifestReader(source, **kw)`."""
    return iter(ManifestReader(source, **kw))


def _field_values(batch: pa.RecordBatch, names: tuple[str, ...]) -> Iterable[object]:
    """One field's values in a batch: from its column, else (where null) its alias's."""
    if not names:
        return repeat(None)
    values = _column_values(batch.column(names[0]))
    if len(names) == 2:  # both present: the alias fills the rows where the column is null
        alias = _column_values(batch.column(names[1]))
        values = [a if v is None else v for v, a in zip(values, alias, strict=True)]
    return values


def _wrong_cells(row: int) -> RowError:
    return RowError(row, "malformed_csv", "the row does not have one cell per header column")


def _csv_fields(fields: tuple[object, ...]) -> tuple[object, ...]:
    """A CSV row's cells in FIELDS order with the integer columns parsed (a cell that is no
    integer stays text and is rejected by the row check, naming the field)."""
    parsed = list(fields)
    for index in (FIELDS.index(name) for name in _CSV_INTEGERS):
        cell = parsed[index]
        if isinstance(cell, bytes) and re.fullmatch(rb"\s*-?\d{1,18}\s*", cell):
            parsed[index] = int(cell)
        elif isinstance(cell, bytes):
            parsed[index] = cell.decode("utf-8", "replace")
    return tuple(parsed)


def _column_values(column: pa.Array) -> list[object]:
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        # Parquet readers do not validate UTF-8: take this column's raw bytes instead, so the
        # rows holding bad bytes are rejected one by one (invalid_utf8) and the rest go on.
        import pyarrow as pa

        return column.cast(pa.large_binary()).to_pylist()


def _parse_line(row: int, raw: bytes) -> dict | RowError:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(row, "invalid_utf8", f"line is not valid UTF-8 (byte {exc.start})")
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError as exc:
        return RowError(row, "malformed_json", f"malformed JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:  # a hostile line can nest [[[[... deeper than the parser's stack
        return RowError(row, "malformed_json", "malformed JSON: nested too deeply")
    except ValueError:  # an integer over Python's 4,300-digit conversion limit
        return RowError(row, "malformed_json", "malformed JSON: a number has too many digits")
    if not isinstance(parsed, dict):
        message = f"expected a JSON object per line, got {_type_name(parsed)}"
        return RowError(row, "malformed_json", message)
    if b"\\ud" in raw or b"\\uD" in raw:  # a \uD8xx escape may decode to a lone surrogate
        for key, value in parsed.items():
            if isinstance(value, str) and _has_surrogate(value):
                message = f"{key} holds an unpaired surrogate escape, not valid UTF-8"
                return RowError(row, "invalid_utf8", message, field=key)
    return parsed


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _jsonl_fields(obj: dict) -> tuple[object, ...]:
    """The row's values in FIELDS order; an alias counts where its canonical name is null."""
    get = obj.get
    book_id, text = get("book_id"), get("text")
    if book_id is None:
        book_id = get("bookId")
    if text is None:
        text = get("narrative")
    return (book_id, text, *map(get, FIELDS[2:]))


def _display_name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _tell(source: Source) -> int | None:
    """Start position of a seekable file object (to rewind to), else None."""
    if isinstance(source, (str, os.PathLike)):
        return None
    try:
        return source.tell() if source.seekable() else None
    except (OSError, ValueError):
        return None


def _peek(stream: BinaryIO, size: int) -> bytes:
    if stream.seekable():
        start = stream.tell()
        head = stream.read(size)
        stream.seek(start)
        return head
    peek = getattr(stream, "peek", None)
    if peek is None:
        raise ManifestError("cannot tell the format of a manifest stream", hint=_FORMAT_HINT)
    return peek(size)[:size]
