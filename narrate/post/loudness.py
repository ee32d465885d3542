"""Loudness normalization (ITU-R BS.1770) and a true-peak limiter.

Integrated loudness is pyloudnorm's measure (its K-weighting filters, its gating arithmetic),
vectorized: pyloudnorm sums each 400 ms gating block in a Python loop, which made loudness
the largest cost of post-processing; here the squares between consecutive block bounds are
summed once and every block is added up from those pieces.

True peak is estimated the way BS.1770-4 describes it: the signal oversampled 4x and its
largest absolute value taken. The limiter turns the peaks into a gain curve that is provably
at or under the required gain at every peak (the gain each block's loudest nearby peak needs,
then a moving average no wider than "nearby", then linear between blocks), so it never needs
a sample-by-sample loop. It works on blocks of 16 samples (0.7 ms, against ramps of 20 ms):
the gain search of `master` tries several curves, each 16 times cheaper than per sample.

Oversampling is most of post-processing's cost, so it is done only where it can matter: each
oversampled value is a 21-tap filter of the samples around it, hence at most the filter's
absolute sum times their largest magnitude (bounded per block of 16 samples, from the
block's and its neighbours' loudest). Where that bound is already under what is being
looked for (the ceiling, the loudest sample), the bound stands in; elsewhere the exact values
are computed. Speech has few samples near its peaks, so few are computed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pyloudnorm.iirfilter import IIRfilter
from scipy.ndimage import maximum_filter1d, uniform_filter1d
from scipy.signal import firwin, sosfilt

from narrate.errors import AudioError

SILENCE_LUFS = -70.0  # BS.1770's absolute gate: below it a book holds no programme at all
OVERSAMPLING = 4
LIMITER_WINDOW_S = 0.02  # gain ramps down over ~20 ms before a peak and back up after it
_TAPS = 21  # per oversampling phase: scipy's resample_poly filter for 4x (81 taps) split in 4
_BLOCK = 1 << 16  # samples whose oversampled values are computed at once: bounds memory
_MIN_MEASURE_S = 0.5  # pyloudnorm needs one 400 ms gating block
_SPAN = 16  # samples per block of the peak screen: at least _TAPS // 2
TOLERANCE_LU = 0.1  # how far from the target a mastered book may be
_SEARCH_LU, _SEARCH_STEPS = 0.02, 8  # the gain search on estimates: they cost little
_EXACT_MEASUREMENTS = 3


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
    return _gated_loudness(_k_weighted(audio, sample_rate), sample_rate)


def _k_weighted(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The audio K-weighted (in float64, without the filters' overall gain), padded with
    silence to the meter's minimum length: padding leaves the gated loudness nearly unchanged."""
    minimum = int(_MIN_MEASURE_S * sample_rate)
    if len(audio) < minimum:
        audio = np.pad(audio, (0, minimum - len(audio)))
    sections, _ = _k_weighting(sample_rate)
    return sosfilt(sections, audio.astype(np.float64))


def _gated_loudness(weighted: np.ndarray, sample_rate: int) -> float:
    """BS.1770's gated loudness of a K-weighted signal, with pyloudnorm's block bounds."""
    return _gated(np.square(weighted), 1, len(weighted), sample_rate)


def _block_energy(weighted: np.ndarray) -> np.ndarray:
    """The K-weighted signal's energy per block of `_SPAN` samples (the last may be shorter):
    what the gain search's estimates are summed from, 16 times fewer values than samples."""
    return np.add.reduceat(np.square(weighted), np.arange(0, len(weighted), _SPAN))


