"""Batch planning, sharding and `narrate plan`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from narrate.cli import cli
from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
from narrate.errors import UsageError
from narrate.plan import (
    PlannedBook,
    Planner,
    Shard,
    chunk_books,
    padding_efficiency,
    plan_batches,
    plan_book_batches,
    shard_rows,
)
from narrate.records import Book, RowError, unique_chunks
from narrate.sources import TextFetcher

CHUNKING = ChunkingConfig()
WORDS = "the river ran past old houses while a captain wrote letters home at evening".split()


def prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 30))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def catalog(n: int, seed: int = 1) -> list[Book]:
    rng = random.Random(seed)
    return [Book(f"b{i}", row=i + 1, text=prose(rng, rng.randint(1, 40))) for i in range(n)]


def planned(books: list[Book]) -> list[PlannedBook]:
    items = list(chunk_books(books, chunking=CHUNKING, engine_fingerprint="test"))
    assert all(isinstance(i, PlannedBook) for i in items)
    return items  # type: ignore[return-value]


def all_chunks(books: list[PlannedBook]) -> list:
    return [c for b in books for c in b.chunks]


def first_seen(books: list[PlannedBook]) -> list[list]:
    """Each book's chunks that no earlier book has: what a run plans for it."""
    seen: set[str] = set()
    per_book = []
    for book in books:
        new = [c for c in unique_chunks(book.chunks) if c.chunk_id not in seen]
        seen.update(c.chunk_id for c in new)
        per_book.append(new)
    return per_book


def test_books_finish_early_in_the_window_with_padding_kept() -> None:
    books = planned(catalog(200, seed=4))
    config = PlanConfig(batch_size=8)
    grouped = plan_book_batches(first_seen(books), config)
    whole = plan_batches(all_chunks(books), config)

    def done_after(batches: list, book: PlannedBook) -> int:
        """Batches run before every chunk of `book` is synthesized."""
        ids = {c.chunk_id for c in book.chunks}
        return 1 + max(i for i, b in enumerate(batches) if ids & {c.chunk_id for c in b.chunks})

    assert done_after(grouped, books[0]) < len(grouped) / 4
    assert done_after(whole, books[0]) > len(whole) / 2  # sorted across the window: late
    assert padding_efficiency(grouped) >= 0.95
    planned_ids = sorted(c.chunk_id for b in grouped for c in b.chunks)
    assert planned_ids == sorted({c.chunk_id for c in all_chunks(books)})


def test_sorted_batching_beats_input_order_on_padding() -> None:
    chunks = all_chunks(planned(catalog(60)))
    config = PlanConfig(batch_size=8)
    sorted_eff = padding_efficiency(plan_batches(chunks, config))
    input_eff = padding_efficiency(plan_batches(chunks, config, sort=False))
    assert sorted_eff > input_eff
    assert sorted_eff > 0.9


def test_batches_respect_size_and_position_budget_longest_first() -> None:
    chunks = all_chunks(planned(catalog(40)))
    config = PlanConfig(batch_size=6, max_batch_positions=6 * 300)
    batches = plan_batches(chunks, config)
    for batch in batches:
        assert 1 <= len(batch) <= 6
        assert len(batch) == 1 or batch.computed_positions <= config.max_batch_positions
    widest = [max(c.positions for c in b.chunks) for b in batches]
    assert widest == sorted(widest, reverse=True)
    planned_ids = sorted(c.chunk_id for b in batches for c in b.chunks)
    assert planned_ids == sorted({c.chunk_id for c in chunks})


def test_identical_chunks_across_books_are_planned_once() -> None:
    text = "It was the best of times. It was the worst of times."
    books = planned([Book("a", 1, text=text), Book("b", 2, text=text)])
    assert [c.chunk_id for c in books[0].chunks] == [c.chunk_id for c in books[1].chunks]
    batches = plan_batches(all_chunks(books), PlanConfig())
    assert sum(len(b) for b in batches) == len(books[0].chunks)


