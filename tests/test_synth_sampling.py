"""Per-row seeded sampling (Gumbel-max): the right distribution, per-row streams, masking."""

from __future__ import annotations

import numpy as np
import torch

from narrate.synth.sampling import RowSampler

LOGITS = torch.tensor([3.0, 2.0, 1.5, 0.0, -1.0, 9.0])  # the last id is a special: masked


def sampler(seeds: list[int], temperature: float = 1.0, top_k: int = 3) -> RowSampler:
    return RowSampler(
        seeds,
        temperature=temperature,
        top_k=top_k,
        codebook_size=5,
        num_codebooks=2,
        device=torch.device("cpu"),
    )


def picks(rows: RowSampler, new_frame: bool = True, codebook: int = 0) -> np.ndarray:
    scores = LOGITS.repeat(len(rows.generators), 1)
    return rows.process(scores, codebook, new_frame).argmax(-1).numpy()


def test_argmax_of_noised_scores_samples_softmax_of_the_top_k() -> None:
    samples = picks(sampler(list(range(20_000)), temperature=0.8))
    expected = torch.softmax(LOGITS[:3] / 0.8, dim=0).numpy()
    observed = np.bincount(samples, minlength=6) / len(samples)
    assert observed[3:].sum() == 0  # outside the top 3, and the masked special
    np.testing.assert_allclose(observed[:3], expected, atol=0.015)


def test_each_row_draws_from_its_own_seed_whatever_its_neighbours() -> None:
    alone, among_others = sampler([7]), sampler([1, 7, 3])
    frames = [(picks(alone)[0], picks(among_others)[1]) for _ in range(30)]
    assert all(mine == theirs for mine, theirs in frames)
    assert len({mine for mine, _ in frames}) > 1  # it does sample
    first_codebook = sampler([5] * 64)
    a = picks(first_codebook)
    b = picks(first_codebook, new_frame=False, codebook=1)  # the depth decoder's next draw
    assert (a == a[0]).all() and (b == b[0]).all()


def test_greedy_takes_the_best_valid_code() -> None:
    assert (picks(sampler([0, 1, 2], temperature=0.0)) == 0).all()  # id 5 scores 9 but is masked
