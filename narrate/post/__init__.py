"""Post-processing: a book's chunk waveforms in, one encoded, watermarked file out.

assemble -> loudness (gain to target, true-peak limit) -> AudioSeal watermark -> encode ->
integrity gate. A book that fails any step raises AudioError with the reason.

`render_book` runs every step; `master_book` and `finish_book` are the steps before and
after the watermark, so that a run can master and encode in other processes while one
watermarker (on the GPU) serves them all. The watermark (torch) is imported on first use:
a process that only masters and encodes never loads torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from narrate.config import SAMPLE_RATE, PostConfig
from narrate.errors import AudioError
from narrate.post import gate
from narrate.post.assemble import assemble
from narrate.post.encode import CONTENT_TYPES, LOSSY, Tags, decode, encode, probe
from narrate.post.loudness import TOLERANCE_LU, limit_true_peak, master
from narrate.records import Chunk, EncodedBook

if TYPE_CHECKING:
    from narrate.post.watermark import Detection, Watermarker, watermark_payload

# What each lossy encoder does to a mastered book at narrate's bitrates, measured on the demo
# books: (integrated loudness it loses in LU, headroom in dB kept under the true-peak limit).
# MP3 (LAME, 64 kbps) lost 0.48-0.52 LU and overshot by up to 0.17 dB; Opus (32 kbps) lost
# 0.30-0.41 LU and overshot by up to 0.64 dB. A book that still misses is corrected and
# encoded again; planning for the usual case keeps that second encode rare.
LOSSY_ALLOWANCE = {"mp3": (0.5, 0.5), "opus": (0.35, 1.0)}
_MAX_CORRECTIONS = 2
_CORRECTION_MARGIN_DB = 0.2
# 16-bit rounding moves a lossless book's peaks by ~0.0003 dB; more than this over the
# ceiling is corrected
_LOSSLESS_PEAK_SLACK_DB = 0.01

__all__ = [
    "Detection",
    "Watermarker",
    "decode",
    "finish_book",
    "master_book",
    "probe",
    "render_book",
    "watermark_payload",
]

_WATERMARK_NAMES = {"Detection", "Watermarker", "watermark_payload"}


def __getattr__(name: str) -> Any:
    if name in _WATERMARK_NAMES:
        from narrate.post import watermark

        return getattr(watermark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def render_book(
    book_id: str,
    chunks: Sequence[Chunk],
    audios: Sequence[np.ndarray],
    config: PostConfig,
    watermarker: Watermarker | None,
    *,
    content_hash: str,
    title: str | None = None,
) -> EncodedBook:
    """The book's published file, or AudioError saying why the book fails."""
    audio = master_book(chunks, audios, config)
    payload = None
    if watermarker is not None:
        from narrate.post.watermark import watermark_payload

        payload = watermark_payload(book_id)
        audio = watermarker.apply(audio, payload)
    return finish_book(
        book_id, chunks, audio, config, content_hash=content_hash, title=title, payload=payload
    )


def master_book(
    chunks: Sequence[Chunk], audios: Sequence[np.ndarray], config: PostConfig
) -> np.ndarray:
    """The chunks assembled with their pauses, at the loudness target and under the ceiling
    the format's encoder needs."""
    audio = assemble(chunks, audios, config, SAMPLE_RATE)
    if len(audio) == 0:
        raise AudioError("no chunk of the book holds any speech")
    target, ceiling = encoder_allowance(config)
    # a lossless file holds these very samples, and the gate measures it: mastering need not
    # measure (or settle) them first (finish_book corrects a book the gate finds off target)
    return master(audio, SAMPLE_RATE, target, ceiling, exact=config.format in LOSSY)


def finish_book(
    book_id: str,
    chunks: Sequence[Chunk],
    audio: np.ndarray,
    config: PostConfig,
    *,
    content_hash: str,
    title: str | None = None,
    payload: int | None = None,
) -> EncodedBook:
    """Encode a mastered book (watermarked with `payload`, if any) and pass it through the
    integrity gate: the published file, or AudioError."""
    _, ceiling = encoder_allowance(config)
    if payload is not None:  # the residual is quiet but can still nudge a peak over the ceiling
        audio = limit_true_peak(audio, SAMPLE_RATE, ceiling)
    tags = Tags(book_id, title, config.narrator or None, watermarked=payload is not None)
    data = encode(audio, SAMPLE_RATE, config, tags)
    measured = gate.measure(data)
    for _ in range(_MAX_CORRECTIONS):
        if not _off_target(measured, config):
            break
        # a lossy book lost more loudness or rang more than the allowance planned for (a
        # lossless one was mastered on an estimate that missed): correct by what it lost and
        # overshot, with a margin, and encode once more
        gain = np.float32(10 ** ((config.loudness_lufs - measured.loudness_lufs) / 20))
        if config.format in LOSSY:
            overshoot = max(0.0, measured.true_peak_db - ceiling)
            ceiling = min(ceiling, config.true_peak_db - overshoot - _CORRECTION_MARGIN_DB)
        audio = limit_true_peak(audio * gain, SAMPLE_RATE, ceiling)
        data = encode(audio, SAMPLE_RATE, config, tags)
        measured = gate.measure(data)
    duration_s = len(audio) / SAMPLE_RATE
    gate.check(
        measured,
        expected_duration_s=duration_s,
        characters=sum(len(chunk.text) for chunk in chunks),
        pauses_s=sum(config.pause_ms(chunk.pause_before) for chunk in chunks[1:]) / 1000
        + config.head_s
        + config.tail_s,  # room tone is silence too
        config=config,
    )
    return EncodedBook(
        book_id=book_id,
        data=data,
        format=config.format,
        content_type=CONTENT_TYPES[config.format],
        duration_s=duration_s,
        content_hash=content_hash,
        watermark_payload=payload,
    )


def encoder_allowance(config: PostConfig) -> tuple[float, float]:
    """Loudness target and true-peak ceiling to master to, so the encoded file meets the
    configured ones: lossy codecs drop high frequencies (loudness falls) and ring (peaks rise),
    so a lossy book is mastered a little louder and under a lower ceiling before encoding."""
    loss_lu, headroom_db = LOSSY_ALLOWANCE.get(config.format, (0.0, 0.0))
    return config.loudness_lufs + loss_lu, config.true_peak_db - headroom_db


def _off_target(measured: gate.Measured, config: PostConfig) -> bool:
    missed_by = abs(measured.loudness_lufs - config.loudness_lufs)
    if config.format not in LOSSY:  # the samples mastering made, unsettled: see master()
        over = measured.true_peak_db - config.true_peak_db
        return missed_by > TOLERANCE_LU or over > _LOSSLESS_PEAK_SLACK_DB
    return missed_by > 0.2 or measured.true_peak_db > config.true_peak_db
