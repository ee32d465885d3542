"""Seeded top-k sampling on the device, one code per row, without random generator state.

A row's sample is the argmax of top-k(logits) / temperature + Gumbel noise (Gumbel-max: a draw
from softmax(top-k(logits) / temperature)). The noise is not drawn from a generator: it is a
hash of (row seed, frame, codebook, code), so it is the same whatever the row's batch-mates or
slot, a rerun reproduces it, it needs no per-row Python loop, and it can be replayed inside a
CUDA graph. The hash is keyed by the candidate's code, not by its rank, so two candidates whose
logits differ in the last bits between a batched and a single-row run keep their noise.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: products of 32-bit values stay inside int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply) of int64 tensors holding values < 2**32."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK
    return x ^ (x >> 16)


_code_keys_by_device: dict[torch.device, torch.Tensor] = {}


def _code_keys(device: torch.device) -> torch.Tensor:
    """Each code's own hash, computed once (Mimi codebooks hold 2048 codes)."""
    if device not in _code_keys_by_device:
        codes = torch.arange(4096, device=device)
        _code_keys_by_device[device] = _mix(codes + 0x9E3779B)
    return _code_keys_by_device[device]


def frame_keys(seed: torch.Tensor, frame: torch.Tensor, codebooks: int) -> torch.Tensor:
    """The noise keys [rows, codebooks] of each row's frame: a hash of (seed, frame, codebook)."""
    codebook = torch.arange(codebooks, device=seed.device)
    return _mix((seed[:, None] & _MASK) ^ _mix(frame[:, None] * 64 + codebook))


def _log_neg_log_uniform(key: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log(-log(u)) [rows, k], with u uniform in (0, 1) hashed from `key` and `codes`: minus
    the Gumbel noise. In place on one buffer: a sampler call runs 32 times a frame."""
    bits = _mix(key[:, None] ^ torch.take(_code_keys(codes.device), codes))
    uniform = (bits >> 8).float().add_(0.5).mul_(1.0 / (1 << 24))  # in (0, 1), exact in float32
    return uniform.log_().neg_().log_()


def gumbel_noise(key: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, k] for candidate `codes` [rows, k] under each row's `key`."""
    return _log_neg_log_uniform(key, codes).neg_()


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
    # the candidates' order does not matter (each one's noise is keyed by its code), and
    # unsorted top-k is cheaper; x - log(-log(u)) is exactly x + Gumbel noise, one op less
    top, codes = logits.topk(min(top_k, codebook_size), dim=-1, sorted=False)
    scores = (top / temperature).sub_(_log_neg_log_uniform(key, codes))
    return codes.gather(1, scores.argmax(-1, keepdim=True))[:, 0]
