"""The frame loops' memory budget (narrate.synth.loops), counted on the CPU with real loops of
the tiny model: what is built, reused, evicted and freed for a given budget."""

from __future__ import annotations

import logging

import pytest
import torch

from narrate.synth.frames import FrameLoop
from narrate.synth.loops import SlotLoops, loop_bytes
from narrate.synth.tiny import build_csm, build_tokenizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model():
    return build_csm(build_tokenizer())


def pool(model, budget_slots: int | None) -> tuple[SlotLoops, list[int]]:
    """Loops within `budget_slots` slots' worth of memory; the list records what is built."""
    built: list[int] = []

    def build(slots: int) -> FrameLoop:
        built.append(slots)
        return FrameLoop(model, slots, temperature=0.9, top_k=50, codebook_size=2048)

    def estimate(slots: int) -> int:
        return loop_bytes(model, slots)

    budget = None if budget_slots is None else estimate(budget_slots)
    return SlotLoops(build, estimate, budget, torch.device("cpu")), built


def test_a_loops_memory_is_its_caches_and_buffers_and_grows_with_its_slots(model) -> None:
    loop = FrameLoop(model, 4, temperature=0.9, top_k=50, codebook_size=2048)
    caches = sum(t.nbytes for layer in loop.caches for t in layer) + loop.codes.nbytes
    assert caches <= loop_bytes(model, 4) <= 1.2 * caches
    assert loop_bytes(model, 8) == 2 * loop_bytes(model, 4)


def test_rows_run_in_a_held_larger_loop_when_their_own_would_not_fit(model) -> None:
    loops, built = pool(model, budget_slots=5)
    four = loops.get(4)
    assert loops.get(1).slots == 1  # 4 + 1 slots fit
    assert loops.get(2) is four  # 4 + 1 + 2 would not: the 4-slot loop runs 2 rows
    assert loops.get(8) is four  # 8 never fits: the largest count that does
    assert built == [4, 1] and loops.held_bytes() <= loops.budget


def test_loops_beyond_the_budget_are_evicted_smallest_first(model, caplog) -> None:
    loops, built = pool(model, budget_slots=6)
    loops.get(1)
    loops.get(2)
    with caplog.at_level(logging.INFO, logger="narrate.synth.loops"):
        loops.get(4)  # 1 + 2 + 4 > 6: the 1-slot loop goes, 2 + 4 fit
    assert sorted(loops) == [2, 4] and built == [1, 2, 4]
    assert loops.held_bytes() <= loops.budget
    assert "evicting the 1-slot loop" in caplog.text


def test_out_of_memory_frees_the_other_loops_before_anything_is_lowered(model, caplog) -> None:
    loops, _ = pool(model, budget_slots=None)  # no budget: only counted
    for slots in (1, 2, 4):
        loops.get(slots)
    assert sorted(loops) == [1, 2, 4]
    with caplog.at_level(logging.WARNING, logger="narrate.synth.loops"):
        assert loops.recover()  # after an out of memory with 4 slots
    assert list(loops) == [4] and "freed 2 other frame loop(s)" in caplog.text
    assert not loops.recover()  # nothing else to free: the caller lowers its slots
    assert len(loops) == 0 and loops.held_bytes() == 0
