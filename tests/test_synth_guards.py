"""Stop guards on decoded rows: end frames, trailing silence, caps, implausible durations."""

from __future__ import annotations

import numpy as np

from narrate.config import SAMPLES_PER_FRAME
from narrate.synth.guards import GuardConfig, end_frame, judge, speech_frames

GUARD = GuardConfig()


def row(speech_frames_: int, silent_frames: int, level: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    speech = level * rng.standard_normal(speech_frames_ * SAMPLES_PER_FRAME)
    silence = 1e-4 * rng.standard_normal(silent_frames * SAMPLES_PER_FRAME)
    return np.concatenate([speech, silence]).astype(np.float32)


def test_end_frame_is_the_first_all_zero_frame() -> None:
    codes = np.ones((10, 32), dtype=np.int64)
    assert end_frame(codes) is None
    codes[6] = 0
    codes[8] = 0
    assert end_frame(codes) == 6
    codes[3, :-1] = 0  # transformers' CSM loop ignores the last codebook; so do we
    assert end_frame(codes) == 3


def test_trailing_silence_is_trimmed_to_whole_frames() -> None:
    assert speech_frames(row(20, 15), GUARD.silence_db) == 20
    assert speech_frames(row(20, 0), GUARD.silence_db) == 20
    assert speech_frames(np.zeros(5 * SAMPLES_PER_FRAME, np.float32), GUARD.silence_db) == 0


def test_a_row_that_ended_or_fell_silent_before_its_cap_is_kept() -> None:
    text = "x" * 30  # expected ~27 frames at 14 characters a second
    ended = judge(row(25, 3), text=text, cap=66, ended=True, guard=GUARD)
    assert ended.problem is None and ended.stop_reason == "eos" and ended.frames == 25

    # ran to its cap, but stopped speaking 2.7 s before it: speech is complete
    silent_tail = judge(row(32, 34), text=text, cap=66, ended=False, guard=GUARD)
    assert silent_tail.problem is None and silent_tail.stop_reason == "cap"
    assert silent_tail.frames == 32


def test_a_row_still_speaking_at_its_cap_or_implausibly_short_is_a_problem() -> None:
    text = "x" * 30
    runaway = judge(row(60, 6), text=text, cap=66, ended=False, guard=GUARD)  # 0.5 s of tail
    assert runaway.problem and "frame cap" in runaway.problem

    clipped = judge(row(4, 0), text=text, cap=66, ended=True, guard=GUARD)  # 0.3 s for 30 chars
    assert clipped.problem and "implausibly short" in clipped.problem

    silent = judge(
        np.zeros(10 * SAMPLES_PER_FRAME, np.float32), text=text, cap=66, ended=True, guard=GUARD
    )
    assert silent.problem == "silent output"
