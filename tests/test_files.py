"""What a published file holds besides speech: room tone at its ends, and tags that say what
it is (title, the synthetic narrator, whether a watermark is embedded) in every format."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from support.signals import speechlike

from narrate.config import SAMPLE_RATE, PostConfig
from narrate.post import decode, probe, render_book
from narrate.post.assemble import speech_bounds
from narrate.post.encode import Tags, encode
from narrate.records import Chunk

FORMATS = ["wav", "flac", "mp3", "opus"]
NARRATOR = "synthetic voice (sesame/csm-1b, voice anna)"


def book(config: PostConfig) -> tuple[np.ndarray, int]:
    """A two-chunk book whose chunks start and end on speech, rendered and decoded."""
    chunks = [Chunk("c0", "b", 0, "One sentence."), Chunk("c1", "b", 1, "Another.", "sentence")]
    audios = [speechlike(1.5, seed=1), speechlike(1.2, seed=2)]
    encoded = render_book("b", chunks, audios, config, None, content_hash="h", title="T")
    return decode(encoded.data)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_every_book_starts_and_ends_with_room_tone(fmt: str) -> None:
    audio, rate = book(PostConfig(format=fmt))
    first, last = speech_bounds(audio, rate)  # type: ignore[misc]
    assert first / rate == pytest.approx(0.3, abs=0.04)
    assert (len(audio) - last) / rate == pytest.approx(0.5, abs=0.04)


def test_room_tone_follows_the_options() -> None:
    audio, rate = book(PostConfig(head_s=1.0, tail_s=0.0))
    first, last = speech_bounds(audio, rate)  # type: ignore[misc]
    assert first / rate == pytest.approx(1.0, abs=0.04)
    assert (len(audio) - last) / rate < 0.05


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("watermarked", [True, False])
def test_every_format_names_its_title_narrator_and_watermark(fmt: str, watermarked: bool) -> None:
    tags = Tags("book-1", "A Title", NARRATOR, watermarked=watermarked)
    info = probe(encode(speechlike(1.0), SAMPLE_RATE, PostConfig(format=fmt), tags))
    assert info.tags["title"] == "A Title"
    assert info.tags["artist"] == NARRATOR
    said = "AudioSeal watermark embedded" if watermarked else "no watermark embedded"
    assert said in info.tags["comment"] and "synthetic voice" in info.tags["comment"]
    assert "book-1" in info.tags["comment"]


def test_tagged_wav_files_are_still_what_libsndfile_writes() -> None:
    audio = speechlike(0.5, seed=3)
    tags = Tags("book-1", "A Title", NARRATOR, watermarked=True)
    written = io.BytesIO()
    with sf.SoundFile(written, "w", SAMPLE_RATE, 1, format="WAV", subtype="PCM_16") as out:
        out.comment, out.title, out.artist = tags.comment, "A Title", NARRATOR
        out.write(np.clip(audio, -1.0, 1.0))
    assert encode(audio, SAMPLE_RATE, PostConfig(format="wav"), tags) == written.getvalue()


def test_a_run_tags_its_books_with_the_engine_and_the_watermark_opt_out(tmp_path) -> None:
    from click.testing import CliRunner
    from support.runs import preview_args

    from narrate.cli import cli

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"book_id": "fox", "text": "The grapes are sour.", "title": "Fox"}\n')
    args = ["run", str(manifest), *preview_args(tmp_path, "--quality=off", "--format=mp3")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = probe((tmp_path / "out" / "fox.mp3").read_bytes())
    assert info.tags["title"] == "Fox"
    assert info.tags["artist"] == "synthetic voice (espeak-ng)"
    assert "no watermark embedded" in info.tags["comment"]


def test_long_room_tone_around_a_short_book_is_not_implausible_narration() -> None:
    chunks = [Chunk("c0", "b", 0, "Who?")]
    config = PostConfig(head_s=3.0, tail_s=3.0)
    encoded = render_book("b", chunks, [speechlike(0.5)], config, None, content_hash="h")
    assert encoded.duration_s > 6.0
