"""CSM's frame loop over the loaded model's own modules: fixed slots, per-row stop, slot refill.

A frame is one backbone position: the backbone's last hidden state gives codebook 0 (`lm_head`),
then the depth decoder (its own 33-position cache, reset every frame) reads
[projected hidden state, codebook 0, ..., codebook 30] and its per-codebook heads give codebooks
1..31. The frame's embedding (the sum of its 32 codebook embeddings) is the backbone's next
input. This is what transformers' CSM `generate` and Sesame's generator.py do; here:

- B slots own preallocated KV caches (backbone: the 2048-position window; depth decoder: 33).
  Rows are prefilled into free slots (together, right-padded); from then on every frame runs
  all slots with the same tensor shapes, each row at its own position with its own mask, so a
  CUDA graph captured once per B (and attention span) replays every frame. Free and finished
  slots compute masked garbage.
- Every per-row decision stays on the device: sampling, the end frame, the row's frame cap,
  a runaway row (its first codebook unchanged for `repeat_limit` frames: CSM's endless
  silence). The host reads the live mask every `check_every` frames, hands finished rows back
  and prefills the next rows of the queue into their slots (continuous batching).
- Sampling: top-k, temperature, then Gumbel-max with noise hashed from (row seed, frame,
  codebook, code), so a row's codes depend neither on its batch-mates nor on its slot, and a
  rerun reproduces them (sampling.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from narrate.synth.sampling import frame_keys, sample

PREFILL_ROWS = 16  # prompts prefilled together, at most


@dataclass
class Row:
    """One generation to run: its prompt embeddings [positions, hidden], frame cap and seed."""

    key: Any  # the caller's handle, returned with the codes
    embeds: torch.Tensor
    cap: int
    seed: int


@dataclass
class Finished:
    key: Any
    codes: np.ndarray | None  # [frames, codebooks], up to and including an end frame if any


class FrameLoop:
    def __init__(
        self,
        model: nn.Module,  # CsmForConditionalGeneration
        slots: int,
        *,
        temperature: float,
        top_k: int,
        codebook_size: int,
        repeat_limit: int = 38,  # ~3 s of one repeated first code
        check_every: int = 4,
        graphs: bool = False,
    ) -> None:
        self.model = model
        self.backbone, self.depth = model.backbone_model, model.depth_decoder.model
        self.backbone_stack, self.depth_stack = _Stack(self.backbone), _Stack(self.depth)
        config = model.config
        self.eos = config.codebook_eos_token_id
        self.vocab = config.vocab_size
        self.codebooks = config.num_codebooks
        self.window = config.max_position_embeddings
        self.temperature, self.top_k, self.codebook_size = temperature, top_k, codebook_size
        self.repeat_limit, self.check_every = repeat_limit, check_every
        self.heads = model.depth_decoder.codebooks_head.weight.unbind(0)  # views, no copies
        self.depth_projector = _Linear.of(self.depth.inputs_embeds_projector)
        parameter = model.lm_head.weight
        device, dtype = parameter.device, parameter.dtype
        self.slots = slots
        # the backbone's caches are zeroed lazily, up to the span that rows need (`_clear`)
        self.caches = _caches(self.backbone, slots, self.window, device, dtype, torch.empty)
        self.cleared = 0
        self.depth_window = model.depth_decoder.config.max_position_embeddings
        self.depth_caches = _caches(self.depth, slots, self.depth_window, device, dtype)

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.hidden = zeros(slots, config.hidden_size, dtype=dtype)  # the backbone's last state
        self.length = zeros(slots)  # the next backbone position of each row
        self.frame = zeros(slots)  # frames generated (the noise counter)
        self.cap, self.seed = zeros(slots), zeros(slots)
        self.repeats, self.last_code = zeros(slots), zeros(slots)
        self.live = zeros(slots, dtype=torch.bool)
        self.codes = zeros(slots, self.window, self.codebooks)
        self.rows = torch.arange(slots, device=device)
        self.backbone_rope = _Rope(self.backbone, self.window, device)
        # the depth decoder's positions are the same every frame (0, 1, ..., 32): their rotary
        # factors, once, with the attention scaling folded into the query heads' factors
        self.depth_rotary = _depth_rotary(self.depth, self.depth_stack, self.codebooks, device)
        self.depth_qkv = _fused_qkv(self.depth_stack)
        self.frames_computed = self.frames_kept = 0
        # the backbone attends to the first `span` cache positions, the smallest that holds every
        # row's prompt and cap: one graph per span, all captured now, while every slot is free
        self.spans = sorted({min(span, self.window) for span in (256, 512, 1024, self.window)})
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for span in self.spans if graphs else ():
            self.graphs[span] = self._capture(span)

    # --- one frame for every slot (no host sync) ------------------------------------------

    @torch.inference_mode()
    def step(self, span: int) -> None:
        self._clear(span)
        codes = self._sample_frame(self.hidden)
        live = self.live
        self.codes[self.rows, self.frame.clamp(max=self.window - 1)] = codes
        repeated = codes[:, 0] == self.last_code
        self.repeats.copy_(torch.where(repeated, self.repeats + 1, 1))
        self.last_code.copy_(codes[:, 0])
        self.frame.add_(live.long())
        ended = (codes[:, :-1] == self.eos).all(-1)  # transformers ignores the last codebook too
        stop = ended | (self.frame >= self.cap) | (self.repeats >= self.repeat_limit)
        frame_embeds = self.backbone.embed_tokens(codes[:, None])  # sums the 32 codebooks
        hidden = _backbone_step(
            self.backbone_stack,
            self.caches,
            frame_embeds[:, 0],
            self.length,
            self.backbone_rope,
            span,
        )
        self.hidden.copy_(hidden)
        self.length.add_(live.long()).clamp_(max=self.window - 1)
        self.live.logical_and_(~stop)

    def _sample_frame(self, hidden: torch.Tensor) -> torch.Tensor:
        keys = frame_keys(self.seed, self.frame, self.codebooks)
        code = self._sample(self.model.lm_head(hidden), keys[:, 0])
        sampled = [code]
        # the depth decoder reads [projected hidden state, codebook 0, ..., codebook 30], one
        # position a step (position 0's output is never read: it only fills the cache)
        depth_input = hidden
        for position in range(self.codebooks):
            projected = self.depth_projector(depth_input)
            state = _depth_step(
                self.depth_stack,
                self.depth_qkv,
                self.depth_caches,
                projected,
                position,
                self.depth_rotary[position],
            )
            if position > 0:
                code = self._sample(state @ self.heads[position - 1], keys[:, position])
                sampled.append(code)
            if position + 1 < self.codebooks:
                depth_input = self._depth_embed(code, position)
        return torch.stack(sampled, 1)

    def _span(self, positions: int) -> int:
        return next(span for span in self.spans if span >= min(positions, self.window))

    def _clear(self, span: int) -> None:
        """Zero the backbone caches' positions up to `span` the first time anything needs them.
        Attention weighs the positions past a row's own by exactly 0, but 0 x NaN (which
        uninitialized memory may hold) is NaN; zeroing the whole window up front costs as
        much as a prefill at 16 slots. Rows only ever write below `cleared` (their prefill
        clears up to their prompt + cap), so clearing further never erases a row."""
        if span > self.cleared:
            for keys, values in self.caches:
                keys[:, :, self.cleared : span].zero_()
                values[:, :, self.cleared : span].zero_()
            self.cleared = span

    def _depth_embed(self, code: torch.Tensor, codebook: int) -> torch.Tensor:
        return self.depth.embed_tokens(code + codebook * self.vocab)

    def _sample(self, logits: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return sample(
            logits,
            key=key,
            temperature=self.temperature,
            top_k=self.top_k,
            codebook_size=self.codebook_size,
        )

    def _capture(self, span: int) -> torch.cuda.CUDAGraph:
        """Record `step` (all slots free, so the warm-up changes nothing that matters); the
        graphs share one memory pool: they never run at the same time."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.step(span)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(self.graphs.values())).pool() if self.graphs else None
        with torch.cuda.graph(graph, pool=pool):
            self.step(span)
        return graph

    # --- the host side ----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slots: list[int], rows: list[Row]) -> None:
        """Run the rows' prompts into their slots' caches, together (right-padded to the
        longest: a row's first frame overwrites its padding before anything reads it); each
        row's first frame comes with the next step."""
        device, dtype = self.hidden.device, self.hidden.dtype
        lengths = torch.tensor([len(row.embeds) for row in rows], device=device)
        longest = int(lengths.max())
        self._clear(self._span(max(len(row.embeds) + row.cap for row in rows)))
        embeds = torch.zeros(len(rows), longest, self.hidden.shape[1], device=device, dtype=dtype)
        for n, row in enumerate(rows):
            embeds[n, : len(row.embeds)] = row.embeds
        caches = [
            tuple(torch.empty_like(t[: len(rows), :, :longest]) for t in layer)
            for layer in self.caches
        ]
        out = _prompt_forward(self.backbone_stack, caches, embeds, self.backbone_rope)
        index = torch.tensor(slots, device=device)
        for (keys, values), (new_keys, new_values) in zip(self.caches, caches, strict=True):
            keys[index, :, :longest] = new_keys
            values[index, :, :longest] = new_values
        self.hidden[index] = out[torch.arange(len(rows), device=device), lengths - 1]
        for state, value in (
            (self.length, lengths),
            (self.frame, 0),
            (self.cap, torch.tensor([row.cap for row in rows], device=device)),
            (self.seed, torch.tensor([row.seed for row in rows], device=device)),
            (self.repeats, 0),
            (self.last_code, -1),
            (self.live, True),
        ):
            state[index] = value

    def run(self, queue: deque[Row]) -> Iterator[list[Finished]]:
        """Generate every row of `queue` (which may grow while this runs: retries rejoin it),
        yielding the rows that finished since the last check."""
        occupant: list[Row | None] = [None] * self.slots
        try:
            yield from self._run(queue, occupant)
        except BaseException:  # out of memory, say: the rows in flight rejoin the queue
            queue.extendleft(reversed([row for row in occupant if row is not None]))
            self.live.zero_()
            raise

    def _run(self, queue: deque[Row], occupant: list[Row | None]) -> Iterator[list[Finished]]:
        while queue or any(occupant):
            free = [slot for slot, row in enumerate(occupant) if row is None][: len(queue)]
            for start in range(0, len(free), PREFILL_ROWS):
                slots = free[start : start + PREFILL_ROWS]
                rows = [queue.popleft() for _ in slots]
                for slot, row in zip(slots, rows, strict=True):
                    occupant[slot] = row
                self.prefill(slots, rows)
            longest = max(len(row.embeds) + row.cap for row in occupant if row is not None)
            span = self._span(longest)
            for _ in range(self.check_every):
                self.graphs[span].replay() if self.graphs else self.step(span)
            self.frames_computed += self.check_every * sum(row is not None for row in occupant)
            live, frames = torch.stack([self.live.long(), self.frame]).cpu().numpy()
            done = [s for s, row in enumerate(occupant) if row is not None and not live[s]]
            if not done:
                continue
            codes = self.codes[done, : int(frames[done].max())].cpu().numpy()
            finished = []
            for slot, row_codes in zip(done, codes, strict=True):
                finished.append(Finished(occupant[slot].key, row_codes[: frames[slot]]))
                self.frames_kept += int(frames[slot])
                occupant[slot] = None
            yield finished