def test_plan_summary_counts_what_a_run_would_synthesize() -> None:
    # `plan` counts chunks in C++ without building them; a run builds Chunk objects and
    # batches them. Both must agree, repeated chunks (across books, not across speakers),
    # a text with no words and non-ASCII typography included.
    rng = random.Random(5)
    books = catalog(120, seed=3)
    books += [Book(f"copy{i}", row=200 + i, text=books[i].text) for i in range(20)]
    books += [Book(f"voice{i}", row=300 + i, text=books[i].text, speaker=1) for i in range(5)]
    books.append(Book("dashes", row=400, text="\u201cWait\u2026\u201d \u2014 she said. " * 30))
    books.append(Book("silent", row=401, text=" \u200b\n\n\t "))
    # the same chunks held in a two-byte string (a non-ASCII paragraph follows) are identical
    books.append(Book("wide", row=402, text=books[1].text + "\n\nIt cost 5 \u20ac."))
    rng.shuffle(books)
    plan = PlanConfig(batch_size=6)
    planner = Planner(EngineConfig(engine="preview"), CHUNKING, plan)

    summary = planner.summary(books)

    items = list(
        chunk_books(books, chunking=CHUNKING, engine_fingerprint=planner.engine.fingerprint())
    )
    built = [i for i in items if isinstance(i, PlannedBook)]
    batches = plan_book_batches(first_seen(built), plan)
    assert summary.books == len(built) == len(books) - 1
    wide = next(b for b in built if b.book.book_id == "wide")
    assert (
        wide.chunks[0].chunk_id
        == next(b for b in built if b.book.book_id == "b1").chunks[0].chunk_id
    )
    assert summary.rejected == {"empty_text": 1}
    assert summary.chunks == len(all_chunks(built))
    assert summary.characters == sum(b.characters for b in built)
    assert summary.unique_chunks == sum(len(b) for b in batches) < summary.chunks
    assert summary.batches == len(batches)
    assert summary.useful_positions == sum(b.useful_positions for b in batches)
    assert summary.computed_positions == sum(b.computed_positions for b in batches)


def test_plan_is_deterministic() -> None:
    chunks = all_chunks(planned(catalog(30)))
    shuffled = chunks[:]
    random.Random(3).shuffle(shuffled)
    ids = [[c.chunk_id for c in b.chunks] for b in plan_batches(chunks, PlanConfig())]
    assert ids == [[c.chunk_id for c in b.chunks] for b in plan_batches(chunks, PlanConfig())]
    # the same chunks in another order give batches of the same widths
    widths = [b.computed_positions for b in plan_batches(shuffled, PlanConfig())]
    assert widths == [b.computed_positions for b in plan_batches(chunks, PlanConfig())]


def test_shards_cover_the_catalog_exactly_once_and_balance_length() -> None:
    books = catalog(300, seed=5)
    rows: list[Book | RowError] = [*books, RowError(301, "missing_id", "book_id: missing")]
    shards = [list(shard_rows(rows, Shard(i, 3), block=64)) for i in range(3)]
    ids = [r.book_id for shard in shards for r in shard if isinstance(r, Book)]
    assert sorted(ids) == sorted(b.book_id for b in books)
    assert sum(isinstance(r, RowError) for shard in shards for r in shard) == 1
    loads = [sum(len(r.text or "") for r in shard if isinstance(r, Book)) for shard in shards]
    assert max(loads) / min(loads) < 1.05
    # every pod computes the same assignment
    assert shards[1] == list(shard_rows(rows, Shard(1, 3), block=64))


def test_shards_balance_text_not_book_count_when_books_differ_in_length() -> None:
    # one book as long as a third of the catalog, then every third row a long book: dealing
    # books out by count (in row order or longest first) leaves one pod with far more speech
    huge = Book("huge", row=1, text="word " * 3_200)
    rest = [
        Book(f"b{row}", row=row, text="word " * (300 if row % 3 == 2 else 10))
        for row in range(2, 62)
    ]
    books = [huge, *rest]
    shards = [list(shard_rows(books, Shard(i, 3))) for i in range(3)]
    assert sorted(b.book_id for shard in shards for b in shard) == sorted(b.book_id for b in books)
    loads = [sum(len(b.text or "") for b in shard) for shard in shards]
    assert max(loads) / min(loads) < 1.05, loads
    assert [b.book_id for b in shards[0]] == ["huge"]  # the longest goes alone to shard 0


def test_shard_defaults_from_kubernetes_environment() -> None:
    assert Shard.parse(None, {}) == Shard(0, 1)
    assert Shard.parse(None, {"JOB_COMPLETION_INDEX": "2", "NARRATE_SHARDS": "4"}) == Shard(2, 4)
    assert Shard.parse("1/3", {"JOB_COMPLETION_INDEX": "2"}) == Shard(1, 3)
    for bad in ("3/3", "x/2", "1"):
        with pytest.raises(UsageError):
            Shard.parse(bad, {})


