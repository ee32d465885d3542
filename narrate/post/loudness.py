"""Loudness normalization (ITU-R BS.1770) and a true-peak limiter.

Integrated loudness is pyloudnorm's measure (its K-weighting filters, its gating arithmetic),
vectorized: pyloudnorm sums each 400 ms gating block in a Python loop, which made loudness
the largest cost of post-processing; here one cumulative sum gives every block.

True peak is estimated the way BS.1770-4 describes it: the signal oversampled 4x and its
largest absolute value taken. The limiter turns the per-sample peaks into a gain curve that is
provably at or under the required gain at every peak (a minimum filter, then a moving average
no wider than it), so it never needs a sample-by-sample loop.

Oversampling is most of post-processing's cost, so it is done only where it can matter: each
oversampled value is a 21-tap filter of the samples around it, hence at most the filter's
absolute sum times their largest magnitude. Where that bound is already under what is being
looked for (the ceiling, the loudest sample), the bound stands in; elsewhere the exact values
are computed. Speech has few samples near its peaks, so few are computed.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pyloudnorm.iirfilter import IIRfilter
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d
from scipy.signal import firwin, sosfilt

from narrate.errors import AudioError

SILENCE_LUFS = -70.0  # BS.1770's absolute gate: below it a book holds no programme at all
OVERSAMPLING = 4
LIMITER_WINDOW_S = 0.02  # gain ramps down over ~20 ms before a peak and back up after it
_TAPS = 21  # per oversampling phase: scipy's resample_poly filter for 4x (81 taps) split in 4
_BLOCK = 1 << 16  # samples whose oversampled values are computed at once: bounds memory
_MIN_MEASURE_S = 0.5  # pyloudnorm needs one 400 ms gating block


_BLOCK_S, _BLOCK_STEP = 0.4, 0.25  # BS.1770 gating blocks: 400 ms, overlapping by 75 %
_ABSOLUTE_GATE_LUFS, _RELATIVE_GATE_LU = -70.0, -10.0


@functools.cache
def _k_weighting(sample_rate: int) -> tuple[np.ndarray, float]:
    """BS.1770's K-weighting (a high shelf, then a high pass) at `sample_rate` as
    second-order sections and their overall gain, from pyloudnorm's own filter design."""
    stages = (
        IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sample_rate, "high_shelf"),
        IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass"),
    )
    sections = np.array([np.concatenate([stage.b, stage.a]) for stage in stages])
    return sections, float(np.prod([stage.passband_gain for stage in stages]))


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (gated, BS.1770-4); -inf for digital silence."""
    minimum = int(_MIN_MEASURE_S * sample_rate)
    if len(audio) < minimum:  # silence padding leaves the gated loudness nearly unchanged
        audio = np.pad(audio, (0, minimum - len(audio)))
    sections, gain = _k_weighting(sample_rate)
    weighted = sosfilt(sections, audio.astype(np.float64)) * gain
    energy = np.concatenate([[0.0], np.cumsum(np.square(weighted))])
    # the blocks' bounds computed as pyloudnorm computes them, so the measures agree
    seconds = len(audio) / sample_rate
    blocks = np.arange(int(np.round((seconds - _BLOCK_S) / (_BLOCK_S * _BLOCK_STEP))) + 1)
    lower = (_BLOCK_S * (blocks * _BLOCK_STEP) * sample_rate).astype(np.int64)
    upper = np.minimum(
        (_BLOCK_S * (blocks * _BLOCK_STEP + 1) * sample_rate).astype(np.int64), len(audio)
    )
    power = (energy[upper] - energy[lower]) / (_BLOCK_S * sample_rate)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(power)
        audible = power[block_lufs >= _ABSOLUTE_GATE_LUFS]
        if len(audible) == 0:
            return -np.inf
        relative_gate = -0.691 + 10 * np.log10(audible.mean()) + _RELATIVE_GATE_LU
        gated = power[(block_lufs > relative_gate) & (block_lufs > _ABSOLUTE_GATE_LUFS)]
        return float(-0.691 + 10 * np.log10(gated.mean() if len(gated) else 0.0))


@functools.cache
def _phases() -> tuple[np.ndarray, float]:
    """The 4x interpolation filter as a [taps, phases] matrix over a window of `_TAPS` samples
    (the one `scipy.signal.resample_poly(x, 4, 1)` designs, so the values match it), and the
    largest absolute sum of a phase's taps: no oversampled value exceeds it times the
    window's loudest sample."""
    half = _TAPS // 2
    taps = firwin(OVERSAMPLING * 2 * half + 1, 1 / OVERSAMPLING, window=("kaiser", 5.0))
    taps = np.pad(taps * OVERSAMPLING, (0, OVERSAMPLING * _TAPS - len(taps)))
    # phase p's value between sample n and n + 1 is sum_k taps[4k + p] x[n + half - k]
    matrix = taps.reshape(_TAPS, OVERSAMPLING)[::-1].astype(np.float32)
    return np.ascontiguousarray(matrix), float(np.abs(matrix).sum(0).max())


