"""Seeded sampling on the device (Gumbel-max over hashed noise): the right distribution, noise
that is a function of (seed, frame, codebook) only, specials masked, greedy."""

from __future__ import annotations

import numpy as np
import torch

from narrate.synth.sampling import frame_keys, sample

LOGITS = torch.tensor([3.0, 2.0, 1.5, 0.0, -1.0, 9.0])  # the last id is a special: masked


def picks(
    seeds: list[int], frames: list[int] | int = 0, codebook: int = 0, **options
) -> np.ndarray:
    rows = len(seeds)
    frame = torch.tensor(frames if isinstance(frames, list) else [frames] * rows)
    settings = {"temperature": 1.0, "top_k": 3, **options}
    key = frame_keys(torch.tensor(seeds), frame, codebooks=codebook + 1)[:, codebook]
    return sample(LOGITS.repeat(rows, 1), key=key, codebook_size=5, **settings).numpy()


def test_samples_follow_softmax_of_the_top_k_at_the_temperature() -> None:
    samples = picks(list(range(20_000)), temperature=0.8)
    expected = torch.softmax(LOGITS[:3] / 0.8, dim=0).numpy()
    observed = np.bincount(samples, minlength=6) / len(samples)
    assert observed[3:].sum() == 0  # outside the top 3, and the masked special
    np.testing.assert_allclose(observed[:3], expected, atol=0.015)


def test_frames_and_codebooks_of_one_seed_are_independent_draws() -> None:
    over_frames = picks([7] * 20_000, frames=list(range(20_000)))
    over_codebooks = np.array([picks([7], codebook=c)[0] for c in range(2_000)])
    expected = torch.softmax(LOGITS[:3], dim=0).numpy()
    for samples, tolerance in ((over_frames, 0.015), (over_codebooks, 0.04)):
        observed = np.bincount(samples, minlength=6)[:3] / len(samples)
        np.testing.assert_allclose(observed, expected, atol=tolerance)


def test_a_rows_draw_depends_on_its_seed_frame_and_codebook_only() -> None:
    alone = [picks([7], frames=f)[0] for f in range(30)]
    among_others = [picks([1, 7, 3], frames=[5, f, 9])[1] for f in range(30)]
    assert alone == among_others
    assert len(set(alone)) > 1  # it does sample
    assert (picks([5] * 64) == picks([5] * 64)[0]).all()  # a rerun draws the same


def test_greedy_takes_the_best_valid_code() -> None:
    assert (picks([0, 1, 2], temperature=0.0) == 0).all()  # id 5 scores 9 but is masked


def test_the_cpu_top_k_finds_the_same_codes_as_a_full_top_k() -> None:
    from narrate.synth.sampling import top_k_codes

    generator = torch.Generator().manual_seed(3)
    rows = [torch.randn(16, 2048, generator=generator)]
    crowded = torch.randn(4, 2048, generator=generator)
    crowded[:, 256 * torch.arange(8)] += 50  # one group holds 8 of the top codes
    crowded[:, 5 + 256 * torch.arange(8)] += 40
    rows += [crowded, torch.arange(2048.0).flip(0)[None]]  # the top 50 in 50 groups
    for logits in rows:
        top, codes = top_k_codes(logits, 50)
        expected = logits.topk(50, dim=-1)
        assert torch.equal(codes.sort(-1).values, expected.indices.sort(-1).values)
        assert torch.equal(top.sort(-1).values, expected.values.sort(-1).values)
        assert torch.equal(logits.gather(1, codes), top)