def test_text_uri_is_read_and_unknown_voice_rejects_only_that_book(tmp_path: Path) -> None:
    (tmp_path / "story.txt").write_text("Once upon a time. The end.", encoding="utf-8")

    def voices(name: str | None) -> tuple[str, int]:
        if name not in (None, "narrator"):
            raise UsageError(f"voice {name!r} is not registered")
        return (name or "", 120 if name else 0)

    rows = [
        Book("a", 1, text_uri=str(tmp_path / "story.txt")),
        Book("b", 2, text="Hello there.", voice="nobody"),
        Book("c", 3, text="Hello there.", voice="narrator"),
        Book("d", 4, text_uri=str(tmp_path / "missing.txt")),
    ]
    texts = TextFetcher(str(tmp_path), CHUNKING.max_text_chars)
    out = list(
        chunk_books(
            rows, chunking=CHUNKING, engine_fingerprint="t", voices=voices, text_loader=texts
        )
    )
    assert isinstance(out[0], PlannedBook) and out[0].chunks[0].text.startswith("Once upon")
    assert isinstance(out[1], RowError) and out[1].row == 2 and out[1].field == "voice"
    assert isinstance(out[2], PlannedBook) and out[2].chunks[0].prompt_positions == 120
    assert isinstance(out[3], RowError) and out[3].row == 4 and out[3].field == "text_uri"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_plan_reports_and_exits_zero_on_a_clean_manifest(tmp_path: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [{"book_id": f"b{i}", "text": prose(random.Random(i), 12)} for i in range(5)],
    )
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--engine", "preview"])
    assert result.exit_code == 0, result.output
    assert "books accepted     5" in result.output
    assert "padding efficiency" in result.output

    result = CliRunner().invoke(cli, ["plan", str(manifest), "--json", "--engine", "preview"])
    summary = json.loads(result.stdout)
    assert summary["books"] == 5 and summary["rows_rejected"] == 0
    assert summary["chunks"] >= 5 and summary["batches"] >= 1
    assert 0 < summary["padding_efficiency"] <= 1


def test_cli_plan_exits_one_and_names_rejected_rows(tmp_path: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"book_id": "good", "text": "A fine story."},
            {"book_id": "bad/id", "text": "Slash in the id."},
            {"book_id": "empty", "text": "   "},
        ],
    )
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["books"] == 1 and summary["rows_rejected"] == 2
    assert summary["rejected_by_reason"] == {"invalid_id": 1, "empty_text": 1}
    rows = [(r["row"], r["book_id"], r["reason"]) for r in summary["rejected_rows"]]
    assert rows == [(2, None, "invalid_id"), (3, "empty", "empty_text")]
    assert all(r["message"] for r in summary["rejected_rows"])


def test_plan_lists_every_rejected_row_in_text_and_json(tmp_path: Path) -> None:
    rows = [{"book_id": f"b{i}", "text": "  " if i % 2 else "A story."} for i in range(1, 41)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    args = ["plan", str(manifest), "--engine", "preview", "--window", "7", "--jobs", "2"]

    text = CliRunner().invoke(cli, args).output
    listed = CliRunner().invoke(cli, [*args, "--json"]).stdout

    empty = [i for i in range(1, 41) if i % 2]
    assert [r["row"] for r in json.loads(listed)["rejected_rows"]] == empty
    assert all(f"row {i} (b{i}): text is empty" in text for i in empty)


def test_cli_plan_exits_two_on_unreadable_manifest(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output


def test_parallel_planning_reports_exactly_what_one_process_does(tmp_path: Path) -> None:
    rows = [{"book_id": f"b{i}", "text": prose(random.Random(i), 1 + i % 9)} for i in range(40)]
    rows[7] = {"book_id": "b7", "text": ""}
    rows[30] = {"book_id": "b3", "text": "A duplicate id."}
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    args = ["plan", str(manifest), "--json", "--engine", "preview", "--window", "6"]
    one = CliRunner().invoke(cli, [*args, "--jobs", "1"])
    two = CliRunner().invoke(cli, [*args, "--jobs", "2"])
    assert one.exit_code == two.exit_code == 1
    assert json.loads(one.stdout) == json.loads(two.stdout)
    summary = json.loads(one.stdout)
    assert summary["books"] == 38 and summary["rows_rejected"] == 2
    assert summary["batches"] >= 7  # seven windows, each batched on its own


def test_help_and_plan_never_import_torch() -> None:
    # `narrate --help` and `narrate plan` must stay fast on machines without a GPU stack loaded
    demo = Path(__file__).parent.parent / "manifests" / "demo.jsonl"
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom narrate.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        f"result = CliRunner().invoke(cli, ['plan', {str(demo)!r}, '--jobs', '1'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'moshi', 'audioseal') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
