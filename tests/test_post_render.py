"""Encoding round trips, render_book end to end, the integrity gate, `narrate detect`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from support.audioseal_models import build_checkpoints
from support.signals import lufs, silence, speechlike, true_peak_dbtp

from narrate.cli import cli
from narrate.config import SAMPLE_RATE, PostConfig
from narrate.errors import AudioError
from narrate.post import (
    Watermarker,
    decode,
    finish_book,
    probe,
    render_book,
    watermark_payload,
)
from narrate.post.encode import Tags, encode
from narrate.post.gate import Measured, check, measure
from narrate.post.loudness import master
from narrate.records import Chunk

FORMATS = ["wav", "flac", "mp3", "opus"]
DECODED_RATE = {"wav": 24_000, "flac": 24_000, "mp3": 24_000, "opus": 48_000}
TEXT = "It was a bright cold day in April, and the clocks were striking thirteen."


def one_chunk_book(seconds: float = 5.0, text: str = TEXT) -> tuple[list[Chunk], list[np.ndarray]]:
    audio = np.concatenate([silence(0.3), speechlike(seconds), silence(0.3)])
    return [Chunk("c0", "book-1", 0, text)], [audio]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips(fmt: str) -> None:
    audio = speechlike(3.7) * 2
    data = encode(audio, SAMPLE_RATE, PostConfig(format=fmt), Tags("book-1", "A Title"))
    info = probe(data)
    decoded, rate = decode(data)
    assert (info.sample_rate, info.channels) == (DECODED_RATE[fmt], 1)
    assert rate == DECODED_RATE[fmt] and decoded.dtype == np.float32 and decoded.ndim == 1
    assert len(decoded) / rate == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.005)
    assert info.tags["title"] == "A Title" and "book-1" in info.tags["comment"]
    if fmt in ("wav", "flac"):  # lossless up to 16-bit rounding
        np.testing.assert_allclose(decoded, audio, atol=1 / 2**15)


@pytest.mark.parametrize("title", [None, "T", "Été — ünïcode", "Even"])
def test_wav_files_are_byte_for_byte_what_libsndfile_writes_and_read_back_alike(
    title: str | None,
) -> None:
    audio = speechlike(1.3, level=0.5, seed=4)
    audio[:4] = [1.5, -1.5, 1.0, -1.0]  # clipped, and both ends of the 16-bit range
    tags = Tags("book-é1", title)
    written = io.BytesIO()
    with sf.SoundFile(written, "w", SAMPLE_RATE, 1, format="WAV", subtype="PCM_16") as out:
        out.comment = tags.as_dict()["comment"]
        if title:
            out.title = title
        out.write(np.clip(audio, -1.0, 1.0))
    data = encode(audio, SAMPLE_RATE, PostConfig(format="wav"), tags)
    assert data == written.getvalue()
    decoded, rate = decode(data)
    reference, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_book_meets_its_targets_in_every_format(fmt: str) -> None:
    chunks, audios = one_chunk_book()
    config = PostConfig(format=fmt)
    book = render_book("book-1", chunks, audios, config, None, content_hash="abc", title="T")
    assert (book.book_id, book.format, book.content_hash) == ("book-1", fmt, "abc")
    assert book.file_name == f"book-1.{fmt}"
    assert book.content_type.startswith("audio/") and book.watermark_payload is None
    decoded, rate = decode(book.data)
    assert len(decoded) / rate == pytest.approx(book.duration_s, abs=0.05)
    assert lufs(decoded, rate) == pytest.approx(config.loudness_lufs, abs=0.5)
    assert true_peak_dbtp(decoded) <= config.true_peak_db + 0.1


@pytest.mark.parametrize("off_by_lu", [-0.6, 0.4])
def test_a_lossless_book_the_gate_measures_off_target_is_brought_within_a_tenth_of_a_unit(
    off_by_lu: float,
) -> None:
    # lossless books are mastered on the loudness estimate and measured once, by the gate
    chunks, audios = one_chunk_book()
    config = PostConfig(format="flac")
    missed = master(audios[0], SAMPLE_RATE, config.loudness_lufs + off_by_lu, config.true_peak_db)
    book = finish_book("book-1", chunks, missed, config, content_hash="h")
    decoded, rate = decode(book.data)
    assert lufs(decoded, rate) == pytest.approx(config.loudness_lufs, abs=0.1)
    assert true_peak_dbtp(decoded) <= config.true_peak_db + 0.1


def test_a_lossless_book_with_peaks_over_the_ceiling_is_limited_before_it_is_published() -> None:
    chunks, audios = one_chunk_book()
    config = PostConfig(format="wav")
    clicks = audios[0].copy()
    clicks[:: SAMPLE_RATE // 2] += 0.8  # peaks the limiter must hold down
    loud = master(clicks, SAMPLE_RATE, config.loudness_lufs, config.true_peak_db + 0.3)
    assert measure(encode(loud, SAMPLE_RATE, config, Tags("b"))).true_peak_db > -1.3
    book = finish_book("book-1", chunks, loud, config, content_hash="h")
    published = measure(book.data)
    assert published.true_peak_db <= config.true_peak_db + 0.01
    assert published.loudness_lufs == pytest.approx(config.loudness_lufs, abs=0.1)


def test_render_book_watermarks_with_the_book_payload(audioseal_dir: Path) -> None:
    chunks, audios = one_chunk_book()
    plain = render_book("book-1", chunks, audios, PostConfig(), None, content_hash="h")
    watermarker = Watermarker.load(str(audioseal_dir))
    marked = render_book("book-1", chunks, audios, PostConfig(), watermarker, content_hash="h")
    assert marked.watermark_payload == watermark_payload("book-1")
    assert marked.data != plain.data
    assert marked.duration_s == plain.duration_s


def test_render_book_keeps_the_configured_pauses() -> None:
    texts = ["First sentence here.", "Second one follows.", "A new paragraph."]
    pauses = ["none", "sentence", "paragraph"]
    chunks = [
        Chunk(f"c{i}", "b", i, t, pause_before=p)
        for i, (t, p) in enumerate(zip(texts, pauses, strict=True))
    ]
    audios = [
        np.concatenate([silence(0.2), speechlike(1.5, seed=i), silence(0.4)]) for i in range(3)
    ]
    config = PostConfig(sentence_gap_ms=300, paragraph_gap_ms=900)
    book = render_book("b", chunks, audios, config, None, content_hash="h")
    speech = sum(len(a) for a in audios) / SAMPLE_RATE - 3 * 0.6
    # the syllable pattern has its own short gaps; the joins add the configured pauses
    room_tone = config.head_s + config.tail_s
    assert book.duration_s == pytest.approx(speech + 0.3 + 0.9 + room_tone, abs=0.2)


def test_a_silent_book_fails() -> None:
    chunks = [Chunk("c0", "b", 0, TEXT), Chunk("c1", "b", 1, TEXT, pause_before="sentence")]
    with pytest.raises(AudioError, match="no chunk of the book holds any speech"):
        render_book("b", chunks, [silence(3), silence(4)], PostConfig(), None, content_hash="h")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(40.0, "Far too short a text.", id="runaway"),
        pytest.param(0.5, TEXT * 4, id="cut-short"),
    ],
)
def test_implausible_duration_per_character_fails_the_book(seconds: float, text: str) -> None:
    chunks, audios = one_chunk_book(seconds, text)
    with pytest.raises(AudioError, match="implausible"):
        render_book("b", chunks, audios, PostConfig(), None, content_hash="h")


GOOD = Measured(duration_s=10.0, loudness_lufs=-18.0, true_peak_db=-2.0)


@pytest.mark.parametrize(
    ("measured", "reason"),
    [
        (Measured(10.06, -18.0, -2.0), "differs from the assembled"),
        (Measured(10.0, -18.6, -2.0), "loudness"),
        (Measured(10.0, -17.4, -2.0), "loudness"),
        (Measured(10.0, -18.0, -1.3), "true peak"),
    ],
)
def test_gate_names_the_failed_check(measured: Measured, reason: str) -> None:
    kwargs = {"expected_duration_s": 10.0, "characters": 140, "pauses_s": 0.0}
    check(GOOD, config=PostConfig(), **kwargs)
    with pytest.raises(AudioError, match=reason):
        check(measured, config=PostConfig(), **kwargs)


def test_undecodable_data_fails_the_gate() -> None:
    with pytest.raises(AudioError, match="does not decode"):
        decode(b"RIFF" + bytes(100))


@pytest.fixture
def answering_dir(tmp_path: Path) -> Path:
    """AudioSeal checkpoints whose detector always finds book-2's payload."""
    return build_checkpoints(tmp_path / "answering", detector_answer=watermark_payload("book-2"))


