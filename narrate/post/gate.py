"""The integrity gate: what an encoded book must satisfy before it may be published."""

from __future__ import annotations

from dataclasses import dataclass

from narrate.config import PostConfig
from narrate.errors import AudioError
from narrate.post.encode import decode
from narrate.post.loudness import integrated_loudness, true_peak_db

DURATION_TOLERANCE_S = 0.05
LOUDNESS_TOLERANCE_LU = 0.5
PEAK_TOLERANCE_DB = 0.1  # 16-bit rounding and the oversampled estimate's own spread
# narration runs at ~14 characters a second; far outside this range something went wrong
# (a chunk cut short, a runaway generation). The slack covers short books, where each
# chunk's fixed overhead weighs more than its characters.
FASTEST_CHARS_PER_S = 30.0
SLOWEST_CHARS_PER_S = 4.0
SLACK_S = 2.0


@dataclass(frozen=True, slots=True)
class Measured:
    """An encoded file as a listener gets it."""

    duration_s: float
    loudness_lufs: float
    true_peak_db: float


def measure(data: bytes) -> Measured:
    """Decode an encoded file and measure it (AudioError if it does not decode)."""
    audio, rate = decode(data)
    if len(audio) == 0:
        raise AudioError("encoded file decodes to no audio")
    return Measured(len(audio) / rate, integrated_loudness(audio, rate), true_peak_db(audio))


def plausible_duration(characters: int, pauses_s: float) -> tuple[float, float]:
    """Shortest and longest believable narration of `characters` with `pauses_s` of pauses."""
    return characters / FASTEST_CHARS_PER_S, characters / SLOWEST_CHARS_PER_S + pauses_s + SLACK_S


def check(
    measured: Measured,
    *,
    expected_duration_s: float,
    characters: int,
    pauses_s: float,
    config: PostConfig,
) -> None:
    """Raise AudioError naming the first check the file fails."""
    drift = measured.duration_s - expected_duration_s
    if abs(drift) > DURATION_TOLERANCE_S:
        raise AudioError(
            f"encoded duration {measured.duration_s:.3f} s differs from the assembled "
            f"{expected_duration_s:.3f} s by {drift * 1000:+.0f} ms"
        )
    if abs(measured.loudness_lufs - config.loudness_lufs) > LOUDNESS_TOLERANCE_LU:
        raise AudioError(
            f"loudness {measured.loudness_lufs:.1f} LUFS is off the "
            f"{config.loudness_lufs:.1f} LUFS target"
        )
    if measured.true_peak_db > config.true_peak_db + PEAK_TOLERANCE_DB:
        raise AudioError(
            f"true peak {measured.true_peak_db:.2f} dBTP is over the "
            f"{config.true_peak_db:.2f} dBTP limit"
        )
    shortest, longest = plausible_duration(characters, pauses_s)
    if not shortest <= measured.duration_s <= longest:
        rate = characters / measured.duration_s
        raise AudioError(
            f"{measured.duration_s:.1f} s for {characters} characters ({rate:.1f} characters/s) "
            f"is implausible narration (expected {shortest:.1f}-{longest:.1f} s)",
            hint="a chunk was likely cut short or ran away (hit its frame cap)",
        )
