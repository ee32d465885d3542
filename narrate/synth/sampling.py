"""Seeded top-k sampling on the device, one code per row, without random generator state.

A row's sample is the argmax of top-k(logits) / temperature + Gumbel noise (Gumbel-max: a draw
from softmax(top-k(logits) / temperature)). The noise is not drawn from a generator: each
candidate's comes from a fixed table of Gumbel draws, at an index hashed from (row seed, frame,
codebook) and the candidate's code. So it is the same whatever the row's batch-mates or slot,
a rerun reproduces it, it needs no per-row Python loop, and it can be replayed inside a CUDA
graph. The index is keyed by the candidate's code, not by its rank, so two candidates whose
logits differ in the last bits between a batched and a single-row run keep their noise.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: products of 32-bit values stay inside int64
NOISE_BITS = 20  # a table of 2**20 draws (4 MB of float32 on each device)
CODES = 4096  # codes a table index is offset for (Mimi codebooks hold 2048)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply) of int64 tensors holding values < 2**32."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK
    return x ^ (x >> 16)


_noise_by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _noise(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gumbel draws [2**NOISE_BITS], each code's distinct index offset [CODES]), drawn once
    on the CPU from a fixed seed and copied: every device holds the same values."""
    if device not in _noise_by_device:
        generator = torch.Generator().manual_seed(0x6E617272)
        uniform = torch.rand(1 << NOISE_BITS, generator=generator, dtype=torch.float64)
        gumbel = uniform.clamp_(min=2.0**-60).log_().neg_().log_().neg_().float()
        offsets = torch.randperm(1 << NOISE_BITS, generator=generator)[:CODES]
        _noise_by_device[device] = (gumbel.to(device), offsets.to(device))
    return _noise_by_device[device]


def frame_keys(seed: torch.Tensor, frame: torch.Tensor, codebooks: int) -> torch.Tensor:
    """The noise keys [rows, codebooks] of each row's frame: a hash of (seed, frame, codebook)."""
    codebook = torch.arange(codebooks, device=seed.device)
    keys = _mix((seed[:, None] & _MASK) ^ _mix(frame[:, None] * 64 + codebook))
    return keys & ((1 << NOISE_BITS) - 1)


def gumbel_noise(key: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, k] for candidate `codes` [rows, k] under each row's `key`
    (`frame_keys`): distinct codes read distinct draws of the table."""
    table, offsets = _noise(codes.device)
    return table.take(key[:, None] ^ offsets.take(codes))


def sample(
    logits: torch.Tensor, *, key: torch.Tensor, temperature: float, top_k: int, codebook_size: int
) -> torch.Tensor:
    """One code per row from logits [rows, vocab] and its noise `key` [rows] (`frame_keys`);
    codes >= `codebook_size` (the codebook's specials) are never sampled; temperature 0 is
    greedy."""
    logits = logits[:, :codebook_size]
    if logits.dtype != torch.float32:
        logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    top, codes = top_k_codes(logits, min(top_k, codebook_size))
    scores = torch.add(gumbel_noise(key, codes), top, alpha=1.0 / temperature)
    return codes.gather(1, scores.argmax(-1, keepdim=True))[:, 0]


_MEMBERS = 8  # codes a group holds, CPU top-k
_member_offsets: dict[tuple[torch.device, int], torch.Tensor] = {}


def top_k_codes(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits of each row [rows, codes] and their codes, in no order (each
    candidate's noise is keyed by its code, so order does not matter, and unsorted is cheaper).

    On the CPU, top-k runs an nth_element per row whose branches the data defeats (~17 us for
    2048 codes): in two passes instead, over groups of `_MEMBERS` codes (code c is in group
    c mod n / _MEMBERS). Every one of the k largest logits lies in a group whose largest logit
    ranks among the k largest of the groups' (a group ranked lower has k groups, each holding
    a larger logit, above it), so the k best groups' codes hold the k largest, found by a
    top-k over k x _MEMBERS candidates. Both passes are a few times smaller than the one: the
    same codes at a third less time at 16 rows. On a GPU, top-k is one kernel."""
    rows, size = logits.shape
    groups = size // _MEMBERS
    if logits.device.type != "cpu" or size % _MEMBERS or groups < 2 * k:
        return logits.topk(k, dim=-1, sorted=False)
    grid = logits.view(rows, _MEMBERS, groups)  # group j: codes j, j + groups, ...
    best = grid.amax(1).topk(k, dim=-1, sorted=False).indices  # [rows, k]
    candidates = grid.gather(2, best[:, None].expand(rows, _MEMBERS, k)).view(rows, -1)
    top, where = candidates.topk(k, dim=-1, sorted=False)
    key = (logits.device, groups)
    if key not in _member_offsets:
        _member_offsets[key] = torch.arange(_MEMBERS, device=logits.device)[:, None] * groups
    codes = (best[:, None] + _member_offsets[key]).view(rows, -1).gather(1, where)
    return top, codes