def _caches(
    stack: nn.Module,
    slots: int,
    window: int,
    device: torch.device,
    dtype: torch.dtype,
    make: Callable[..., torch.Tensor] = torch.zeros,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    config = stack.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (slots, config.num_key_value_heads, window, head_dim)
    return [
        (
            make(shape, device=device, dtype=dtype),
            make(shape, device=device, dtype=dtype),
        )
        for _ in stack.layers
    ]


class _Rope:
    """A decoder stack's rotary factors for every position of its window, from its own module."""

    def __init__(self, stack: nn.Module, window: int, device: torch.device) -> None:
        probe = torch.zeros(1, device=device, dtype=stack.norm.weight.dtype)
        positions = torch.arange(window, device=device)[None]
        self.cos, sin = (t[0] for t in stack.rotary_emb(probe, positions))
        # rotate_half(x) * sin == roll(x, half) * (sin with its first half negated): one op
        half = sin.shape[-1] // 2
        self.sin = torch.cat([-sin[:, :half], sin[:, half:]], -1)


class _Linear(NamedTuple):
    """A projection: the module's own weight and bias, applied without the module call."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, module: nn.Linear) -> _Linear:
        return cls(module.weight, module.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + this projection of x [rows, in]: one addmm for a step's 2-D states."""
        if self.bias is not None:
            return residual + self(x)
        return torch.addmm(residual, x, self.weight.t())


class _Layer(NamedTuple):
    input_norm: nn.Module
    q: _Linear
    k: _Linear
    v: _Linear
    o: _Linear
    post_norm: nn.Module
    gate: _Linear
    up: _Linear
    down: _Linear
    act: nn.Module
    scaling: float


class _Stack:
    """A decoder stack's layers as plain 2-D ops on its own weights: the module calls'
    reshaping and dispatch cost more than the math at a frame step's sizes."""

    def __init__(self, stack: nn.Module) -> None:
        config = stack.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.norm = stack.norm
        self.layers = [
            _Layer(
                layer.input_layernorm,
                *(_Linear.of(getattr(layer.self_attn, n)) for n in ("q_proj", "k_proj", "v_proj")),
                _Linear.of(layer.self_attn.o_proj),
                layer.post_attention_layernorm,
                *(_Linear.of(getattr(layer.mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")),
                layer.mlp.act_fn,
                layer.self_attn.scaling,
            )
            for layer in stack.layers
        ]


def _prompt_forward(
    stack: _Stack,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    rope: _Rope,
) -> torch.Tensor:
    """The decoder stack on whole prompts x [rows, T, hidden] at positions 0..T - 1: writes
    each layer's keys and values into `caches` [rows, kv heads, T, head dim], returns the
    final-norm states. Right padding needs no mask: causal attention keeps it out of every
    real position, so the fused kernel runs causal, without a mask (much the faster)."""
    rows, length, hidden = x.shape
    heads, kv_heads = stack.heads, stack.kv_heads
    cos, sin = rope.cos[:length, None], rope.sin[:length, None]  # [T, 1, head dim]
    x = x.reshape(rows * length, hidden)
    for layer, (keys, values) in zip(stack.layers, caches, strict=True):
        h = _norm(layer.input_norm, x)
        qk = torch.cat([layer.q(h), layer.k(h)], 1).view(rows, length, heads + kv_heads, -1)
        qk = torch.addcmul(qk * cos, qk.roll(qk.shape[-1] // 2, -1), sin).transpose(1, 2)
        keys.copy_(qk[:, heads:])
        values.copy_(layer.v(h).view(rows, length, kv_heads, -1).transpose(1, 2))
        out = F.scaled_dot_product_attention(
            qk[:, :heads], keys, values, is_causal=True, scale=layer.scaling, enable_gqa=True
        )
        x = x + layer.o(out.transpose(1, 2).reshape(rows * length, -1))
        h = _norm(layer.post_norm, x)
        x = x + layer.down(layer.act(layer.gate(h)) * layer.up(h))
    return _norm(stack.norm, x).view(rows, length, hidden)


def _backbone_step(
    stack: _Stack,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    positions: torch.Tensor,
    rope: _Rope,
    span: int,
) -> torch.Tensor:
    """The backbone on x [rows, hidden], each row at its own position (`positions` [rows]),
    attending to the first `span` cache positions. Written for a frame step's one query a
    row: 2-D states, cache writes by scatter (cheaper than index_put), the mask built once."""
    rows = x.shape[0]
    heads, kv_heads = stack.heads, stack.kv_heads
    group, pairs = heads // kv_heads, rows * kv_heads
    cos, sin = rope.cos[positions][:, None], rope.sin[positions][:, None]
    head_dim = cos.shape[-1]
    write = positions.view(rows, 1, 1, 1).expand(rows, kv_heads, 1, head_dim)
    visible = torch.arange(span, device=x.device) <= positions[:, None]
    mask = torch.zeros(rows, span, dtype=cos.dtype, device=x.device).masked_fill_(
        ~visible, -torch.inf
    )
    mask = mask[:, None, None].expand(rows, kv_heads, group, span).reshape(pairs, group, span)
    for layer, (keys, values) in zip(stack.layers, caches, strict=True):
        h = _norm(layer.input_norm, x)
        qk = torch.cat([layer.q(h), layer.k(h)], 1).view(rows, heads + kv_heads, -1)
        qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), sin)
        keys.scatter_(2, write, qk[:, heads:, None])
        values.scatter_(2, write, layer.v(h).view(rows, kv_heads, 1, head_dim))
        q = qk[:, :heads].reshape(pairs, group, head_dim)
        scores = torch.baddbmm(
            mask,
            q,
            keys[:, :, :span].view(pairs, span, head_dim).transpose(1, 2),
            alpha=layer.scaling,
        )
        if scores.dtype == torch.float32:
            weights = scores.softmax(-1)
        else:  # softmax in float32, as transformers does
            weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        out = torch.bmm(weights, values[:, :, :span].view(pairs, span, head_dim))
        x = layer.o.add_to(x, out.view(rows, -1))
        h = _norm(layer.post_norm, x)
        x = layer.down.add_to(x, layer.act(layer.gate(h)) * layer.up(h))
    return _norm(stack.norm, x)


def _depth_rotary(
    depth: nn.Module, stack: _Stack, positions: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(cos, sin) [query + key + value heads, head dim] for each depth decoder position: the
    query rows multiplied by the attention scaling (so that the scores need no extra op), the
    value rows 1 and 0 (values pass through unrotated, exactly), so that one op pair rotates
    a fused q/k/v projection."""
    rope = _Rope(depth, positions, device)
    heads, kv_heads = stack.heads, stack.kv_heads
    scale = torch.ones(heads + 2 * kv_heads, 1, device=device, dtype=rope.cos.dtype)
    scale[:heads] = stack.layers[0].scaling
    factors = []
    for p in range(positions):
        cos, sin = rope.cos[p] * scale, rope.sin[p] * scale
        cos[heads + kv_heads :], sin[heads + kv_heads :] = 1, 0
        factors.append((cos, sin))
    return factors


def _fused_qkv(stack: _Stack) -> list[_Linear]:
    """Each layer's q, k and v projections as one [q; k; v] projection: one matmul a step
    instead of three and a cat. A copy of those weights, kept for the depth decoder only
    (CSM-1B's: about 6M parameters, against its 1B)."""
    return [
        _Linear(
            torch.cat([layer.q.weight, layer.k.weight, layer.v.weight]),
            None if layer.q.bias is None else torch.cat([layer.q.bias, layer.k.bias, layer.v.bias]),
        )
        for layer in stack.layers
    ]


def _depth_step(
    stack: _Stack,
    qkv: list[_Linear],
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    position: int,
    rotary: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The depth decoder on x [rows, hidden], every row at the same `position` (the cache
    holds this frame's positions 0..position - 1), in few ops: no mask (every cached
    position is visible to every row), 2-D states, fused q/k/v projections (`_fused_qkv`),
    rotary factors with the scores' scaling in them."""
    rows = x.shape[0]
    heads, kv_heads = stack.heads, stack.kv_heads
    cos, sin = rotary
    for layer, project, (keys, values) in zip(stack.layers, qkv, caches, strict=True):
        h = _norm(layer.input_norm, x)
        qkv_heads = project(h).view(rows, heads + 2 * kv_heads, -1)
        qkv_heads = torch.addcmul(
            qkv_heads * cos, qkv_heads.roll(qkv_heads.shape[-1] // 2, -1), sin
        )
        keys[:, :, position] = qkv_heads[:, heads : heads + kv_heads]
        values[:, :, position] = qkv_heads[:, heads + kv_heads :]
        # grouped-query attention: the query heads sharing a key/value head side by side
        # (3-D batched matmuls over (row, key/value head) pairs: 4-D matmuls cost extra ops)
        pairs, seen = rows * kv_heads, position + 1
        q = qkv_heads[:, :heads].reshape(pairs, heads // kv_heads, -1)
        scores = torch.bmm(q, keys[:, :, :seen].view(pairs, seen, -1).transpose(1, 2))
        if scores.dtype == torch.float32:
            weights = scores.softmax(-1)
        else:  # softmax in float32, as transformers does
            weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        out = torch.bmm(weights, values[:, :, :seen].view(pairs, seen, -1))
        x = layer.o.add_to(x, out.view(rows, -1))
        h = _norm(layer.post_norm, x)
        x = layer.down.add_to(x, layer.act(layer.gate(h)) * layer.up(h))
    return _norm(stack.norm, x)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm (transformers' formula) as torch's one `rms_norm` call: on the
    CPU too, its ops dispatched from C++ cost less than the formula's eight from Python."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
