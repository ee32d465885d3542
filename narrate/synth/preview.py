"""The preview engine: eSpeak NG, for demos on CPU-only machines and cheap catalog dry runs.

Each chunk is spoken in its own short-lived process (narrate.synth.espeak explains why), a few
at a time; the int16 samples at eSpeak's 22,050 Hz are resampled to 24 kHz mono float32 and
padded to whole Mimi frames. Speaker ids pick eSpeak voice variants, so two speakers sound
different; voice prompts and context turns need CSM and are ignored here.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from narrate.config import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineConfig, available_cores
from narrate.errors import ModelError
from narrate.records import Batch, Chunk, ChunkAudio
from narrate.synth import Engine, Turn, chunk_seed

VARIANTS = ("m3", "f3", "m1", "f1", "m7", "f4", "m2", "f2")  # speaker id -> voice variant
INSTALL_HINT = "pip install espeakng-loader (bundles eSpeak NG), or apt-get install espeak-ng"
TIMEOUT_S = 120.0


class PreviewEngine(Engine):
    def __init__(self, config: EngineConfig, workers: int) -> None:
        self.config = config
        self.workers = workers

    @classmethod
    def load(cls, config: EngineConfig) -> PreviewEngine:
        engine = cls(config, workers=available_cores())
        engine.speak("ok")  # fails here, with the install hint, when eSpeak NG is missing
        return engine

    def synthesize(
        self,
        batch: Batch,
        *,
        context: Sequence[Turn] = (),
        attempts: Mapping[str, int] | None = None,
    ) -> list[ChunkAudio]:
        """eSpeak NG is deterministic: a later attempt gives the same audio (its seed differs)."""
        firsts = [(attempts or {}).get(c.chunk_id, 0) for c in batch.chunks]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._chunk, batch.chunks, firsts))

    def close(self) -> None:
        """Nothing is held between batches."""

    def _chunk(self, chunk: Chunk, attempt: int = 0) -> ChunkAudio:
        try:
            audio = self.speak(chunk.text, chunk.speaker)
        except ModelError as exc:
            audio, error = np.zeros(0, np.float32), exc.message
        else:
            error = None if len(audio) else "eSpeak NG produced no audio"
        frames = math.ceil(len(audio) / SAMPLES_PER_FRAME)
        return ChunkAudio(
            chunk_id=chunk.chunk_id,
            audio=np.pad(audio, (0, frames * SAMPLES_PER_FRAME - len(audio))),
            frames=frames,
            stop_reason="failed" if error else "eos",
            seed=chunk_seed(chunk.chunk_id, attempt),
            attempts=attempt + 1,
            error=error,
        )

    def speak(self, text: str, speaker: int = 0) -> np.ndarray:
        """Mono float32 at 24 kHz."""
        voice = f"en+{VARIANTS[speaker % len(VARIANTS)]}"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "narrate.synth.espeak", voice],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise ModelError(f"eSpeak NG took over {TIMEOUT_S:.0f} s on one chunk") from None
        if done.returncode != 0 or len(done.stdout) < 4:
            message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise ModelError(f"eSpeak NG cannot speak: {message}", INSTALL_HINT)
        (rate,) = struct.unpack("<i", done.stdout[:4])
        samples = np.frombuffer(done.stdout[4:], dtype="<i2")
        return _resample(samples.astype(np.float32) / 32768.0, rate)


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or not len(audio):
        return audio
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