def test_detect_command_names_the_book(tmp_path: Path, answering_dir: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"book_id": f"book-{i}", "text": "Some text."} for i in range(1, 4)]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    files = []
    for fmt in FORMATS:
        chunks, audios = one_chunk_book(3.0)
        book = render_book("x", chunks, audios, PostConfig(format=fmt), None, content_hash="h")
        files.append(tmp_path / book.file_name)
        files[-1].write_bytes(book.data)
    args = ["detect", *map(str, files), "--manifest", str(manifest), "--json"]
    result = CliRunner().invoke(cli, [*args, "--watermark-model", str(answering_dir)])
    assert result.exit_code == 0, result.output
    found = [json.loads(line) for line in result.output.splitlines()]
    assert [f["path"] for f in found] == [str(f) for f in files]
    for f in found:
        assert f["watermarked"] and f["payload"] == watermark_payload("book-2")
        assert f["books"] == ["book-2"]


def test_detect_command_reports_unmarked_audio(tmp_path: Path, audioseal_dir: Path) -> None:
    path = tmp_path / "plain.wav"
    path.write_bytes(encode(speechlike(2), SAMPLE_RATE, PostConfig(), Tags("plain")))
    result = CliRunner().invoke(cli, ["detect", str(path), "--watermark-model", str(audioseal_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: no watermark (p=0.00), payload ")


def test_detect_command_fails_clearly_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "plain.wav"
    path.write_bytes(encode(speechlike(1), SAMPLE_RATE, PostConfig(), Tags("plain")))
    result = CliRunner().invoke(cli, ["detect", str(path), "--watermark-model", str(tmp_path)])
    assert result.exit_code == 3
    assert "no AudioSeal detector checkpoint" in result.output
    assert "--watermark-model DIR" in result.output and "--no-watermark" not in result.output
    # no folder, offline, nothing cached: the detector (detect needs nothing else) is named
    env = {"HF_HUB_OFFLINE": "1", "AUDIOSEAL_CACHE_DIR": str(tmp_path / "empty")}
    result = CliRunner().invoke(cli, ["detect", str(path)], env=env)
    assert result.exit_code == 3
    assert "cannot load the AudioSeal watermark detector" in result.output
    assert "generator" not in result.output and "--no-watermark" not in result.output


# demo books whose MP3 went over the true-peak limit when lossy files were mastered like WAV
DEMO_BOOKS = ("tale-of-two-cities-opening", "aesop-fox-and-grapes")


@pytest.fixture(scope="module")
def demo_books_spoken() -> list[tuple[str, list[Chunk], list[np.ndarray]]]:
    """A few demo books, chunked as a run does and spoken by the preview engine."""
    from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
    from narrate.manifest import read_manifest
    from narrate.plan import chunk_books, plan_batches
    from narrate.records import Book
    from narrate.synth import load_engine

    demo = Path(__file__).parent.parent / "manifests" / "demo.jsonl"
    rows = [r for r in read_manifest(demo) if isinstance(r, Book) and r.book_id in DEMO_BOOKS]
    engine_config = EngineConfig(engine="preview")
    planned = list(
        chunk_books(rows, chunking=ChunkingConfig(), engine_fingerprint=engine_config.fingerprint())
    )
    engine = load_engine(engine_config, device="cpu")
    spoken: dict[str, np.ndarray] = {}
    try:
        chunks = [c for book in planned for c in book.chunks]
        for batch in plan_batches(chunks, PlanConfig()):
            spoken |= {a.chunk_id: a.audio for a in engine.synthesize(batch)}
    finally:
        engine.close()
    return [
        (b.book.book_id, list(b.chunks), [spoken[c.chunk_id] for c in b.chunks]) for b in planned
    ]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_books_pass_the_gate_in_every_format(
    fmt: str, demo_books_spoken: list[tuple[str, list[Chunk], list[np.ndarray]]]
) -> None:
    config = PostConfig(format=fmt)
    assert {book_id for book_id, _, _ in demo_books_spoken} == set(DEMO_BOOKS)
    for book_id, chunks, audios in demo_books_spoken:
        book = render_book(book_id, chunks, audios, config, None, content_hash="h")
        decoded, rate = decode(book.data)
        assert true_peak_dbtp(decoded) <= config.true_peak_db + 0.1
        assert lufs(decoded, rate) == pytest.approx(config.loudness_lufs, abs=0.5)
