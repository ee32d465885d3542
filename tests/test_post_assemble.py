"""Book assembly: pauses at joins, clickless joins, chunk order."""

from __future__ import annotations

import numpy as np
import pytest
from support.signals import silence, silent_runs, tone

from narrate.config import SAMPLE_RATE, PostConfig
from narrate.post.assemble import assemble
from narrate.records import Chunk, Pause


def chunks_for(pauses: list[Pause]) -> list[Chunk]:
    return [
        Chunk(f"c{i}", "book", i, f"Sentence number {i}.", pause_before=pause)
        for i, pause in enumerate(pauses)
    ]


def gaps_ms(audio: np.ndarray, shortest_ms: float = 30) -> list[float]:
    """Lengths of the silences between sounds (not at the ends), in ms."""
    runs = [
        (start, stop)
        for start, stop in silent_runs(audio)
        if start > 0 and stop < len(audio) and stop - start > shortest_ms * SAMPLE_RATE / 1000
    ]
    return [(stop - start) * 1000 / SAMPLE_RATE for start, stop in runs]


@pytest.mark.parametrize(
    "config", [PostConfig(), PostConfig(sentence_gap_ms=400, paragraph_gap_ms=1200)]
)
def test_pauses_of_the_configured_length_at_sentence_and_paragraph_joins(
    config: PostConfig,
) -> None:
    rng = np.random.default_rng(1)
    pauses: list[Pause] = ["none", "sentence", "paragraph", "sentence"]
    # chunks come with arbitrary leading and trailing silence, as synthesis leaves them
    audios = [
        np.concatenate(
            [silence(rng.uniform(0, 0.6)), tone(0.8, 220 + 50 * i), silence(rng.uniform(0, 0.6))]
        )
        for i in range(len(pauses))
    ]
    book = assemble(chunks_for(pauses), audios, config, SAMPLE_RATE)
    wanted = [config.sentence_gap_ms, config.paragraph_gap_ms, config.sentence_gap_ms]
    # speech edges are found on 10 ms frames: a gap may come out up to a frame longer a side
    assert gaps_ms(book) == pytest.approx(wanted, abs=25)


def test_chunks_without_a_pause_keep_only_a_short_natural_gap() -> None:
    audios = [np.concatenate([silence(0.5), tone(0.8, 300), silence(0.5)]) for _ in range(2)]
    book = assemble(chunks_for(["none", "none"]), audios, PostConfig(), SAMPLE_RATE)
    (gap,) = gaps_ms(book, shortest_ms=1)
    assert 20 <= gap <= 120


def test_a_silent_chunk_adds_nothing_but_keeps_its_pause() -> None:
    audios = [tone(0.5, 300), silence(1.0), tone(0.5, 400)]
    config = PostConfig()
    book = assemble(chunks_for(["none", "paragraph", "none"]), audios, config, SAMPLE_RATE)
    assert gaps_ms(book) == pytest.approx([config.paragraph_gap_ms], abs=25)


@pytest.mark.parametrize("pause", ["none", "sentence", "paragraph"])
def test_joins_have_no_sample_jumps(pause: Pause) -> None:
    # chunks cut mid-waveform: full level at their first and last sample
    frequency, amplitude = 200.0, 0.5
    t = np.arange(int(0.7 * SAMPLE_RATE) + 37) / SAMPLE_RATE  # ends mid-cycle
    abrupt = (amplitude * np.cos(2 * np.pi * frequency * t)).astype(np.float32)
    assert abs(abrupt[0]) == amplitude
    book = assemble(chunks_for(["none", pause, pause]), [abrupt] * 3, PostConfig(), SAMPLE_RATE)
    steepest_in_the_signal = 2 * np.pi * frequency * amplitude / SAMPLE_RATE
    assert np.abs(np.diff(book)).max() <= 2 * steepest_in_the_signal
    assert abs(book[0]) < 0.01 and abs(book[-1]) < 0.01


def dominant_frequency(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_chunk_order_is_kept() -> None:
    frequencies = [500, 250, 400, 300, 450]
    audios = [np.concatenate([silence(0.2), tone(0.4, f), silence(0.2)]) for f in frequencies]
    chunks = chunks_for(["none"] + ["sentence"] * 4)
    # handed over shuffled: the chunk index decides the order, not the list position
    order = [3, 0, 4, 1, 2]
    book = assemble(
        [chunks[i] for i in order], [audios[i] for i in order], PostConfig(), SAMPLE_RATE
    )
    sounds, start = [], 0
    for gap_start, gap_stop in silent_runs(book) + [(len(book), len(book))]:
        if gap_stop - gap_start > 0.03 * SAMPLE_RATE or gap_start == len(book):
            sounds.append(book[start:gap_start])
            start = gap_stop
    sounds = [s for s in sounds if len(s) > 0.1 * SAMPLE_RATE]
    assert [dominant_frequency(s) for s in sounds] == pytest.approx(frequencies, abs=5)


def test_an_all_silent_book_assembles_to_nothing() -> None:
    book = assemble(
        chunks_for(["none", "sentence"]), [silence(1), silence(2)], PostConfig(), SAMPLE_RATE
    )
    assert len(book) == 0


def test_chunks_and_waveforms_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 chunks but 1 waveforms"):
        assemble(chunks_for(["none", "none"]), [tone(1, 300)], PostConfig(), SAMPLE_RATE)
