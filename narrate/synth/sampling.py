"""Per-row seeded top-k sampling inside one batched CSM `generate`.

transformers samples a whole batch from one random stream (`torch.multinomial`), so a row's
audio would depend on the rows it happens to share a batch with, and a resumed run (batched
differently) would not reproduce it. Here each row owns a generator seeded from its chunk id:
`generate` runs greedy and the logits processors add Gumbel noise drawn from the row's own
generator, so the argmax is a sample from softmax(top-k(logits) / temperature) (Gumbel-max).

transformers' CSM calls `depth_decoder.generate()` for codebooks 1..31 without passing logits
processors, so `attached()` routes ours into that call for the duration of one generation.
The noise of a whole frame (all codebooks) is drawn per row when the backbone samples codebook
0 and consumed by the depth decoder. Out-of-range codes (the codebook's specials) are masked
in both, which is also what keeps random test weights decodable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class RowSampler:
    def __init__(
        self,
        seeds: Sequence[int],
        *,
        temperature: float,
        top_k: int,
        codebook_size: int,
        num_codebooks: int,
        device: torch.device,
    ) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.noise: torch.Tensor | None = None  # [rows, codebooks, vocab] for the current frame
        self.backbone = _CodebookProcessor(self, depth=False)
        self.depth = _CodebookProcessor(self, depth=True)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def process(self, scores: torch.Tensor, codebook: int, new_frame: bool) -> torch.Tensor:
        scores = scores.float()
        scores[:, self.codebook_size :] = -float("inf")
        if self.greedy:
            return scores
        if self.top_k and self.top_k < self.codebook_size:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if new_frame or self.noise is None:
            shape = (self.num_codebooks, scores.shape[-1])
            self.noise = torch.stack([_gumbel(shape, g) for g in self.generators])
        return scores / self.temperature + self.noise[:, codebook]


class _CodebookProcessor(LogitsProcessor):
    def __init__(self, sampler: RowSampler, *, depth: bool) -> None:
        self.sampler = sampler
        self.depth = depth

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        # depth decoder inputs are [backbone state, codebook 0, ..., codebook k-1]
        codebook = input_ids.shape[1] - 1 if self.depth else 0
        return self.sampler.process(scores, codebook, new_frame=not self.depth)


def _gumbel(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    exponential = torch.empty(shape, device=generator.device).exponential_(generator=generator)
    return -exponential.log()


@contextmanager
def attached(model: torch.nn.Module, sampler: RowSampler) -> Iterator[LogitsProcessorList]:
    """Route `sampler` into the depth decoder; yields the backbone's processor list."""
    depth = model.depth_decoder
    depth.generate = functools.partial(
        type(depth).generate, depth, logits_processor=LogitsProcessorList([sampler.depth])
    )
    try:
        yield LogitsProcessorList([sampler.backbone])
    finally:
        del depth.generate