def _gated(energy: np.ndarray, unit: int, samples: int, sample_rate: int) -> float:
    """Gated loudness from the energy of each `unit` samples (1: exact; `_SPAN`: gating block
    bounds rounded to whole units, an estimate)."""
    seconds = samples / sample_rate
    blocks = np.arange(int(np.round((seconds - _BLOCK_S) / (_BLOCK_S * _BLOCK_STEP))) + 1)
    lower = (_BLOCK_S * (blocks * _BLOCK_STEP) * sample_rate).astype(np.int64)
    upper = np.minimum(
        (_BLOCK_S * (blocks * _BLOCK_STEP + 1) * sample_rate).astype(np.int64), samples
    )
    # the blocks overlap: the energy between consecutive bounds is summed once, then added
    # up (the first bound is 0; the piece from the last one below the end runs to the end)
    edges, which = np.unique(np.concatenate([lower, upper]), return_inverse=True)
    starts = (edges[edges < samples] + unit // 2) // unit
    pieces = np.add.reduceat(energy, np.minimum(starts, len(energy) - 1))
    energy_to = np.concatenate([[0.0], np.cumsum(pieces)])
    _, gain = _k_weighting(sample_rate)
    scale = gain**2 / (_BLOCK_S * sample_rate)
    power = (energy_to[which[len(lower) :]] - energy_to[which[: len(lower)]]) * scale
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


def _window_maxima(magnitude: np.ndarray) -> np.ndarray:
    """Per block of `_SPAN` samples, a bound on the loudest sample within `_TAPS // 2` of any
    sample in it: the block's own maximum and its two neighbours' (a fraction of the cost of
    an exact sliding maximum, and only a screen)."""
    per_block = _block_maxima(magnitude)
    near = per_block.copy()
    np.maximum(near[1:], per_block[:-1], out=near[1:])
    np.maximum(near[:-1], per_block[1:], out=near[:-1])
    return near


def sample_peaks(audio: np.ndarray, above: float = 0.0) -> np.ndarray:
    """Per sample, the largest absolute value of the 4x oversampled signal around it, exact
    wherever it may exceed `above`; elsewhere a bound that is at most `above`."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    matrix, gain = _phases()
    half = _TAPS // 2
    bounds = _window_maxima(np.abs(audio)) * np.float32(gain)
    peaks = np.repeat(bounds, _SPAN)[: len(audio)]
    loud = np.flatnonzero(bounds > above)
    candidates = (loud[:, None] * _SPAN + np.arange(_SPAN)).ravel()
    candidates = candidates[candidates < len(audio)]
    windows = sliding_window_view(np.pad(audio, half), _TAPS)  # windows[n] is around n
    for start in range(0, len(candidates), _BLOCK):
        where = candidates[start : start + _BLOCK]
        values = np.abs(windows[where] @ matrix)
        # numpy reduces short rows slowly: the phases' columns are compared instead
        peaks[where] = functools.reduce(np.maximum, values.T)
    return peaks


def true_peak_db(audio: np.ndarray) -> float:
    """True peak in dBTP (dB relative to full scale, inter-sample peaks included)."""
    if len(audio) == 0:
        return -np.inf
    loudest = float(np.abs(audio).max())  # the true peak is at least this: look above it
    peak = float(sample_peaks(audio, above=loudest).max())
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def _reach(sample_rate: int) -> int:
    """Half the limiter's window in blocks of `_SPAN` samples: a gain ramp's length, down
    before a peak and up after it (~20 ms)."""
    return -(-max(1, int(LIMITER_WINDOW_S * sample_rate)) // _SPAN)


def _block_maxima(values: np.ndarray) -> np.ndarray:
    """The largest value of each block of `_SPAN` samples (the last may be shorter)."""
    blocks = -(-len(values) // _SPAN)
    padded = np.zeros(blocks * _SPAN, dtype=np.float32)
    padded[: len(values)] = values
    maxima = padded[::_SPAN].copy()
    for offset in range(1, _SPAN):  # numpy reduces short rows slowly: strided passes instead
        np.maximum(maxima, padded[offset::_SPAN], out=maxima)
    return maxima


def _held(peaks: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per block, the loudest peak within reach of it (one block more than the smoothing's
    reach: see `_block_gain`)."""
    reach = _reach(sample_rate) + 1
    return maximum_filter1d(_block_maxima(peaks), size=2 * reach + 1, mode="nearest")


def _block_gain(held: np.ndarray, sample_rate: int, ceiling: float) -> np.ndarray:
    """Per block, a gain (<= 1) that brings every peak to `ceiling` or under, smoothly.

    Every block within reach + 1 of a peak's block gets at most the peak's gain (`held`);
    a moving average over reach blocks either side then keeps that bound at the peak's block
    and at both its neighbours, between which `_sample_gain` interpolates."""
    needed = np.minimum(1.0, ceiling / np.maximum(held, 1e-12)).astype(np.float32)
    return uniform_filter1d(needed, size=2 * _reach(sample_rate) + 1, mode="nearest")


def _sample_gain(block_gain: np.ndarray, samples: int) -> np.ndarray:
    """Per sample, linear from each block's gain (at its first sample) to the next block's."""
    step = np.diff(block_gain, append=block_gain[-1:])
    ramp = np.arange(_SPAN, dtype=np.float32) / np.float32(_SPAN)
    return (block_gain[:, None] + step[:, None] * ramp).ravel()[:samples]


class _Limiter:
    """The limiter's gain curve for the audio times any gain, per block of `_SPAN` samples.
    The peaks of the audio times a gain are its peaks times that gain, so they are found once
    (again only if the gain grows past the margin they were found with)."""

    def __init__(self, audio: np.ndarray, sample_rate: int, ceiling: float) -> None:
        self.audio, self.sample_rate, self.ceiling = audio, sample_rate, ceiling
        self._held: np.ndarray | None = None
        self._exact_above = np.inf

    def curve(self, gain: float) -> np.ndarray:
        """The gain times the limiter's, per block: what multiplies the audio."""
        if self._held is None or self.ceiling / gain < self._exact_above:
            self._exact_above = self.ceiling / gain / 2  # 6 dB of margin for later gains
            self._held = _held(sample_peaks(self.audio, above=self._exact_above), self.sample_rate)
        held = self._held * np.float32(gain)
        return np.float32(gain) * _block_gain(held, self.sample_rate, self.ceiling)


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
    gain = _block_gain(_held(peaks, sample_rate), sample_rate, ceiling)
    return _settle((audio * _sample_gain(gain, len(audio))).astype(np.float32), ceiling_db)


def master(
    audio: np.ndarray,
    sample_rate: int,
    target_lufs: float,
    ceiling_db: float,
    *,
    exact: bool = True,
) -> np.ndarray:
    """Gain to `target_lufs`, then limit true peak to `ceiling_db`: the result is within
    0.1 LU of the target.

    Limiting lowers loudness when it bites, so the gain is searched for. Each try's loudness
    is first estimated, cheaply: the K-weighted input's energy per block times the square of
    the try's gain curve there. The curve changes over milliseconds, slowly against the
    K-weighting filters, so multiplying by it nearly commutes with them. Only the gain found
    is measured exactly (one filtering of the limited audio); where the estimate was off by
    more than the tolerance, the search runs again aiming off by that error. On speech the
    estimate was within 0.002 LU of the measurement, however hard the limiter bit, and the
    peaks the limiter's gain reshaped rose by at most 0.0001 dB (less than 16-bit rounding):
    `exact=False` skips the measurement and that settling, for a caller that measures the
    result anyway (the integrity gate of a lossless file). Silence-only audio or audio with
    non-finite samples fails the book instead of being amplified into noise.
    """
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or infinite samples")
    audio = audio.astype(np.float32)
    weighted = _k_weighted(audio, sample_rate)
    loudness = _gated_loudness(weighted, sample_rate)
    if not loudness > SILENCE_LUFS:
        raise AudioError(
            f"audio is silent (integrated loudness {loudness:.1f} LUFS)",
            hint="the engine produced no speech for this book; check its chunks",
        )
    if abs(loudness - target_lufs) <= TOLERANCE_LU:  # on target as it came: limit its peaks
        return limit_true_peak(audio, sample_rate, ceiling_db)

    energy = _block_energy(weighted)  # longer than the curve where the audio was padded

    def estimate(curve: np.ndarray) -> float:
        scaled = energy.copy()
        scaled[: len(curve)] *= np.square(curve)
        return _gated(scaled, _SPAN, len(weighted), sample_rate)

    limiter = _Limiter(audio, sample_rate, 10 ** (ceiling_db / 20))
    search = _GainSearch(loudness, limiter, estimate)
    aim = target_lufs
    for _ in range(_EXACT_MEASUREMENTS):
        curve, estimated = search.towards(aim)
        out = audio * _sample_gain(curve, len(audio))
        if not exact:
            return out  # the caller measures it, and settles it should it need to
        measured = integrated_loudness(out, sample_rate)
        if abs(measured - target_lufs) <= TOLERANCE_LU:
            break
        aim -= measured - estimated  # the estimate's error at this gain, assumed to hold
    return _settle(out, ceiling_db)


class _GainSearch:
    """Secant steps on the gain in dB against estimated loudness: each step is scaled by the
    loudness the previous one bought (1 LU per dB until the limiter bites, less after)."""

    def __init__(
        self, loudness: float, limiter: _Limiter, estimate: Callable[[np.ndarray], float]
    ) -> None:
        self.limiter, self.estimate = limiter, estimate
        self.gain_db, self.loudness = 0.0, loudness
        self.previous: tuple[float, float] | None = None  # (gain in dB, loudness) before

    def towards(self, aim: float) -> tuple[np.ndarray, float]:
        """The gain curve whose estimated loudness is within `_SEARCH_LU` of `aim`, and it."""
        curve = None
        for _ in range(_SEARCH_STEPS):
            if curve is not None and abs(self.loudness - aim) <= _SEARCH_LU:
                break
            slope = 1.0
            if self.previous is not None and self.gain_db != self.previous[0]:
                slope = (self.loudness - self.previous[1]) / (self.gain_db - self.previous[0])
                slope = min(1.0, max(0.25, slope))
            self.previous = (self.gain_db, self.loudness)
            self.gain_db += (aim - self.loudness) / slope
            curve = self.limiter.curve(10 ** (self.gain_db / 20))
            self.loudness = self.estimate(curve)
        return curve, self.loudness
