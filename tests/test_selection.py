"""Previews: `run --book ID`, `--limit N`, `--sample N --seed S` render only those books."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.runs import preview_args

from narrate.cli import cli
from narrate.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from narrate.records import Book, RowError
from narrate.selection import Selection, select_rows


def rows(n: int, bad: tuple[int, ...] = ()) -> Iterator[Book | RowError]:
    for i in range(1, n + 1):
        if i in bad:
            yield RowError(i, "empty_text", "text is empty", book_id=f"b{i}")
        else:
            yield Book(f"b{i}", row=i, text=f"Book number {i}.")


def ids(selected: object) -> list[str | None]:
    return [row.book_id for row in selected]  # type: ignore[attr-defined]


def test_limit_keeps_the_first_books_and_reads_no_further() -> None:
    read: list[int] = []

    def counted() -> Iterator[Book | RowError]:
        for row in rows(100, bad=(2,)):
            read.append(row.row)
            yield row

    assert ids(select_rows(counted(), Selection(limit=3))) == ["b1", "b2", "b3", "b4"]
    assert len(read) == 4  # a 100-row manifest is not read to its end


def test_named_books_come_in_manifest_order_and_a_missing_one_is_a_rejected_row() -> None:
    selected = list(select_rows(rows(10), Selection(book_ids=("b7", "b3", "nope"))))
    assert ids(selected) == ["b3", "b7", "nope"]
    assert isinstance(selected[-1], RowError) and "no row of the manifest" in selected[-1].message


def test_a_sample_is_the_same_for_a_seed_and_another_for_another_seed() -> None:
    first = ids(select_rows(rows(200), Selection(sample=5, seed=1)))
    assert first == ids(select_rows(rows(200), Selection(sample=5, seed=1)))
    assert first != ids(select_rows(rows(200), Selection(sample=5, seed=2)))
    assert len(first) == 5 and first == sorted(first, key=lambda b: int(b[1:]))


def test_limit_and_sample_together_are_refused() -> None:
    with pytest.raises(UsageError, match="--limit and --sample"):
        Selection(limit=1, sample=2)


@pytest.mark.slow
def test_run_with_book_renders_only_that_book_and_a_later_full_run_reuses_its_cache(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    texts = {"fox": "The grapes are sour.", "hare": "Slow and steady wins.", "owl": "Who?"}
    manifest.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in texts.items())
    )

    def run(*extra: str, code: int = EXIT_OK) -> dict:
        report = tmp_path / "r.json"
        args = ["run", str(manifest), *preview_args(tmp_path, f"--report={report}", *extra)]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return json.loads(report.read_text())

    preview = run("--book", "hare", "--quality", "off")
    assert [b["book_id"] for b in preview["books"]] == ["hare"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["hare.wav"]
    full = run("--quality", "off")
    assert {b["book_id"]: b["status"] for b in full["books"]}["hare"] == "skipped"
    assert full["totals"]["ready"] == 2
    typo = run("--book", "haer", "--quality", "off", code=EXIT_SOME_FAILED)
    assert typo["rejected_rows"][0]["reason"] == "not_in_manifest"
