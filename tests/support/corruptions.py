"""Clean and corrupted chunk audio for judging the quality check (its test and its benchmark).

Clean audio: the demo catalog's chunks rendered by the preview engine (eSpeak NG). Each
corruption is one failure users of TTS narration report, made from clean chunks. Cuts and
insertions are placed in the chunk's speech (its edges trimmed as the assembler trims them),
so that cutting 30 % removes speech, not trailing silence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from narrate.config import SAMPLE_RATE, ChunkingConfig, EngineConfig
from narrate.manifest import read_manifest
from narrate.post.assemble import trim
from narrate.records import Batch, Book, Chunk
from narrate.synth import load_engine
from narrate.text import chunk_book, split_sentences

DEMO_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "demo.jsonl"
INSERT_S = 3.0


@dataclass(frozen=True)
class Rendered:
    chunk: Chunk
    audio: np.ndarray  # mono float32 at SAMPLE_RATE, as the engine returned it
    last_sentence: np.ndarray  # the chunk's last sentence spoken on its own


def render_demo(limit: int | None = None, every: int = 1) -> list[Rendered]:
    """The demo catalog's chunks (every `every`-th, at most `limit`) and their audio."""
    books = [row for row in read_manifest(str(DEMO_MANIFEST)) if isinstance(row, Book)]
    chunks = [
        chunk
        for book in books
        for chunk in chunk_book(
            book.book_id, book.text, config=ChunkingConfig(), engine_fingerprint="preview"
        )
    ][::every][:limit]
    engine = load_engine(EngineConfig(engine="preview"))
    lasts = [dataclasses.replace(chunk, text=split_sentences(chunk.text)[-1]) for chunk in chunks]
    audio = engine.synthesize(Batch(tuple(chunks)))
    last_audio = engine.synthesize(Batch(tuple(lasts)))
    return [
        Rendered(chunk, clean.audio, last.audio)
        for chunk, clean, last in zip(chunks, audio, last_audio, strict=True)
    ]


def _speech(audio: np.ndarray) -> np.ndarray:
    trimmed = trim(audio, SAMPLE_RATE)
    return trimmed.audio if trimmed is not None else audio


def _inserted(audio: np.ndarray, gap: np.ndarray) -> np.ndarray:
    speech = _speech(audio)
    middle = len(speech) // 2
    return np.concatenate([speech[:middle], gap.astype(np.float32), speech[middle:]])


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(INSERT_S * SAMPLE_RATE)) * 0.1


# kind -> (the chunk, the next chunk) -> audio checked against the chunk's text
CORRUPTIONS: dict[str, Callable[[Rendered, Rendered], np.ndarray]] = {
    "wrong chunk's audio": lambda this, other: other.audio,
    "last 30 % cut off": lambda this, other: (s := _speech(this.audio))[: int(len(s) * 0.7)],
    "sentence repeated at the end": lambda this, other: np.concatenate(
        [_speech(this.audio), _speech(this.last_sentence)]
    ),
    "3 s of silence inserted": lambda this, other: _inserted(
        this.audio, np.zeros(int(INSERT_S * SAMPLE_RATE))
    ),
    "3 s of noise inserted": lambda this, other: _inserted(
        this.audio, _noise(len(this.chunk.text))
    ),
    "another chunk appended": lambda this, other: np.concatenate(
        [_speech(this.audio), other.audio]
    ),
}


def trials(rendered: list[Rendered]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per kind ("clean" first), (text, audio) pairs: one per chunk; a chunk's "other" is the
    next one whose text differs."""
    found: dict[str, list[tuple[str, np.ndarray]]] = {"clean": []}
    found.update({kind: [] for kind in CORRUPTIONS})
    for index, this in enumerate(rendered):
        found["clean"].append((this.chunk.text, this.audio))
        others = rendered[index + 1 :] + rendered[:index]
        other = next((o for o in others if o.chunk.text != this.chunk.text), this)
        for kind, corrupt in CORRUPTIONS.items():
            found[kind].append((this.chunk.text, corrupt(this, other)))
    return found
