"""The language check: a row that is not in English (its `language` field, or its text) is
rejected by plan and run before anything is synthesized, with the language detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from narrate.cli import cli
from narrate.config import ChunkingConfig
from narrate.language import detect_other_language, is_english_code
from narrate.plan import chunk_books
from narrate.records import Book, RowError

ENGLISH = (
    "The ship left the harbour at dawn, and by noon the coast had vanished behind them. "
    "Nobody on board spoke of what they had seen in the village; the captain kept to his cabin."
)
GERMAN = (
    "Der alte Mann ging langsam durch den Wald und dachte an seine Kindheit. Die Vögel sangen "
    "in den Bäumen, und der Wind trug den Geruch von frischem Regen über die Felder."
)
GREEK = (
    "Ο γέρος περπατούσε αργά μέσα στο δάσος και σκεφτόταν τα παιδικά του χρόνια. Τα πουλιά "
    "τραγουδούσαν στα δέντρα και ο άνεμος έφερνε τη μυρωδιά της βροχής πάνω από τα χωράφια."
)
FRENCH = (
    "La vieille femme ouvrit la fenêtre et regarda la mer. Les bateaux rentraient au port, "
    "et les enfants couraient sur la plage en criant les noms des pêcheurs qu'ils connaissaient."
)


@pytest.mark.parametrize(
    ("text", "code", "name"),
    [(GERMAN, "de", "German"), (GREEK, "el", "Greek"), (FRENCH, "fr", "French")],
)
def test_a_narrative_in_another_language_is_detected_with_its_confidence(
    text: str, code: str, name: str
) -> None:
    detected = detect_other_language(text)
    assert detected is not None
    assert (detected.code, detected.name) == (code, name) and detected.confidence >= 0.9


@pytest.mark.parametrize(
    "text",
    [
        ENGLISH,
        "Chapter XIV",  # too little to tell
        "Hermione smiled at Dvořák and Nguyễn.",
        "Ödön von Horváth, Zoë Łukasiewicz and Søren met in Kraków in the winter of 1931, "
        "and they talked of the war until the morning came.",
    ],
)
def test_english_and_too_short_texts_pass(text: str) -> None:
    assert detect_other_language(text) is None


def test_english_language_codes_are_english() -> None:
    assert all(is_english_code(c) for c in ("en", "EN", "en-GB", "en_US", "eng", "English"))
    assert not any(is_english_code(c) for c in ("de", "el", "fr-CA", "german", "enx"))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_plan_rejects_a_row_not_in_english_with_the_language_detected(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"book_id": "en", "text": ENGLISH},
            {"book_id": "de", "text": GERMAN},
            {"book_id": "el", "text": GREEK},
            {"book_id": "tagged", "text": ENGLISH, "language": "de"},
            {"book_id": "gb", "text": ENGLISH, "language": "en-GB"},
        ],
    )
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--engine", "preview", "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.output)
    assert summary["books"] == 2
    assert summary["rejected_by_reason"] == {"unsupported_language": 3}
    messages = {row["book_id"]: row["message"] for row in summary["rejected_rows"]}
    assert messages["de"].startswith("text: reads as German (de, confidence 1.00), not English")
    assert messages["el"].startswith("text: reads as Greek (el, confidence 1.00)")
    assert messages["tagged"].startswith("language: 'de' is not English")


def test_the_check_can_be_turned_off(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [{"book_id": "de", "text": GERMAN}, {"book_id": "x", "text": ENGLISH, "language": "el"}],
    )
    args = ["plan", str(manifest), "--engine", "preview", "--json", "--no-language-check"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["books"] == 2


def test_a_run_chunks_no_row_that_is_not_in_english() -> None:
    rows = [Book("en", 1, text=ENGLISH), Book("de", 2, text=GERMAN)]
    planned = list(chunk_books(rows, chunking=ChunkingConfig(), engine_fingerprint="e"))
    assert not isinstance(planned[0], RowError)
    assert isinstance(planned[1], RowError) and planned[1].reason == "unsupported_language"
    unchecked = ChunkingConfig(check_language=False)
    assert not any(
        isinstance(p, RowError)
        for p in chunk_books(rows, chunking=unchecked, engine_fingerprint="e")
    )
