"""Book assembly: chunk waveforms trimmed, joined in order with crossfades, pauses inserted,
room tone at the head and the tail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from narrate.config import PostConfig
from narrate.records import Chunk, Pause

FRAME_MS = 10  # resolution of the speech/silence decision
EDGE_MS = 40  # quiet margin kept around speech: breaths and soft onsets live there
SILENCE_BELOW_LOUDEST_DB = 40.0  # a frame this far under the chunk's loudest frame is silence
SILENCE_FLOOR_DBFS = -60.0  # and any frame under this level, however quiet the chunk
_PAUSE_RANK: dict[Pause, int] = {"none": 0, "sentence": 1, "paragraph": 2}


@dataclass(frozen=True, slots=True)
class Trimmed:
    """A chunk cut down to its speech plus quiet margins of `lead` and `tail` samples."""

    audio: np.ndarray
    lead: int
    tail: int


def speech_bounds(audio: np.ndarray, sample_rate: int) -> tuple[int, int] | None:
    """First and last sample (exclusive) of the frames that hold speech; None for silence."""
    frame = sample_rate * FRAME_MS // 1000
    frames = -(-len(audio) // frame)
    if frames == 0:
        return None
    padded = np.zeros(frames * frame, dtype=np.float64)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(frames, frame) ** 2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    loud = level > max(SILENCE_FLOOR_DBFS, level.max() - SILENCE_BELOW_LOUDEST_DB)
    if not loud.any():
        return None
    first = int(np.argmax(loud))
    last = frames - int(np.argmax(loud[::-1]))
    return first * frame, min(len(audio), last * frame)


def trim(audio: np.ndarray, sample_rate: int) -> Trimmed | None:
    """Leading and trailing silence cut to at most EDGE_MS; None when there is no speech."""
    bounds = speech_bounds(audio, sample_rate)
    if bounds is None:
        return None
    first, last = bounds
    edge = sample_rate * EDGE_MS // 1000
    start, stop = max(0, first - edge), min(len(audio), last + edge)
    return Trimmed(audio[start:stop], lead=first - start, tail=stop - last)


def _faded(audio: np.ndarray, samples: int) -> np.ndarray:
    """Linear fade in and out over `samples`, so a cut edge never starts or ends on a step."""
    out = audio.astype(np.float32, copy=True)
    n = min(samples, len(out) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
        out[:n] *= ramp
        out[len(out) - n :] *= ramp[::-1]
    return out


def assemble(
    chunks: Sequence[Chunk],
    audios: Sequence[np.ndarray],
    config: PostConfig,
    sample_rate: int,
) -> np.ndarray:
    """Join a book's chunk waveforms in order into one mono float32 waveform.

    Between two chunks the silence from the end of one's speech to the start of the next's is
    the pause the second chunk asks for (sentence or paragraph gap). Where a chunk follows
    without a pause (a long sentence split at a clause) the quiet margins stay and the two
    pieces crossfade. A chunk without speech adds nothing, but its pause carries over.
    """
    if len(chunks) != len(audios):
        raise ValueError(f"{len(chunks)} chunks but {len(audios)} waveforms")
    fade = sample_rate * config.crossfade_ms // 1000
    parts: list[np.ndarray] = []
    first_lead = previous_tail = 0
    pause: Pause = "none"
    for chunk, audio in sorted(zip(chunks, audios, strict=True), key=lambda pair: pair[0].index):
        if parts and _PAUSE_RANK[chunk.pause_before] > _PAUSE_RANK[pause]:
            pause = chunk.pause_before
        trimmed = trim(np.asarray(audio, dtype=np.float32), sample_rate)
        if trimmed is None:
            continue
        piece = _faded(trimmed.audio, fade)
        if not parts:
            first_lead = trimmed.lead
        if parts:
            wanted = sample_rate * config.pause_ms(pause) // 1000
            silence = wanted - previous_tail - trimmed.lead
            if silence >= 0:
                parts.append(np.zeros(silence, dtype=np.float32))
            else:  # margins already longer than the pause: overlap their faded edges
                overlap = min(fade, len(parts[-1]), len(piece))
                parts[-1][len(parts[-1]) - overlap :] += piece[:overlap]
                piece = piece[overlap:]
        parts.append(piece)
        previous_tail = trimmed.tail
        pause = "none"
    if not parts:
        return np.zeros(0, dtype=np.float32)
    # room tone: the margins kept around the speech count towards it
    head = max(0, round(config.head_s * sample_rate) - first_lead)
    tail = max(0, round(config.tail_s * sample_rate) - previous_tail)
    return np.concatenate([np.zeros(head, np.float32), *parts, np.zeros(tail, np.float32)])
