"""The engine's frame loops on one device, held within one memory budget.

A loop (frames.py) owns KV caches for its slots (CSM-1B in bf16: about 67 MB a slot for the
backbone's 2048-position window) and, with CUDA graphs, its captures. Loops are built once
per slot count and kept for the next batches; kept without a bound, loops of 1, 2, 4 ... 64
slots would hold 127 slots' caches for the whole run. Here:

- each loop's memory is counted: its caches and buffers (`loop_bytes`), or on CUDA what
  building it took from the device, if more (the captures' memory pools);
- rows asked for a slot count with no loop run in a held loop of at least as many slots when
  a new loop would not fit beside the held ones (two retries run in the 64-slot loop rather
  than evicting it);
- otherwise, loops are evicted smallest first until the new one fits; a slot count the budget
  cannot hold even alone is lowered to the largest power of two that it can;
- out of memory (`recover`): every other loop is freed and the same slot count runs again;
  only when nothing else was held does the engine lower its slot count.

Every eviction and recovery is logged. No budget (the CPU, by default): loops are only counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from narrate.synth.frames import FrameLoop

log = logging.getLogger(__name__)

LOOP_MEMORY_SHARE = 0.6  # of the device memory free once the model is loaded (Mimi: the rest)


def loop_bytes(model: nn.Module, slots: int) -> int:
    """What a loop of `slots` slots allocates for its state: both stacks' KV caches, the codes
    of every row's window, and the one-position steps' buffers."""
    config, depth = model.config, model.depth_decoder.config
    item = model.lm_head.weight.element_size()

    def cache(stack_config, window: int) -> int:
        head_dim = getattr(stack_config, "head_dim", None) or (
            stack_config.hidden_size // stack_config.num_attention_heads
        )
        kv = stack_config.num_key_value_heads * head_dim
        return stack_config.num_hidden_layers * 2 * slots * kv * window * item

    window = config.max_position_embeddings
    codes = slots * window * config.num_codebooks * 8
    steps = 2 * slots * (config.intermediate_size + depth.intermediate_size) * item
    return cache(config, window) + cache(depth, depth.max_position_embeddings) + codes + steps


def device_budget(device: torch.device) -> int | None:
    """The default budget: a share of the free memory of a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * LOOP_MEMORY_SHARE)


class SlotLoops:
    """The loops by slot count, within `budget` bytes (None: unbounded)."""

    def __init__(
        self,
        build: Callable[[int], FrameLoop],
        estimate: Callable[[int], int],
        budget: int | None,
        device: torch.device,
    ) -> None:
        self.build, self.estimate, self.budget, self.device = build, estimate, budget, device
        self.loops: dict[int, FrameLoop] = {}
        self.held: dict[int, int] = {}  # bytes by slot count
        self.overhead = 1.0  # measured / estimated, the largest seen (CUDA graphs' pools)
        self.last = 0  # the slot count of the last loop handed out (or being built)

    def __iter__(self) -> Iterator[int]:
        return iter(self.loops)

    def __len__(self) -> int:
        return len(self.loops)

    def held_bytes(self) -> int:
        return sum(self.held.values())

    def need(self, slots: int) -> int:
        return int(self.estimate(slots) * self.overhead)

    def get(self, slots: int) -> FrameLoop:
        """A loop for up to `slots` rows: that count's own, a larger held one, or the largest
        that the budget holds (evicting smaller loops first)."""
        self.last = slots
        if slots in self.loops:
            return self.loops[slots]
        budget = self.budget
        if budget is not None and self.held_bytes() + self.need(slots) > budget:
            larger = [held for held in self.loops if held > slots]
            if larger:
                self.last = min(larger)
                return self.loops[self.last]
            while slots > 1 and self.need(slots) > budget:
                slots //= 2
            if slots in self.loops:
                self.last = slots
                return self.loops[slots]
            self._evict_for(self.need(slots), budget)
        self.last = slots
        return self._build(slots)

    def _evict_for(self, need: int, budget: int) -> None:
        for held in sorted(self.loops):
            if self.held_bytes() + need <= budget:
                return
            log.info(
                "frame loops: evicting the %d-slot loop (%.2f GB) to stay within %.2f GB",
                held,
                self.held[held] / 2**30,
                budget / 2**30,
            )
            self.drop(held)

    def _build(self, slots: int) -> FrameLoop:
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_reserved(self.device) if cuda else 0
        loop = self.build(slots)
        estimate = self.estimate(slots)
        measured = torch.cuda.memory_reserved(self.device) - before if cuda else 0
        self.held[slots] = max(estimate, measured)
        self.overhead = max(self.overhead, self.held[slots] / estimate)
        self.loops[slots] = loop
        return loop

    def drop(self, slots: int) -> None:
        self.loops.pop(slots, None)
        self.held.pop(slots, None)

    def clear(self) -> None:
        self.loops.clear()
        self.held.clear()
        self._release()

    def recover(self) -> bool:
        """After out of memory with the last slot count: free every other loop and say whether
        anything was freed (then the same count runs again); if nothing was, free them all."""
        others = [slots for slots in self.loops if slots != self.last]
        if not others:
            self.clear()
            return False
        freed = sum(self.held[slots] for slots in others)
        for slots in others:
            self.drop(slots)
        self._release()
        log.warning(
            "out of device memory with %d slots: freed %d other frame loop(s) (%.2f GB), "
            "trying %d slots again",
            self.last,
            len(others),
            freed / 2**30,
            self.last,
        )
        return True

    def _release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
