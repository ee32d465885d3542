"""Stop guards: where a generated row really ends, and whether its audio can be kept.

CSM rarely emits its all-zero end frame: most rows speak their text, then go on with silence
until their frame cap. So a row is cut at its end frame or its cap, its trailing silence is
trimmed, and it is kept unless it was still speaking at the cap or is implausibly short for its
text; such rows are retried with the next seed. Pure numpy, so it is tested without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from narrate.config import FRAME_RATE, SAMPLES_PER_FRAME, ChunkingConfig
from narrate.records import StopReason


@dataclass(frozen=True)
class GuardConfig:
    silence_db: float = -40.0  # a frame this far below the row's loudest frame is silence
    min_trailing_silence_s: float = 1.0  # a row cut by its cap must have stopped speaking before
    min_duration_ratio: float = 0.3  # shorter than this share of the expected duration: outlier
    chunking: ChunkingConfig = ChunkingConfig()  # the speaking rate that sets the expectation

    @property
    def silence_frames(self) -> int:
        """Frames of one repeated first code that count as having stopped speaking."""
        return math.ceil(self.min_trailing_silence_s * FRAME_RATE)


@dataclass(frozen=True)
class Verdict:
    """`frames` of speech kept (trailing silence trimmed); `problem` is why to retry, if any."""

    frames: int
    stop_reason: StopReason
    problem: str | None = None


def end_frame(codes: np.ndarray, eos_code: int = 0) -> int | None:
    """Index of the first end frame in `codes` [frames, codebooks], or None.

    An end frame is all `eos_code`; like transformers' CSM loop, the last codebook is not
    checked, so the row ends exactly where generation considered it finished.
    """
    ends = np.flatnonzero((codes[:, :-1] == eos_code).all(axis=1))
    return int(ends[0]) if len(ends) else None


def silent_tail(codes: np.ndarray, min_frames: int) -> int:
    """Frames of `codes` [frames, codebooks] before a trailing run of one repeated first code
    at least `min_frames` long (CSM's silence, which the frame loop stops a row on), else all
    of them."""
    first = codes[:, 0]
    if len(first) < min_frames:
        return len(first)
    changes = np.flatnonzero(first[1:] != first[:-1])
    start = int(changes[-1]) + 1 if len(changes) else 0
    return start if len(first) - start >= min_frames else len(first)


def speech_frames(audio: np.ndarray, silence_db: float) -> int:
    """Frames of `audio` left after trimming trailing frames quieter than `silence_db`."""
    frames = len(audio) // SAMPLES_PER_FRAME
    if frames == 0:
        return 0
    blocks = audio[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME)
    rms = np.sqrt(np.mean(np.square(blocks, dtype=np.float64), axis=1))
    loudest = rms.max()
    if loudest <= 0:
        return 0
    loud = np.flatnonzero(rms > loudest * 10 ** (silence_db / 20))
    return int(loud[-1]) + 1


def judge(audio: np.ndarray, *, text: str, cap: int, ended: bool, guard: GuardConfig) -> Verdict:
    """Decide on one row: `audio` is its decoded frames up to its end frame or its cap."""
    generated = len(audio) // SAMPLES_PER_FRAME
    kept = speech_frames(audio, guard.silence_db)
    reason: StopReason = "eos" if ended else "cap"
    if kept == 0:
        return Verdict(0, reason, "silent output")
    trailing_s = (generated - kept) / FRAME_RATE
    if not ended and generated >= cap and trailing_s < guard.min_trailing_silence_s:
        return Verdict(kept, reason, f"still speaking at its {cap / FRAME_RATE:.1f} s frame cap")
    expected = guard.chunking.expected_frames(len(text))
    if kept < guard.min_duration_ratio * expected:
        return Verdict(
            kept,
            reason,
            f"implausibly short: {kept / FRAME_RATE:.2f} s for {len(text)} characters "
            f"(expected about {expected / FRAME_RATE:.1f} s)",
        )
    return Verdict(kept, reason)
