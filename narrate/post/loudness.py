"""Loudness normalization (ITU-R BS.1770 via pyloudnorm) and a true-peak limiter.

True peak is estimated the way BS.1770-4 describes it: the signal oversampled 4x and its
largest absolute value taken. The limiter turns the per-sample peaks into a gain curve that is
provably at or under the required gain at every peak (a minimum filter, then a moving average
no wider than it), so it never needs a sample-by-sample loop.
"""

from __future__ import annotations

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

from narrate.errors import AudioError

SILENCE_LUFS = -70.0  # BS.1770's absolute gate: below it a book holds no programme at all
OVERSAMPLING = 4
LIMITER_WINDOW_S = 0.02  # gain ramps down over ~20 ms before a peak and back up after it
_BLOCK = 1 << 20  # samples per oversampling block: bounds memory on hour-long books
_BLOCK_MARGIN = 64  # filter context either side of a block
_MIN_MEASURE_S = 0.5  # pyloudnorm needs one 400 ms gating block


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS; -inf for digital silence."""
    minimum = int(_MIN_MEASURE_S * sample_rate)
    if len(audio) < minimum:  # silence padding leaves the gated loudness nearly unchanged
        audio = np.pad(audio, (0, minimum - len(audio)))
    meter = pyloudnorm.Meter(sample_rate)
    return float(meter.integrated_loudness(audio.astype(np.float64)))


def sample_peaks(audio: np.ndarray) -> np.ndarray:
    """Per sample, the largest absolute value of the 4x oversampled signal around it."""
    peaks = np.empty(len(audio), dtype=np.float32)
    for start in range(0, len(audio), _BLOCK):
        stop = min(start + _BLOCK, len(audio))
        lo, hi = max(0, start - _BLOCK_MARGIN), min(len(audio), stop + _BLOCK_MARGIN)
        upsampled = resample_poly(audio[lo:hi].astype(np.float32), OVERSAMPLING, 1)
        frames = np.abs(upsampled[: (hi - lo) * OVERSAMPLING]).reshape(-1, OVERSAMPLING)
        # the maximum over the phases column by column: numpy reduces a 4-wide axis 3x slower
        block = np.abs(audio[lo:hi]).astype(np.float32)
        for phase in range(OVERSAMPLING):
            np.maximum(block, frames[:, phase], out=block)
        peaks[start:stop] = block[start - lo : stop - lo]
    return peaks


def true_peak_db(audio: np.ndarray) -> float:
    """True peak in dBTP (dB relative to full scale, inter-sample peaks included)."""
    if len(audio) == 0:
        return -np.inf
    peak = float(sample_peaks(audio).max())
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def limit_true_peak(audio: np.ndarray, sample_rate: int, ceiling_db: float) -> np.ndarray:
    """Lookahead limiter: the output's true peak stays at or under `ceiling_db`.

    Only the ~40 ms around each over-the-ceiling peak is turned down; the rest is untouched.
    """
    ceiling = 10 ** (ceiling_db / 20)
    peaks = sample_peaks(audio)
    if peaks.max(initial=0.0) <= ceiling:
        return audio
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12)).astype(np.float32)
    half = max(1, int(LIMITER_WINDOW_S * sample_rate))
    # every sample within `half` of a peak gets at most the peak's gain; averaging over a
    # window of the same half-width then keeps that bound at the peak and smooths the ramps
    held = minimum_filter1d(needed, size=2 * half + 1, mode="nearest")
    gain = uniform_filter1d(held, size=2 * half + 1, mode="nearest")
    limited = (audio * gain).astype(np.float32)
    # a slowly varying gain reshapes inter-sample peaks a hair; settle any residue globally
    residue = true_peak_db(limited) - ceiling_db
    if residue > 0:
        limited *= np.float32(10 ** (-residue / 20))
    return limited


def master(
    audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_db: float
) -> np.ndarray:
    """Gain to `target_lufs`, then limit true peak to `ceiling_db`.

    Limiting lowers loudness a little when many peaks are caught, so the pair is repeated a
    few times until the result is within 0.1 LU of the target. Silence-only audio or audio
    with non-finite samples fails the book instead of being amplified into noise.
    """
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or infinite samples")
    out = audio.astype(np.float32)
    for _ in range(4):
        loudness = integrated_loudness(out, sample_rate)
        if not loudness > SILENCE_LUFS:
            raise AudioError(
                f"audio is silent (integrated loudness {loudness:.1f} LUFS)",
                hint="the engine produced no speech for this book; check its chunks",
            )
        if abs(loudness - target_lufs) <= 0.1:
            break
        out = out * np.float32(10 ** ((target_lufs - loudness) / 20))
        out = limit_true_peak(out, sample_rate, ceiling_db)
    return out
