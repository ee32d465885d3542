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
  silence), and, once a row is past the frames its text calls for (`Row.quiet_after`), the
  same silence held for `silence_limit` frames (~1 s: a row that has said its text and fell
  silent stops there instead of at its cap). The host reads the live mask every `check_every`
  frames, hands finished rows back and prefills the next rows of the queue into their slots
  (continuous batching); a caller that streams batches refills the queue from its next batch
  whenever a slot would sit idle.
- Sampling: top-k, temperature, then Gumbel-max with noise read from a fixed table at an index
  hashed from (row seed, frame, codebook, code), so a row's codes depend neither on its
  batch-mates nor on its slot, and a rerun reproduces them (sampling.py).
- Few ops a step: at a frame step's sizes every op costs more in dispatch than in math, so
  the steps run plain 2-D ops on the modules' weights: q/k/v and gate/up fused into one
  matmul each (the modules' weights become views of the fused ones: no copy), projections
  written into buffers whose slices and reshapes are views made once, cache views made once
  per position (depth decoder) or span (backbone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

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
    quiet_after: int | None = None  # frames after which `silence_limit` ends it (None: cap)


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
        silence_limit: int = 13,  # ~1 s of it, past a row's `quiet_after`
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
        self.silence_limit = silence_limit
        # the heads as views of the model's weights [hidden, codes], the codebook's own codes
        # only (the specials past them are never sampled)
        self.lm_head = model.lm_head.weight.t()[:, :codebook_size]
        heads = model.depth_decoder.codebooks_head.weight.unbind(0)
        self.heads = [head[:, :codebook_size] for head in heads]
        self.depth_projector = _Linear.of(self.depth.inputs_embeds_projector)
        # the depth decoder embeds codebook c's codes with rows c x vocab.. of one table
        self.depth_embeddings = self.depth.embed_tokens.weight.split(self.vocab)
        parameter = model.lm_head.weight
        device, dtype = parameter.device, parameter.dtype
        self.slots = slots
        # the backbone's caches are zeroed lazily, up to the span that rows need (`_clear`)
        self.caches = _caches(self.backbone, slots, self.window, device, dtype, torch.empty)
        self.cleared = 0
        depth_window = model.depth_decoder.config.max_position_embeddings
        depth_caches = _caches(self.depth, slots, depth_window, device, dtype)

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.hidden = zeros(slots, config.hidden_size, dtype=dtype)  # the backbone's last state
        self.length = zeros(slots)  # the next backbone position of each row
        self.frame = zeros(slots)  # frames generated (the noise counter)
        self.cap, self.seed, self.quiet_after = zeros(slots), zeros(slots), zeros(slots)
        self.repeats, self.last_code = zeros(slots), zeros(slots)
        self.live = zeros(slots, dtype=torch.bool)
        self.codes = zeros(slots, self.window, self.codebooks)
        self.rows = torch.arange(slots, device=device)
        self.backbone_rope = _Rope(self.backbone, self.window, device)
        # frames of rows, computed and handed back; slot-frames: every slot of every step
        # computed, idle slots included (what a GPU spends)
        self.frames_computed = self.frames_kept = self.slot_frames = 0
        # the backbone attends to the first `span` cache positions, the smallest that holds every
        # row's prompt and cap. Captured, one graph per span, all now, while every slot is free:
        # a few spans (each costs a capture); eager, every multiple of 64
        steps = (256, 384, 512, 768, 1024, 1536) if graphs else range(64, self.window, 64)
        self.spans = sorted({min(span, self.window) for span in (*steps, self.window)})
        self.backbone_step = _BackboneStep(self.backbone_stack, self.caches, self.spans)
        # the depth decoder's positions are the same every frame (0, 1, ..., 31)
        self.depth_step = _DepthStep(self.depth, self.depth_stack, depth_caches, self.codebooks)
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
        silent = (self.frame >= self.quiet_after) & (self.repeats >= self.silence_limit)
        stop = ended | (self.frame >= self.cap) | (self.repeats >= self.repeat_limit) | silent
        frame_embeds = self.backbone.embed_tokens(codes[:, None])  # sums the 32 codebooks
        hidden = self.backbone_step(frame_embeds[:, 0], self.length, self.backbone_rope, span)
        self.hidden.copy_(hidden)
        self.length.add_(live.long()).clamp_(max=self.window - 1)
        self.live.logical_and_(~stop)

    def _sample_frame(self, hidden: torch.Tensor) -> torch.Tensor:
        keys = frame_keys(self.seed, self.frame, self.codebooks).unbind(1)
        code = self._sample(torch.mm(hidden, self.lm_head), keys[0])
        sampled = [code]
        # the depth decoder reads [projected hidden state, codebook 0, ..., codebook 30], one
        # position a step (position 0's output is never read: it only fills the cache)
        depth_input, norm = hidden, self.depth_stack.norm
        for position in range(self.codebooks):
            state = self.depth_step(self.depth_projector(depth_input), position)
            if state is not None:
                state = self.depth_stack.rms_norm(state, norm)
                code = self._sample(torch.mm(state, self.heads[position - 1]), keys[position])
                sampled.append(code)
            if position + 1 < self.codebooks:
                depth_input = F.embedding(code, self.depth_embeddings[position])
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
            (self.quiet_after, torch.tensor([_quiet_after(row) for row in rows], device=device)),
            (self.repeats, 0),
            (self.last_code, -1),
            (self.live, True),
        ):
            state[index] = value

    def run(
        self, queue: deque[Row], more: Callable[[bool], bool] | None = None
    ) -> Iterator[list[Finished]]:
        """Generate every row of `queue` (which may grow while this runs: retries rejoin it),
        yielding the rows that finished since the last check.

        `more(idle)`, if given, is called whenever a slot would sit idle at the next step: it
        may append rows to `queue` (`idle`: no row is left at all, so it may wait for some),
        and returns False to stop the refills (the loop then ends once its rows finish, and
        rows left in `queue` wait for the caller)."""
        occupant: list[Row | None] = [None] * self.slots
        try:
            yield from self._run(queue, occupant, more)
        except BaseException:  # out of memory, say: the rows in flight rejoin the queue
            queue.extendleft(reversed([row for row in occupant if row is not None]))
            self.live.zero_()
            raise

    def _run(
        self,
        queue: deque[Row],
        occupant: list[Row | None],
        more: Callable[[bool], bool] | None,
    ) -> Iterator[list[Finished]]:
        refill = True
        while True:
            free = [slot for slot, row in enumerate(occupant) if row is None]
            if more is not None and refill and len(queue) < len(free):
                refill = more(not queue and not any(occupant))
            free = free[: len(queue)] if refill else []
            for start in range(0, len(free), PREFILL_ROWS):
                slots = free[start : start + PREFILL_ROWS]
                rows = [queue.popleft() for _ in slots]
                for slot, row in zip(slots, rows, strict=True):
                    occupant[slot] = row
                self.prefill(slots, rows)
            if not any(occupant):
                return
            longest = max(len(row.embeds) + row.cap for row in occupant if row is not None)
            span = self._span(longest)
            for _ in range(self.check_every):
                self.graphs[span].replay() if self.graphs else self.step(span)
            self.frames_computed += self.check_every * sum(row is not None for row in occupant)
            self.slot_frames += self.check_every * self.slots
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


def _quiet_after(row: Row) -> int:
    return row.cap if row.quiet_after is None else min(row.quiet_after, row.cap)


def _caches(
    stack: nn.Module,
    slots: int,
    window: int,
    device: torch.device,
    dtype: torch.dtype,
    make: Callable[..., torch.Tensor] = torch.zeros,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    config = stack.config
    shape = (slots, config.num_key_value_heads, window, _head_dim(config))
    return [
        (
            make(shape, device=device, dtype=dtype),
            make(shape, device=device, dtype=dtype),
        )
        for _ in stack.layers
    ]


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
    """A projection as a matmul on the transpose (a view) of its weight [out, in]."""

    weight_t: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, module: nn.Linear) -> _Linear:
        return cls(module.weight.t(), module.bias)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x [rows, in] -> [rows, out], into `out` if given."""
        if self.bias is None:
            return torch.mm(x, self.weight_t, out=out)
        return torch.addmm(self.bias, x, self.weight_t, out=out)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + this projection of x [rows, in]: one addmm."""
        if self.bias is not None:
            return residual + self(x)
        return torch.addmm(residual, x, self.weight_t)


_FUSED: WeakKeyDictionary[nn.Module, _Linear] = WeakKeyDictionary()


def _fused(owner: nn.Module, names: tuple[str, ...]) -> _Linear:
    """The projections `names` of `owner` (same input) as one, their outputs side by side. Their
    weights become views of the fused weight: one matmul does all of them and the model still
    holds a single copy of its weights (its own forward reads the same memory). Once per module:
    every loop built on the model shares it."""
    if owner not in _FUSED:
        modules = [getattr(owner, name) for name in names]
        with torch.no_grad():
            weight = torch.cat([module.weight for module in modules])
            bias = None
            if any(module.bias is not None for module in modules):
                bias = torch.cat(
                    [
                        module.weight.new_zeros(module.out_features)
                        if module.bias is None
                        else module.bias
                        for module in modules
                    ]
                )
        start = 0
        for module in modules:
            end = start + module.out_features
            module.weight = nn.Parameter(weight[start:end], module.weight.requires_grad)
            if bias is not None:
                module.bias = nn.Parameter(bias[start:end], requires_grad=False)
            start = end
        _FUSED[owner] = _Linear(weight.t(), bias)
    return _FUSED[owner]


class _Layer(NamedTuple):
    input_norm: torch.Tensor  # the RMSNorms' weights
    qkv: _Linear  # [q; k; v]
    o: _Linear
    post_norm: torch.Tensor
    gate_up: _Linear  # [gate; up]
    down: _Linear


class _Stack:
    """A decoder stack's layers as plain 2-D ops on its own weights (q/k/v and gate/up fused,
    `_fused`): the module calls' reshaping and dispatch cost more than the math at a frame
    step's sizes."""

    def __init__(self, stack: nn.Module) -> None:
        config = stack.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.eps = stack.norm.variance_epsilon
        self.norm = stack.norm.weight
        self.on_cpu = self.norm.device.type == "cpu"
        self.eps_tensor = torch.full((1, 1), self.eps, dtype=self.norm.dtype)
        first = stack.layers[0]
        self.scaling = first.self_attn.scaling
        # CSM's "silu" as the function: its module (transformers' SiLUActivation) costs a call
        silu = getattr(config, "hidden_act", None) in ("silu", "swish")
        self.act = F.silu if silu else first.mlp.act_fn
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                _fused(layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                _Linear.of(layer.self_attn.o_proj),
                layer.post_attention_layernorm.weight,
                _fused(layer.mlp, ("gate_proj", "up_proj")),
                _Linear.of(layer.mlp.down_proj),
            )
            for layer in stack.layers
        ]

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm (transformers' formula): x / sqrt(mean(x^2) + eps) x weight."""
        if not self.on_cpu or x.dtype != torch.float32:
            return F.rms_norm(x, (self.hidden,), weight, self.eps)
        # torch's rms_norm is a dozen ops on the CPU (copies among them): five here, with
        # mean(x^2) as |x|^2 / n (equal to the last bits in float32; bf16 takes torch's, which
        # computes in float32)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        scale = torch.addcmul(self.eps_tensor, norm, norm, value=1 / self.hidden).rsqrt_()
        return torch.mul(x, scale).mul_(weight)

    def mlp(self, layer: _Layer, x: torch.Tensor, scratch: _Scratch | None = None) -> torch.Tensor:
        """x + the layer's MLP of its post-attention norm of x [rows, hidden]."""
        h = self.rms_norm(x, layer.post_norm)
        if scratch is None:
            gate, up = layer.gate_up(h).split(self.intermediate, -1)
        else:
            layer.gate_up(h, out=scratch.gate_up)
            gate, up = scratch.gate, scratch.up
        return layer.down.add_to(x, self.act(gate) * up)


class _Scratch:
    """What a one-position step writes a layer's projections into, with the views of them that
    it reads, made once: one set per stack and slot count, reused by every layer, so that a
    step spends no op on slicing or reshaping (and a CUDA graph sees the same addresses)."""

    def __init__(self, stack: _Stack, cache: torch.Tensor) -> None:
        """`cache`: one of the stack's caches [rows, ...], whose rows, device and dtype these
        buffers share."""
        heads, kv_heads, head_dim = stack.heads, stack.kv_heads, stack.head_dim
        rows, dtype = cache.shape[0], cache.dtype

        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, device=cache.device, dtype=dtype)

        self.qkv = empty(rows, (heads + 2 * kv_heads) * head_dim)
        by_head = self.qkv.view(rows, heads + 2 * kv_heads, head_dim)
        self.qk = by_head[:, : heads + kv_heads]  # what the rotary factors turn
        self.v = by_head[:, heads + kv_heads :]
        self.rotated = empty(rows, heads + kv_heads, head_dim)
        self.q = self.rotated[:, :heads]
        self.k = self.rotated[:, heads:]
        # grouped-query attention: the query heads sharing a key/value head side by side, as
        # 3-D batched matmuls over (row, key/value head) pairs (4-D matmuls cost extra ops)
        self.pairs, self.group = rows * kv_heads, heads // kv_heads
        try:  # one row: the queries' pairs are a view of `rotated`; more rows copy them
            self.queries: torch.Tensor | None = self.q.view(self.pairs, self.group, head_dim)
        except RuntimeError:
            self.queries = None
        self.attended = empty(self.pairs, self.group, head_dim)
        self.attended_rows = self.attended.view(rows, heads * head_dim)
        self.gate_up = empty(rows, 2 * stack.intermediate)
        self.gate = self.gate_up[:, : stack.intermediate]
        self.up = self.gate_up[:, stack.intermediate :]
        self.half = head_dim // 2
        # a bf16 model's attention scores are float32 from the matmul on (scale, mask, softmax):
        # rounded to bf16 they flip near-tied codes (bench/fidelity.py measures how often)
        self.low_precision = dtype != torch.float32
        self.scores_out_dtype = self.low_precision and _matmul_out_dtype(cache.device, dtype)
        self.no_mask = torch.zeros(1, 1, 1, device=cache.device)

    def project(
        self, stack: _Stack, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """The layer's q/k/v of x [rows, hidden]; q and k turned by (cos, sin) into `rotated`.
        Returns the queries [pairs, group, head dim] (a view where the layout allows)."""
        layer.qkv(stack.rms_norm(x, layer.input_norm), out=self.qkv)
        torch.addcmul(self.qk * cos, self.qk.roll(self.half, -1), sin, out=self.rotated)
        if self.queries is None:
            return self.q.reshape(self.pairs, self.group, -1)
        return self.queries

    def scores(
        self, q: torch.Tensor, keys: torch.Tensor, scale: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """q @ keys x scale (+ mask [pairs, group, positions]), in float32 whatever the model's
        dtype: the scale is applied after the matmul, as transformers' eager attention does."""
        if not self.low_precision:
            if mask is None:
                return torch.baddbmm(self.no_mask, q, keys, beta=0, alpha=scale)
            return torch.baddbmm(mask, q, keys, alpha=scale)
        if self.scores_out_dtype:  # CUDA: bf16 operands, float32 products and sums written out
            scores = torch.bmm(q, keys, out_dtype=torch.float32)
        else:
            scores = torch.bmm(q.float(), keys.float())
        if mask is None:
            return scores.mul_(scale)
        return torch.add(mask, scores, alpha=scale)

    def attend(self, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """softmax(scores) @ values, as [rows, heads x head dim]; `scores` are float32, the
        weights are the model's dtype for the matmul with the values (as transformers does)."""
        weights = scores.softmax(-1)
        if self.low_precision:
            weights = weights.to(values.dtype)
        torch.bmm(weights, values, out=self.attended)
        return self.attended_rows


def _matmul_out_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch writes a `dtype` batched matmul's result as float32 on `device`
    (CUDA, torch >= 2.8); elsewhere the operands are cast to float32 first."""
    if device.type != "cuda":
        return False
    try:
        probe = torch.ones(1, 1, 1, device=device, dtype=dtype)
        return torch.bmm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


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
        qkv = layer.qkv(stack.rms_norm(x, layer.input_norm))
        qkv = qkv.view(rows, length, heads + 2 * kv_heads, -1)
        qk = qkv[:, :, : heads + kv_heads]
        qk = torch.addcmul(qk * cos, qk.roll(qk.shape[-1] // 2, -1), sin).transpose(1, 2)
        keys.copy_(qk[:, heads:])
        values.copy_(qkv[:, :, heads + kv_heads :].transpose(1, 2))
        out = F.scaled_dot_product_attention(
            qk[:, :heads], keys, values, is_causal=True, scale=stack.scaling, enable_gqa=True
        )
        x = layer.o.add_to(x, out.transpose(1, 2).reshape(rows * length, -1))
        x = stack.mlp(layer, x)
    return stack.rms_norm(x, stack.norm).view(rows, length, hidden)


class _BackboneStep:
    """The backbone on one position a row (x [rows, hidden], each row at its own position),
    attending to the first `span` cache positions, over views of its caches made once."""

    def __init__(
        self, stack: _Stack, caches: list[tuple[torch.Tensor, torch.Tensor]], spans: list[int]
    ) -> None:
        self.stack, self.caches = stack, caches
        self.scratch = scratch = _Scratch(stack, caches[0][0])
        # scatter sources [rows, kv heads, 1, head dim]: a row's key and value at its position
        self.new_keys, self.new_values = scratch.k[:, :, None], scratch.v[:, :, None]
        pairs, head_dim = scratch.pairs, stack.head_dim
        self.read = {
            span: [
                (
                    keys[:, :, :span].view(pairs, span, head_dim).transpose(1, 2),
                    values[:, :, :span].view(pairs, span, head_dim),
                )
                for keys, values in caches
            ]
            for span in spans
        }

    def __call__(
        self, x: torch.Tensor, positions: torch.Tensor, rope: _Rope, span: int
    ) -> torch.Tensor:
        stack, scratch = self.stack, self.scratch
        rows, kv_heads, group = x.shape[0], stack.kv_heads, scratch.group
        cos, sin = rope.cos[positions][:, None], rope.sin[positions][:, None]
        write = positions.view(rows, 1, 1, 1).expand(rows, kv_heads, 1, stack.head_dim)
        visible = torch.arange(span, device=x.device) <= positions[:, None]
        mask = torch.zeros(rows, span, device=x.device).masked_fill_(  # float32, as the scores
            ~visible, -torch.inf
        )
        mask = mask[:, None, None].expand(rows, kv_heads, group, span).reshape(-1, group, span)
        for layer, (keys, values), (read_keys, read_values) in zip(
            stack.layers, self.caches, self.read[span], strict=True
        ):
            q = scratch.project(stack, layer, x, cos, sin)
            keys.scatter_(2, write, self.new_keys)
            values.scatter_(2, write, self.new_values)
            scores = scratch.scores(q, read_keys, stack.scaling, mask)
            x = layer.o.add_to(x, scratch.attend(scores, read_values))
            x = stack.mlp(layer, x, scratch)
        return stack.rms_norm(x, stack.norm)


class _DepthStep:
    """The depth decoder on one position (x [rows, hidden], every row at the same position;
    the caches hold this frame's positions before it), in few ops: no mask (every cached
    position is visible to every row), the rotary factors of each position and views of the
    caches made once per position."""

    def __init__(
        self,
        depth: nn.Module,
        stack: _Stack,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        positions: int,
    ) -> None:
        self.stack = stack
        self.scratch = scratch = _Scratch(stack, caches[0][0])
        device = caches[0][0].device
        rope = _Rope(depth, positions, device)
        self.rotary = [(rope.cos[p], rope.sin[p]) for p in range(positions)]
        pairs, head_dim = scratch.pairs, stack.head_dim
        self.at = [  # by position: (where its key and value go, what it attends to) a layer
            [
                (
                    keys[:, :, p],
                    values[:, :, p],
                    keys[:, :, : p + 1].view(pairs, p + 1, head_dim).transpose(1, 2),
                    values[:, :, : p + 1].view(pairs, p + 1, head_dim),
                )
                for keys, values in caches
            ]
            for p in range(positions)
        ]

    def __call__(self, x: torch.Tensor, position: int) -> torch.Tensor | None:
        """The last layer's output (before the final norm); at position 0, only the caches are
        filled (that position's output is never read) and None is returned."""
        stack, scratch = self.stack, self.scratch
        cos, sin = self.rotary[position]
        last = len(stack.layers) - 1
        for index, (layer, (key_at, value_at, keys, values)) in enumerate(
            zip(stack.layers, self.at[position], strict=True)
        ):
            q = scratch.project(stack, layer, x, cos, sin)
            key_at.copy_(scratch.k)
            value_at.copy_(scratch.v)
            if position == 0 and index == last:
                return None
            scores = scratch.scores(q, keys, stack.scaling)
            x = layer.o.add_to(x, scratch.attend(scores, values))
            x = stack.mlp(layer, x, scratch)
        return x
