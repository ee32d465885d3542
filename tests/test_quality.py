"""The quality check: audio that says its chunk's text passes; audio that does not is caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from support.corruptions import render_demo, trials

from narrate.cli import cli
from narrate.config import SAMPLE_RATE, EngineConfig
from narrate.errors import ModelError
from narrate.quality import (
    QualityPool,
    Verdict,
    best_take,
    book_score,
    check,
    ipa_to_arpabet,
    spoken_tokens,
    verdict_of,
)
from narrate.spoken import speak
from narrate.synth import load_engine

NAMES = (
    "Aurelianus Nkemelu and Thessaly Vantablack rode with Zyxquor Brightwater from "
    "Kestrelmoor to Quillonby, where Oyelaran and Szczepanski waited."
)


@pytest.fixture(scope="module")
def preview():
    try:
        engine = load_engine(EngineConfig(engine="preview"))
    except ModelError as exc:
        pytest.skip(f"eSpeak NG is not available: {exc.message}")
    yield engine
    engine.close()


def test_speech_of_its_own_text_passes_with_every_word_aligned(preview) -> None:
    text = "It is a truth universally acknowledged, that a single man must be in want of a wife."
    verdict = check(preview.speak(text), SAMPLE_RATE, text)
    assert verdict.passed, verdict
    assert verdict.words_aligned == verdict.words_expected == 17
    assert verdict.missing_at_end == 0 and verdict.score == 1.0


def test_a_text_full_of_names_the_dictionary_lacks_passes(preview) -> None:
    verdict = check(preview.speak(NAMES), SAMPLE_RATE, NAMES)
    assert verdict.passed, verdict
    assert verdict.words_aligned == verdict.words_expected


def test_numbers_are_expected_as_words_in_any_usual_reading(preview) -> None:
    text = "In 1813 the 3rd ship carried 21 men and 1,500 barrels."
    assert spoken_tokens("the 3rd, 21") == [[["the"]], [["third"]], [["twenty"]], [["one"]]]
    # digits narrate.spoken leaves as written: each usual reading is accepted
    assert spoken_tokens("Agent 007")[1] == [["seven"], ["zero", "zero", "seven"]]
    # the engine reads the text as narrate.spoken writes it, as in a run
    verdict = check(preview.speak(speak(text)), SAMPLE_RATE, text)
    assert verdict.passed, verdict


def test_espeak_phonemes_map_to_the_dictionary_phone_set() -> None:
    assert ipa_to_arpabet(["n", "ˈɛ", "ð", "ɚ", "f", "ˌiː", "l", "d"]) == [
        "N", "EH", "DH", "ER", "F", "IY", "L", "D",
    ]  # fmt: skip
    assert ipa_to_arpabet(["tʃ", "ˈaɪ", "ʔ", "?"]) == ["CH", "AY"]  # unknown symbols dropped


def test_audio_that_stops_early_fails_and_says_how_many_words_are_missing(preview) -> None:
    spoken = "Mr. Bennet replied that he had not."
    verdict = check(preview.speak(spoken), SAMPLE_RATE, spoken + " Then he went out to the farm.")
    assert not verdict.passed
    assert verdict.words_aligned == 7 and verdict.missing_at_end == 7
    assert "missing at the end" in verdict.reason
    assert verdict.score < 1.0


@pytest.mark.slow
def test_on_the_demo_catalog_clean_chunks_pass_and_each_corruption_is_caught() -> None:
    """Every 4th demo chunk (22 of 87): the benchmark runs them all."""
    rendered = render_demo(every=4)
    rates = {
        kind: sum(not check(audio, SAMPLE_RATE, text).passed for text, audio in pairs) / len(pairs)
        for kind, pairs in trials(rendered).items()
    }
    assert rates.pop("clean") <= 0.01
    assert all(rate >= 0.95 for rate in rates.values()), rates


def test_narrate_check_exits_0_on_a_pass_1_on_a_fail_and_prints_json(preview, tmp_path) -> None:
    text = "The grapes are sour, and not ripe as I thought."
    path = tmp_path / "chunk.wav"
    sf.write(path, preview.speak(text), SAMPLE_RATE)
    runner = CliRunner()

    passed = runner.invoke(cli, ["check", str(path), "--text", text])
    assert passed.exit_code == 0, passed.output
    assert "pass: 10/10 words aligned" in passed.output

    failed = runner.invoke(cli, ["check", str(path), "--text", "A famished fox.", "--json"])
    assert failed.exit_code == 1
    figures = json.loads(failed.output)
    assert figures["passed"] is False and figures["words_expected"] == 3


def test_narrate_check_exits_2_on_bad_usage(tmp_path) -> None:
    path = tmp_path / "noise.wav"
    sf.write(path, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    runner = CliRunner()
    for args in (
        [str(path)],  # no text
        [str(path), "--text", "hi", "--manifest", "m.jsonl", "--book", "b"],
        [str(path), "--manifest", "manifests/demo.jsonl", "--book", "no-such-book"],
        [str(not_audio), "--text", "hi"],
    ):
        result = runner.invoke(cli, ["check", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output


def test_a_chunk_keeps_its_first_passing_take_else_its_best_scoring_one() -> None:
    def take(score: float) -> Verdict:
        return verdict_of(10, round(10 * score), (0.0, 0.0, 0.0), 3.0)

    assert best_take([take(0.5), take(1.0), take(1.0)]) == 1
    assert best_take([take(0.5), take(0.8), take(0.7)]) == 1
    assert book_score([take(1.0), take(0.7), take(1.0)]) == pytest.approx(0.7)
    assert book_score([]) == 1.0


def test_the_pool_checks_in_other_processes_with_the_same_verdicts(preview) -> None:
    texts = ["Call me Ishmael.", "It was the best of times, it was the worst of times."]
    audios = [preview.speak(text) for text in texts]
    with QualityPool(workers=2) as pool:
        futures = [
            pool.submit(audio, SAMPLE_RATE, text) for audio, text in zip(audios, texts, strict=True)
        ]
        wrong = pool.submit(audios[0], SAMPLE_RATE, texts[1])
        verdicts = [future.result(timeout=120) for future in futures]
        assert not wrong.result(timeout=120).passed
    assert verdicts == [check(a, SAMPLE_RATE, t) for a, t in zip(audios, texts, strict=True)]
    assert all(verdict.passed for verdict in verdicts)
