"""Text normalization, sentence splitting and chunking (narrate.text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narrate.config import ChunkingConfig
from narrate.errors import UsageError
from narrate.records import Chunk
from narrate.text import chunk_book, chunk_id, normalize, split_sentences, spoken_text

CONFIG = ChunkingConfig()
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- sentence splitting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paragraph", "sentences"),
    [
        (
            "Mr. Smith met Mrs. Jones and Dr. Brown at St. Paul's. Prof. Lee was late.",
            ["Mr. Smith met Mrs. Jones and Dr. Brown at St. Paul's.", "Prof. Lee was late."],
        ),
        (
            "Bring fruit, e.g. Apples, i.e. Red ones, etc. and nuts. Then go.",
            ["Bring fruit, e.g. Apples, i.e. Red ones, etc. and nuts.", "Then go."],
        ),
        (
            "We packed pears, plums, etc. The trip began.",
            ["We packed pears, plums, etc.", "The trip began."],
        ),
        (
            "J. R. R. Tolkien wrote it. It sold well.",
            ["J. R. R. Tolkien wrote it.", "It sold well."],
        ),
        (
            "Pi is 3.14 or so. It costs $3.50. Cheap.",
            ["Pi is 3.14 or so.", "It costs $3.50.", "Cheap."],
        ),
        ("Wait... what? No... Really.", ["Wait... what?", "No...", "Really."]),
        ('"Stop!" he said. "Go." She left.', ['"Stop!" he said.', '"Go."', "She left."]),
        ("'Go,' she said. 'Now.' He went.", ["'Go,' she said.", "'Now.'", "He went."]),
        (
            "What?! No way! (He left.) Then he came back.",
            ["What?!", "No way!", "(He left.)", "Then he came back."],
        ),
        (
            "He lives at No. 5 Baker St. with a friend.",
            ["He lives at No. 5 Baker St. with a friend."],
        ),
        ("See p. 12 and Fig. 3 for details. Done.", ["See p. 12 and Fig. 3 for details.", "Done."]),
        (
            "He moved to the U.S.A. in 1990. It was I. Then",
            ["He moved to the U.S.A. in 1990.", "It was I.", "Then"],
        ),
        ("\u201cGo.\u201d She left.", ["\u201cGo.\u201d", "She left."]),
        ("No punctuation at all", ["No punctuation at all"]),
        ("  ", []),
    ],
)
def test_split_sentences_on_tricky_english(paragraph: str, sentences: list[str]) -> None:
    assert split_sentences(paragraph) == sentences


# --- normalization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\u201cHello,\u201d she said\u2026 \u2018fine\u2019", "\"Hello,\" she said... 'fine'"),
        ("Wait . . . what", "Wait ... what"),
        (
            "pages 10\u201320 \u2013 or more -- maybe\u2015no",
            "pages 10-20 \u2014 or more \u2014 maybe\u2014no",
        ),
        ("a\u00a0b\u2009c\tx  y\u3000z", "a b c x y z"),
        (
            "soft\u00adhyphen zero\u200bwidth \ufeffbom bell\x07 lone\ud800",
            "softhyphen zerowidth bom bell lone",
        ),
        ("line one\nline two\r\nline three", "line one line two line three"),
        ("one\r\n\r\ntwo\n \t\n\n\nthree\u2029four", "one\n\ntwo\n\nthree\n\nfour"),
        ("  \n\n  padded  \n\n  ", "padded"),
        ("\uff21\uff22 \ufb01le", "AB file"),  # NFKC: full-width letters, ligature
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@PROPERTY
@given(st.text())
def test_normalize_is_canonical_and_idempotent(raw: str) -> None:
    text = normalize(raw)
    assert normalize(text) == text
    for paragraph in text.split("\n\n") if text else []:
        # words separated by exactly one space, nothing else that counts as whitespace
        assert paragraph and paragraph == " ".join(paragraph.split())
        assert not any(unicodedata.category(char) in ("Cc", "Cs") for char in paragraph)


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.text("abcdXYZ,'", min_size=1, max_size=12) | st.just("café"),
            st.sampled_from([" "] * 12 + ["  ", "\t", "\n", " \n", "\n\n", "\n \t\n", "   \n"]),
        ),
        min_size=40,
        max_size=160,
    ),
    st.sampled_from(["", " ", "\n\n", "\t "]),
)
def test_long_texts_keep_words_and_collapse_whitespace(words: list, lead: str) -> None:
    # Long runs of words and single spaces are handled 16 characters at a time: whatever the
    # offsets, the result is the rule in plain words (paragraphs at blank lines, one space
    # between words, nothing at the ends).
    raw = lead + "".join(word + gap for word, gap in words)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", raw)]
    assert normalize(raw) == "\n\n".join(p for p in paragraphs if p)


# --- chunking ------------------------------------------------------------------------------

WORDS = (
    "the old man walked slowly down road thinking of days when he was young Mr. Dr. St. "
    "e.g. i.e. etc. J. 3.14 No. 5 U.S.A. \u201cquoted\u201d \u2018single\u2019 it's "
    "well-known \u2014 ... ?! (aside) [note] then, however; as follows: said,"
).split()


@st.composite
def prose(draw: st.DrawFn) -> str:
    """Narrative-like text: sentences of varied length, some far over a chunk, paragraphs."""
    paragraphs = []
    for _ in range(draw(st.integers(1, 4))):
        sentences = []
        for _ in range(draw(st.integers(1, 6))):
            words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=60))
            if draw(st.integers(0, 20)) == 0:  # now and then a word no chunk can hold
                words.append("x" * draw(st.integers(CONFIG.max_chunk_chars, 300)))
            sentence = " ".join(words)
            sentences.append(sentence[0].upper() + sentence[1:] + draw(st.sampled_from(".!?")))
        spacing = draw(st.sampled_from([" ", "  ", "\n", " \t"]))
        paragraphs.append(spacing.join(sentences))
    return draw(st.sampled_from(["\n\n", "\r\n\r\n", "\n \n\n"])).join(paragraphs)


def chunked(text: str, **kwargs: object) -> list[Chunk]:
    options: dict = {"config": CONFIG, "engine_fingerprint": "engine-a", **kwargs}
    return chunk_book("book", text, **options)


def assert_well_formed(
    text: str, chunks: list[Chunk], config: ChunkingConfig, count: Callable[[str], int]
) -> None:
    # nothing lost, duplicated or reordered, and paragraphs rebuild exactly (as spoken)
    assert [w for c in chunks for w in c.text.split()] == spoken_text(text).split()
    paragraphs: list[list[str]] = []
    for c in chunks:
        if c.pause_before != "sentence":
            paragraphs.append([])
        paragraphs[-1].append(c.text)
    assert "\n\n".join(" ".join(p) for p in paragraphs) == spoken_text(text)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.pause_before == "none" for c in chunks] == [i == 0 for i in range(len(chunks))]
    for c in chunks:
        assert c.text == c.text.strip() and c.text
        assert c.text_tokens == count(c.text)
        assert c.max_frames == config.max_frames(len(c.text))
        if " " in c.text:  # only a lone word longer than the budget may exceed it
            assert len(c.text) <= config.max_chunk_chars
            assert c.positions <= config.window


@PROPERTY
@given(prose())
def test_chunking_keeps_every_word_in_order_within_budget(text: str) -> None:
    assert_well_formed(text, chunked(text), CONFIG, CONFIG.estimate_tokens)


def pessimistic_tokenizer(text: str) -> int:
    """Far more tokens than the estimator predicts, so the real count forces smaller chunks."""
    return len(text) + 4


@PROPERTY
@given(prose(), st.sampled_from([0, 300, 900, 1200]), st.sampled_from([10_000, 30_000, 60_000]))
def test_chunking_fits_the_window_with_a_voice_prompt_and_a_real_tokenizer(
    text: str, prompt_positions: int, max_audio_ms: int
) -> None:
    config = ChunkingConfig(max_audio_ms=max_audio_ms)
    chunks = chunk_book(
        "book",
        text,
        config=config,
        engine_fingerprint="engine-a",
        prompt_positions=prompt_positions,
        count_tokens=pessimistic_tokenizer,
    )
    assert all(c.prompt_positions == prompt_positions for c in chunks)
    assert_well_formed(text, chunks, config, pessimistic_tokenizer)


def test_the_real_token_count_shrinks_chunks_the_estimate_would_overfill() -> None:
    text = " ".join(f"This is sentence {i} of a story about a fox." for i in range(30))
    estimated = chunked(text, prompt_positions=1600)
    counted = chunked(text, prompt_positions=1600, count_tokens=pessimistic_tokenizer)
    overfull = [c for c in estimated if 1600 + pessimistic_tokenizer(c.text) + c.max_frames > 2048]
    assert overfull and len(counted) > len(estimated)
    assert all(c.positions <= CONFIG.window for c in counted)


def test_short_sentences_are_packed_greedily() -> None:
    sentences = [f"Sentence number {i} is short." for i in range(40)]
    chunks = chunked(" ".join(sentences))
    assert len(chunks) < len(sentences) / 3
    for current, following in zip(chunks, chunks[1:], strict=False):
        next_sentence = split_sentences(following.text)[0]
        assert len(current.text) + 1 + len(next_sentence) > CONFIG.max_chunk_chars
        assert current.text.endswith(".")  # cut at sentence ends only


def test_long_sentence_is_split_at_clause_punctuation_then_spaces() -> None:
    clauses = [f"and then the {i}th traveller came down the hill" for i in range(12)]
    chunks = chunked(", ".join(clauses) + ".")
    assert len(chunks) > 1
    assert all(c.text.endswith(",") for c in chunks[:-1])
    run_on = " ".join(["word"] * 200)
    assert all(set(c.text.split()) == {"word"} for c in chunked(run_on))


def test_a_word_longer_than_the_budget_is_kept_whole() -> None:
    word = "z" * (CONFIG.max_chunk_chars + 50)
    chunks = chunked(f"Before it. {word} after it.")
    assert word in [c.text for c in chunks]


def test_paragraphs_start_new_chunks() -> None:
    chunks = chunked("One. Two.\n\nThree.\n\n\n\nFour. " + "Five is longer. " * 30)
    assert [c.text for c in chunks[:2]] == ["One. Two.", "Three."]
    assert chunks[2].text.startswith("Four. Five is longer. Five")
    assert [c.pause_before for c in chunks[:4]] == ["none", "paragraph", "paragraph", "sentence"]
    assert chunked("  \n\n \t ") == []


def test_a_prompt_that_fills_the_window_is_rejected() -> None:
    with pytest.raises(UsageError, match="voice prompt"):
        chunked("Hello there.", prompt_positions=CONFIG.window - 10)


# --- chunk ids ------------------------------------------------------------------------------

TEXT = "It was the best of times. It was the worst of times.\n\nIt was the age of wisdom."


def ids(text: str = TEXT, **kwargs: object) -> list[str]:
    return [c.chunk_id for c in chunked(text, **kwargs)]


def test_ids_depend_on_text_speaker_voice_and_engine_but_not_the_book() -> None:
    base = ids()
    assert len(set(base)) == len(base)
    assert ids(TEXT.replace("wisdom", "foolishness"))[:-1] == base[:-1]
    assert ids(TEXT.replace("wisdom", "foolishness"))[-1] != base[-1]
    assert set(ids(speaker=1)).isdisjoint(base)
    assert set(ids(voice_key="narrator-2")).isdisjoint(base)
    assert set(ids(engine_fingerprint="engine-b")).isdisjoint(base)
    other_book = chunk_book("another-book", TEXT, config=CONFIG, engine_fingerprint="engine-a")
    assert [c.chunk_id for c in other_book] == base
    # the same words, typed differently, are the same audio
    assert ids(TEXT.replace(" ", "  ").replace("It was", "It\nwas")) == base


def test_chunk_id_matches_the_chunks_and_normalizes() -> None:
    chunks = chunked(TEXT, speaker=2, voice_key="v")
    assert [chunk_id(c.text, 2, "v", "engine-a") for c in chunks] == [c.chunk_id for c in chunks]
    assert chunk_id("\u201cHi\u201d  there", 0, "", "e") == chunk_id('"Hi" there', 0, "", "e")


def test_ids_are_stable_across_processes() -> None:
    script = (
        "from narrate.config import ChunkingConfig; from narrate.text import chunk_book; "
        f"print(' '.join(c.chunk_id for c in chunk_book('b', {TEXT!r}, "
        "config=ChunkingConfig(), engine_fingerprint='engine-a')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ids()
