"""Loudness normalization and true-peak limiting, checked with independent measurements."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly
from support.signals import lufs, silence, speechlike, true_peak_dbtp

from narrate.config import SAMPLE_RATE
from narrate.errors import AudioError
from narrate.post.loudness import (
    integrated_loudness,
    limit_true_peak,
    master,
    sample_peaks,
    true_peak_db,
)

TARGET, CEILING = -18.0, -1.5


def with_spikes(audio: np.ndarray, level: float, every_s: float = 0.5) -> np.ndarray:
    """Plosive-like clicks well above the speech: what a limiter exists for."""
    out = audio.copy()
    out[:: int(every_s * SAMPLE_RATE)] += level
    return out


@pytest.mark.parametrize(
    "audio",
    [
        pytest.param(speechlike(12, level=0.003), id="quiet"),
        pytest.param(speechlike(12, level=0.1), id="moderate"),
        pytest.param(with_spikes(speechlike(12, level=0.1), 0.8), id="peaky"),
        pytest.param(speechlike(12, level=0.6), id="loud-clipping"),
    ],
)
def test_loudness_on_target_and_true_peak_under_the_limit(audio: np.ndarray) -> None:
    out = master(audio, SAMPLE_RATE, TARGET, CEILING)
    assert lufs(out) == pytest.approx(TARGET, abs=0.5)
    assert true_peak_dbtp(out) <= CEILING + 0.05
    assert len(out) == len(audio)


@pytest.mark.parametrize(
    ("level", "spikes"), [(0.02, 0.0), (0.1, 0.8), (0.3, 0.0), (0.6, 0.9), (0.9, 0.0)]
)
def test_mastering_lands_within_a_tenth_of_a_unit_of_the_target_however_hard_it_limits(
    level: float, spikes: float
) -> None:
    audio = with_spikes(speechlike(10, level=level, seed=11), spikes)
    out = master(audio, SAMPLE_RATE, TARGET, CEILING)
    assert lufs(out) == pytest.approx(TARGET, abs=0.1)
    assert true_peak_dbtp(out) <= CEILING + 0.05


def test_target_and_ceiling_are_honoured_when_changed() -> None:
    out = master(speechlike(8, level=0.05, seed=3), SAMPLE_RATE, -23.0, -3.0)
    assert lufs(out) == pytest.approx(-23.0, abs=0.5)
    assert true_peak_dbtp(out) <= -3.0 + 0.05


def test_limiter_only_touches_the_neighbourhood_of_peaks() -> None:
    audio = speechlike(6, level=0.05) + np.float32(0)
    spike_at = 3 * SAMPLE_RATE
    audio[spike_at] = 0.99
    out = limit_true_peak(audio, SAMPLE_RATE, CEILING)
    assert true_peak_dbtp(out) <= CEILING + 0.05
    far = np.ones(len(audio), dtype=bool)
    far[spike_at - SAMPLE_RATE // 10 : spike_at + SAMPLE_RATE // 10] = False
    np.testing.assert_array_equal(out[far], audio[far])


def test_limiter_leaves_audio_under_the_ceiling_alone() -> None:
    audio = speechlike(3, level=0.05)
    assert true_peak_db(audio) < CEILING
    assert limit_true_peak(audio, SAMPLE_RATE, CEILING) is audio


def test_true_peak_sees_inter_sample_peaks() -> None:
    # a quarter-rate sine sampled at +-45 degrees: every sample is at 0.707 of the true peak
    n = np.arange(SAMPLE_RATE)
    audio = np.sin(2 * np.pi * n / 4 + np.pi / 4) * 0.9
    audio[:2400] *= np.linspace(0, 1, 2400)  # gentle edges: no ringing from a hard start
    audio[-2400:] *= np.linspace(1, 0, 2400)
    audio = audio.astype(np.float32)
    sample_peak_db = 20 * np.log10(np.abs(audio).max())
    assert true_peak_db(audio) == pytest.approx(true_peak_dbtp(audio), abs=0.1)
    assert true_peak_db(audio) > sample_peak_db + 2.5


@pytest.mark.parametrize(
    "audio",
    [
        pytest.param(silence(5), id="digital-silence"),
        pytest.param(
            (np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE) * 1e-5).astype(np.float32),
            id="noise-floor",
        ),
    ],
)
def test_silence_fails_instead_of_being_amplified(audio: np.ndarray) -> None:
    with pytest.raises(AudioError, match="silent"):
        master(audio, SAMPLE_RATE, TARGET, CEILING)


def test_non_finite_samples_fail() -> None:
    audio = speechlike(2)
    audio[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        master(audio, SAMPLE_RATE, TARGET, CEILING)


@pytest.mark.parametrize("seconds", [0.3, 0.73, 3.3, 40.0])
@pytest.mark.parametrize("level", [0.0005, 0.1])
def test_loudness_is_the_reference_meters_to_the_last_digits(seconds: float, level: float) -> None:
    audio = speechlike(seconds, level=level, seed=7)
    padded = np.pad(audio, (0, max(0, SAMPLE_RATE // 2 - len(audio))))  # the meter's minimum
    assert integrated_loudness(audio, SAMPLE_RATE) == pytest.approx(lufs(padded), abs=1e-6)


def test_digital_silence_has_no_loudness() -> None:
    assert integrated_loudness(silence(3), SAMPLE_RATE) == -np.inf


def test_oversampled_peaks_are_scipys_4x_interpolation_wherever_they_are_looked_for() -> None:
    audio = with_spikes(speechlike(4, level=0.1, seed=5), 0.6, every_s=0.3)
    upsampled = np.abs(resample_poly(audio, 4, 1)).reshape(-1, 4)
    reference = np.maximum(upsampled.max(1), np.abs(audio))
    np.testing.assert_allclose(sample_peaks(audio), reference, atol=1e-5)
    above = 0.5
    screened = sample_peaks(audio, above=above)
    loud = reference > above + 1e-5
    assert loud.sum() > 10  # the spikes
    np.testing.assert_allclose(screened[loud], reference[loud], atol=1e-5)
    assert np.all(screened[~loud] <= above + 1e-5)


def test_audio_already_on_target_still_has_its_peaks_limited() -> None:
    audio = speechlike(8, level=0.1, seed=2)
    audio *= np.float32(10 ** ((TARGET - lufs(audio)) / 20))
    audio[4 * SAMPLE_RATE] = 0.999  # one click over the ceiling, too short to move loudness
    assert lufs(audio) == pytest.approx(TARGET, abs=0.1)
    out = master(audio, SAMPLE_RATE, TARGET, CEILING)
    assert true_peak_dbtp(out) <= CEILING + 0.05
