"""The quality check: audio that says its chunk's text passes; audio that does not is caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from support.corruptions import (
    VOICES,
    breath,
    prose,
    silence,
    speaker,
    speech_only,
    split,
    trials,
)

from narrate.cli import cli
from narrate.config import SAMPLE_RATE, EngineConfig
from narrate.errors import ModelError, UsageError
from narrate.quality import (
    QualityPool,
    Verdict,
    best_take,
    book_score,
    check,
    check_file,
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
def test_on_held_out_prose_in_many_voices_clean_takes_pass_and_corruptions_are_caught() -> None:
    """Every 6th held-out sentence, one voice each in turn: the benchmark runs them all."""
    _, held = split(prose())
    found = trials(held[::6], voices_per_sentence=1, seed=7)
    flagged: dict[str, list[bool]] = {}
    for trial in found:
        verdict = check(trial.audio, speaker().rate, trial.text)
        flagged.setdefault(trial.kind, []).append(not verdict.passed)
    clean = ("clean", "breath tail 0.8 s", "quiet (peak -30 dBFS)", "pause 2.0 s")
    assert not any(any(flagged[kind]) for kind in clean), flagged
    for kind in ("babble tail 3 s", "wrong sentence", "noise alone", "silence alone"):
        assert all(flagged[kind]), (kind, flagged[kind])
    # pure forced alignment caught about 1 in 5 substitutions and no 0.6 s insertion
    for kind in ("insertion 0.6 s", "repeat mid-sentence", "deletion", "truncated at 60 %"):
        assert sum(flagged[kind]) >= 0.5 * len(flagged[kind]), (kind, flagged[kind])
    assert sum(flagged["substitution"]) >= 0.3 * len(flagged["substitution"]), flagged


SEA = "The old man stood on the hill and looked out at the grey sea."


def test_a_word_replaced_by_another_fails_naming_the_word_and_its_time() -> None:
    said = speaker().speak(SEA.replace("stood", "jumped"), VOICES[0])
    verdict = check(said, speaker().rate, SEA)
    assert not verdict.passed and verdict.words_aligned == verdict.words_expected
    before = speaker().speak("The old man", VOICES[0])
    at = len(speech_only(before, speaker().rate)) / speaker().rate  # where "jumped" begins
    (fault, *_) = verdict.faults
    assert fault.start_s - 0.5 <= at <= fault.end_s + 0.5, (fault, at)
    assert str(fault) in verdict.reason
    assert fault.to_json()["start_s"] == round(fault.start_s, 2)


def test_other_speech_inserted_between_words_fails_as_unexplained_speech() -> None:
    rate = speaker().rate
    first = speaker().speak("The old man stood on the hill", VOICES[2])
    other = speech_only(speaker().speak("Bring me the lantern, quickly.", VOICES[2]), rate)
    rest = speaker().speak("and looked out at the grey sea.", VOICES[2])
    inserted = other[: int(0.6 * rate)]
    verdict = check(np.concatenate([first, inserted, rest]), rate, SEA)
    assert not verdict.passed
    assert any(fault.kind in ("speech", "word") for fault in verdict.faults), verdict
    spliced = check(np.concatenate([first, silence(0.1, rate), rest]), rate, SEA)
    assert spliced.passed, spliced  # the same splice without the other speech passes


def test_breath_after_the_last_word_a_quiet_take_and_a_long_pause_pass() -> None:
    rate = speaker().rate
    spoken = speech_only(speaker().speak(SEA, VOICES[0]), rate)
    peak = float(np.abs(spoken).max())
    breathing = np.concatenate([spoken, silence(0.15, rate), breath(0.9, rate, 1, peak / 4)])
    assert check(breathing, rate, SEA).passed
    assert check(np.concatenate([breath(0.6, rate, 2, peak / 4), spoken]), rate, SEA).passed
    assert check(spoken * (0.03 / peak), rate, SEA).passed  # peak -30 dBFS
    first = speaker().speak("The old man stood on the hill", VOICES[0])
    rest = speaker().speak("and looked out at the grey sea.", VOICES[0])
    paused = np.concatenate([first, silence(2.0, rate), rest])
    verdict = check(paused, rate, SEA)
    assert verdict.passed and verdict.longest_gap_s >= 1.9, verdict
    babble = speaker().speak("Bring me the lantern, quickly, before the fire spreads.", VOICES[0])
    assert not check(np.concatenate([spoken, babble]), rate, SEA).passed


def test_digital_silence_is_not_sound() -> None:
    nothing = check(np.zeros(0, dtype=np.float32), SAMPLE_RATE, SEA)
    assert not nothing.passed and nothing.words_aligned == 0
    assert nothing.unexplained_end_s == nothing.unexplained_start_s == 0.0
    quiet = check(np.zeros(2 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, SEA)
    assert quiet.unexplained_end_s == quiet.unexplained_inside_s == 0.0
    assert "missing" in quiet.reason


def test_text_with_nothing_speakable_is_a_usage_error_naming_why(tmp_path) -> None:
    path = tmp_path / "take.wav"
    sf.write(path, speaker().speak(SEA, VOICES[0]), speaker().rate)
    for text in (
        "",
        " ... ?! ",
        "\u4f60\u597d\u4e16\u754c",
        "\u041f\u0440\u0438\u0432\u0435\u0442",
    ):
        with pytest.raises(UsageError, match="no words to listen for"):
            check_file(str(path), [text])
        result = CliRunner().invoke(cli, ["check", str(path), "--text", text])
        assert result.exit_code == 2, (text, result.output)
        assert "no words to listen for" in result.output


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


CHAPTER = [
    "The rain had not stopped for three days, and the river rose a little higher every night.",
    "She folded the letter twice and hid it beneath the loose board in the kitchen floor.",
    "Nobody in the village could remember when the old mill had last turned its wheel.",
    "He walked to the station with his collar up, counting the lamps as he passed them.",
]


def test_a_long_file_is_checked_chunk_by_chunk_and_its_faults_carry_book_times(tmp_path) -> None:
    rate = speaker().rate
    takes = [speaker().speak(sentence, VOICES[0]) for sentence in CHAPTER]
    book = tmp_path / "book.flac"
    sf.write(book, np.concatenate(takes), rate)
    verdict = check_file(str(book), CHAPTER)
    assert verdict.passed, verdict
    assert verdict.words_aligned == verdict.words_expected == 64

    other = speech_only(speaker().speak("Bring me the lantern, quickly.", VOICES[0]), rate)
    middle = len(takes[2]) // 2
    takes[2] = np.concatenate([takes[2][:middle], other[: int(0.8 * rate)], takes[2][middle:]])
    sf.write(book, np.concatenate(takes), rate)
    verdict = check_file(str(book), CHAPTER)
    assert not verdict.passed and verdict.faults
    chunk_starts = np.cumsum([0] + [len(t) / rate for t in takes])
    assert chunk_starts[2] <= verdict.faults[0].start_s <= chunk_starts[3], verdict.faults


def test_narrate_check_takes_a_folder_and_a_manifest_and_names_each_books_result(
    tmp_path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    books = {"first": CHAPTER[0], "second": CHAPTER[1], "third": CHAPTER[3]}
    manifest.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in books.items())
    )
    folder = tmp_path / "out"
    folder.mkdir()
    rate = speaker().rate
    sf.write(folder / "first.wav", speaker().speak(CHAPTER[0], VOICES[1]), rate)
    sf.write(folder / "second.flac", speaker().speak(CHAPTER[3], VOICES[1]), rate)  # wrong text
    (folder / "notes.txt").write_text("not audio, not looked at")
    runner = CliRunner()

    result = runner.invoke(cli, ["check", str(folder), "--manifest", str(manifest), "--json"])
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["first.wav", "second.flac"]
    assert [line["passed"] for line in lines] == [True, False]

    only = ["check", str(folder), "--manifest", str(manifest), "--book", "first"]
    assert runner.invoke(cli, only).exit_code == 0
    missing = runner.invoke(cli, [*only, "--book", "third"])
    assert missing.exit_code == 2 and "no audio file for book 'third'" in missing.output
    one = ["check", str(folder / "second.flac"), "--manifest", str(manifest), "--book", "third"]
    assert runner.invoke(cli, one).exit_code == 0  # one file, one book: paired by the user


def test_narrate_check_of_a_manifest_book_hears_its_text_with_the_lexicon_applied(
    tmp_path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "mill", "text": "Nobody saw Quill turn."}) + "\n")
    lexicon = tmp_path / "lexicon.tsv"
    lexicon.write_text("Quill\tthe old mill by the river\n")
    rate = speaker().rate
    said = "Nobody saw the old mill by the river turn."
    sf.write(tmp_path / "mill.wav", speaker().speak(said, VOICES[0]), rate)
    check_book = ["check", str(tmp_path / "mill.wav"), "--manifest", str(manifest), "--json"]
    runner = CliRunner()

    heard = runner.invoke(cli, [*check_book, "--lexicon", str(lexicon)])
    assert heard.exit_code == 0, heard.output
    assert json.loads(heard.output)["words_expected"] == 9
    written = runner.invoke(cli, check_book)
    assert written.exit_code == 1, written.output
    assert json.loads(written.output)["words_expected"] == 4


def test_a_book_behind_text_uri_under_the_text_root_is_found_by_check_and_spoken(
    tmp_path,
) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "chapter.txt").write_text(CHAPTER[2])
    (tmp_path / "manifests").mkdir()
    manifest = tmp_path / "manifests" / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "mill", "text_uri": "chapter.txt"}) + "\n")
    sf.write(tmp_path / "mill.wav", speaker().speak(CHAPTER[2], VOICES[0]), speaker().rate)
    book = ["--manifest", str(manifest), "--book", "mill", "--text-root", str(tmp_path / "texts")]
    runner = CliRunner()

    checked = runner.invoke(cli, ["check", str(tmp_path / "mill.wav"), *book])
    assert checked.exit_code == 0, checked.output
    assert "pass: 15/15 words aligned" in checked.output
    spoken = runner.invoke(cli, ["spoken", *book])
    assert spoken.exit_code == 0 and spoken.output == CHAPTER[2] + "\n", spoken.output
    outside = runner.invoke(cli, ["check", str(tmp_path / "mill.wav"), *book[:4]])
    assert outside.exit_code == 2 and "text_uri cannot be read" in outside.output