def sample_peaks(audio: np.ndarray, above: float = 0.0) -> np.ndarray:
    """Per sample, the largest absolute value of the 4x oversampled signal around it, exact
    wherever it may exceed `above`; elsewhere a bound that is at most `above`."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    matrix, gain = _phases()
    half = _TAPS // 2
    peaks = maximum_filter1d(np.abs(audio), _TAPS, mode="constant") * np.float32(gain)
    windows = sliding_window_view(np.pad(audio, half), _TAPS)  # windows[n] is around n
    candidates = np.flatnonzero(peaks > above)
    for start in range(0, len(candidates), _BLOCK):
        where = candidates[start : start + _BLOCK]
        peaks[where] = np.abs(windows[where] @ matrix).max(1)
    return peaks


def true_peak_db(audio: np.ndarray) -> float:
    """True peak in dBTP (dB relative to full scale, inter-sample peaks included)."""
    if len(audio) == 0:
        return -np.inf
    loudest = float(np.abs(audio).max())  # the true peak is at least this: look above it
    peak = float(sample_peaks(audio, above=loudest).max())
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def _limiter_gain(peaks: np.ndarray, sample_rate: int, ceiling: float) -> np.ndarray:
    """Per-sample gain (<= 1) that brings every peak to `ceiling` or under, smoothly."""
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12)).astype(np.float32)
    half = max(1, int(LIMITER_WINDOW_S * sample_rate))
    # every sample within `half` of a peak gets at most the peak's gain; averaging over a
    # window of the same half-width then keeps that bound at the peak and smooths the ramps
    held = minimum_filter1d(needed, size=2 * half + 1, mode="nearest")
    return uniform_filter1d(held, size=2 * half + 1, mode="nearest")


def _settle(limited: np.ndarray, ceiling_db: float) -> np.ndarray:
    """A slowly varying gain reshapes inter-sample peaks a hair: settle any residue globally."""
    residue = true_peak_db(limited) - ceiling_db
    if residue > 0:
        limited *= np.float32(10 ** (-residue / 20))
    return limited


def limit_true_peak(audio: np.ndarray, sample_rate: int, ceiling_db: float) -> np.ndarray:
    """Lookahead limiter: the output's true peak stays at or under `ceiling_db`.

    Only the ~40 ms around each over-the-ceiling peak is turned down; the rest is untouched.
    """
    ceiling = 10 ** (ceiling_db / 20)
    peaks = sample_peaks(audio, above=ceiling)
    if peaks.max(initial=0.0) <= ceiling:
        return audio
    limited = (audio * _limiter_gain(peaks, sample_rate, ceiling)).astype(np.float32)
    return _settle(limited, ceiling_db)


def master(
    audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_db: float
) -> np.ndarray:
    """Gain to `target_lufs`, then limit true peak to `ceiling_db`.

    Limiting lowers loudness a little when many peaks are caught, so the gain is raised and
    the limiter recomputed until the result is within 0.1 LU of the target: at most 4
    measurements, each gain step scaled by the loudness the previous one bought (the limiter
    eats part of every dB once it bites). The peaks of `audio` times a gain are its peaks
    times that gain, so they are found once (again only if the gain grows past the margin
    they were found with). Silence-only audio or audio with non-finite samples fails the book
    instead of being amplified into noise.
    """
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or infinite samples")
    audio = audio.astype(np.float32)
    ceiling = 10 ** (ceiling_db / 20)
    out, gain_db = audio, 0.0
    previous: tuple[float, float] | None = None  # (gain in dB, loudness) measured before
    peaks, exact_above = None, np.inf
    for _ in range(4):
        loudness = integrated_loudness(out, sample_rate)
        if not loudness > SILENCE_LUFS:
            raise AudioError(
                f"audio is silent (integrated loudness {loudness:.1f} LUFS)",
                hint="the engine produced no speech for this book; check its chunks",
            )
        if abs(loudness - target_lufs) <= 0.1:
            break
        slope = 1.0  # LU of loudness per dB of gain: 1 until the limiter bites
        if previous is not None and gain_db != previous[0]:
            slope = (loudness - previous[1]) / (gain_db - previous[0])
            slope = min(1.0, max(0.25, slope))
        previous = (gain_db, loudness)
        gain_db += (target_lufs - loudness) / slope
        gain = 10 ** (gain_db / 20)
        if peaks is None or ceiling / gain < exact_above:
            exact_above = ceiling / gain / 2  # 6 dB of margin for the next rounds' gains
            peaks = sample_peaks(audio, above=exact_above)
        curve = np.float32(gain) * _limiter_gain(peaks * np.float32(gain), sample_rate, ceiling)
        out = audio * curve
    if out is audio:  # on target as it came: only its peaks may need the limiter
        return limit_true_peak(audio, sample_rate, ceiling_db)
    return _settle(out, ceiling_db)
