"""`narrate say`: speak one text now (the original synchronous generate API, from the shell).

Long text is chunked like a book (narrate.text) and batched like a catalog (narrate.plan); the
chunks are joined with plain pauses. Books get the full assembly (trimmed joins, crossfades,
loudness) in post-processing; this is a quick listen.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from narrate.atomic import write_atomic
from narrate.config import (
    SAMPLE_RATE,
    ChunkingConfig,
    EngineConfig,
    Lexicon,
    PlanConfig,
    PostConfig,
)
from narrate.errors import EngineError, ModelError, NarrateError, UsageError
from narrate.records import ChunkAudio
from narrate.synth import Turn, load_engine
from narrate.synth.voices import VoiceLibrary


@dataclass(frozen=True)
class Spoken:
    audio: np.ndarray  # mono float32 at 24 kHz
    chunks: list[ChunkAudio]
    load_seconds: float
    synth_seconds: float

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def real_time_factor(self) -> float:
        """Synthesis time per second of audio: below 1 is faster than real time."""
        return self.synth_seconds / self.duration_s if self.duration_s else float("inf")


def pick_device(device: str, engine: str) -> str:
    if engine != "csm":
        return "cpu"
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def say(
    text: str,
    *,
    engine: EngineConfig,
    speaker: int = 0,
    voice: str | None = None,
    context: Sequence[Turn] = (),
    voices_dir: Path = Path("voices"),
    device: str = "auto",
    compile: bool = False,
    lexicon: Lexicon | None = None,
    preflight: Callable[[str, str], list[NarrateError]] | None = None,
) -> Spoken:
    """`preflight(engine, model)` (narrate.doctor.engine_preflight from the CLI): what loading
    the engine needs, checked within seconds before the loaders retry for minutes."""
    from narrate.plan import plan_batches
    from narrate.text import chunk_book

    library = VoiceLibrary(voices_dir)
    prompt = library.get(voice) if voice else None
    chunking = ChunkingConfig(max_audio_ms=engine.max_audio_ms, lexicon=lexicon)
    chunks = chunk_book(
        "say",
        text,
        config=chunking,
        engine_fingerprint=engine.fingerprint(),
        speaker=speaker,
        voice=voice,
        voice_key=prompt.fingerprint if prompt else "",
        prompt_positions=prompt.positions if prompt else 0,
    )
    if not chunks:
        raise UsageError("nothing to speak: the text is empty")
    problems = preflight(engine.engine, engine.model) if preflight else []
    if problems:  # every missing piece at once
        message = "; ".join(p.message for p in problems)
        hints = dict.fromkeys(p.hint for p in problems if p.hint)  # the same fix once
        raise ModelError(message, " | ".join(hints) or None)
    started = time.monotonic()
    device = pick_device(device, engine.engine)
    synth = load_engine(engine, device=device, voices=library, compile=compile)
    loaded = time.monotonic()
    try:
        results: dict[str, ChunkAudio] = {}
        for batch in plan_batches(chunks, PlanConfig()):
            results.update((a.chunk_id, a) for a in synth.synthesize(batch, context=context))
    finally:
        synth.close()
    spoken = [results[c.chunk_id] for c in chunks]
    failed = [a for a in spoken if not a.ok]
    if failed:
        raise EngineError(f"{len(failed)} of {len(spoken)} chunks failed: {failed[0].error}")
    pieces, gaps = [], PostConfig()  # the pauses a published book has
    for chunk, audio in zip(chunks, spoken, strict=True):
        silence = SAMPLE_RATE * gaps.pause_ms(chunk.pause_before) // 1000
        pieces.append(np.zeros(silence, np.float32))
        pieces.append(audio.audio)
    return Spoken(np.concatenate(pieces), spoken, loaded - started, time.monotonic() - loaded)


def write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    write_atomic(path, wav.getvalue())
