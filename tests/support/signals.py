"""Test signals for post-processing, and measurements made independently of narrate.post."""

from __future__ import annotations

import numpy as np
import pyloudnorm
from scipy.signal import resample

from narrate.config import SAMPLE_RATE


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def tone(
    seconds: float, frequency: float, amplitude: float = 0.3, ramp_ms: float = 5
) -> np.ndarray:
    """A sine burst with short raised-cosine edges (its onset and end are sharp but clickless)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = amplitude * np.sin(2 * np.pi * frequency * t)
    ramp = int(ramp_ms / 1000 * SAMPLE_RATE)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        out[:ramp] *= edge
        out[-ramp:] *= edge[::-1]
    return out.astype(np.float32)


def speechlike(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a gliding pitch in syllable-rate bursts, plus breath noise:
    a crest factor and spectrum close enough to narration for loudness and codec tests."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 25 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 40))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 6)), 0, None) ** 0.7
    breath = 0.02 * rng.standard_normal(len(t))
    return (level * (voiced * syllables + breath)).astype(np.float32)


def lufs(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.astype(np.float64)))


def true_peak_dbtp(audio: np.ndarray, oversample: int = 8) -> float:
    """True peak by FFT (band-limited) interpolation: a different method from narrate's."""
    peak = np.abs(resample(audio.astype(np.float64), len(audio) * oversample)).max()
    return float(20 * np.log10(peak))


def silent_runs(audio: np.ndarray, threshold: float = 1e-3) -> list[tuple[int, int]]:
    """(start, stop) of every run of samples under `threshold`, in samples."""
    quiet = np.concatenate([[False], np.abs(audio) < threshold, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2], strict=True))


def band_energy(audio: np.ndarray, low_hz: float, high_hz: float = np.inf) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(spectrum[(frequencies >= low_hz) & (frequencies < high_hz)].sum())
