"""What the frame loop buys CSM synthesis, side by side in one run, on the CPU.

1. Speed: a random CSM of CSM-1B's depth (16 backbone + 4 depth decoder layers, 32 codebooks)
   and tiny width, so that per-frame overhead dominates as it does on a GPU. narrate's frame
   loop (narrate.synth.frames) against transformers' `CsmForConditionalGeneration.generate`
   (the engine's previous path, kept here only as the baseline; same top-k 50, temperature
   0.9), at batch 1 and 16. Every row runs exactly `--frames` frames (its text is far longer),
   so both compute the same frames. Targets: loop / generate >= 3x at B=1, >= 2x at B=16;
   loop B=16 / B=1 >= 4x.
2. Frames kept / frames computed: the tiny model (whose rows end with an end frame after about
   as many frames as their text calls for) through the loop with 16 slots and slot refill,
   on a catalog of rows of 1.5-12 s. Kept: frames before each row's end frame; computed: every
   frame a slot ran while it held a row (including frames past an end the host had not read
   yet). Slot occupancy (computed / slots x frame steps) shows the drain at the queue's end.
   Target: kept / computed >= 0.95.
3. The padding efficiency of a length-sorted plan against input order (planning only).

Every figure is measured `--repeats` times: min / median / max. The last line printed is one
JSON object of the medians. One thread by default: this measures overhead and batching, not
threading, and on a shared CPU extra threads mostly spin.

    python bench/synth_batching.py [--threads 1] [--repeats 3] [--frames 16] [--rows 48]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import deque
from collections.abc import Callable

import torch

from narrate.config import ChunkingConfig, PlanConfig
from narrate.plan import padding_efficiency, plan_batches
from narrate.records import Chunk
from narrate.synth.frames import FrameLoop, Row
from narrate.synth.guards import end_frame
from narrate.synth.mimi import CODEBOOK_SIZE
from narrate.synth.tiny import Sizes, build_csm, build_tokenizer
from narrate.text import chunk_book

DEEP_NARROW = Sizes(hidden=64, layers=16, heads=4, depth_hidden=64, depth_layers=4, depth_heads=4)
TEMPERATURE, TOP_K = 0.9, 50
SENTENCES = [
    "The river ran past the old mill at dawn.",
    "Mr. Hale wrote to his sister every evening.",
    "Nobody in the village had seen the captain.",
    "She opened the letter, read it, and laughed.",
    "Rain fell softly on the harbour all night.",
    "At noon the bells rang out across the valley.",
]


def prompt(tokenizer, model, text: str) -> torch.Tensor:
    ids = tokenizer(f"<|begin_of_text|>[0]{text}<|end_of_text|>")["input_ids"]
    with torch.inference_mode():
        return model.embed_text_tokens(torch.tensor(ids))


def drain(model, rows: list[Row], slots: int) -> list:
    """Every row through a frame loop of `slots` slots; the finished rows."""
    loop = FrameLoop(
        model, slots, temperature=TEMPERATURE, top_k=TOP_K, codebook_size=CODEBOOK_SIZE
    )
    return [f for group in loop.run(deque(rows)) for f in group]


def generate(model, embeds: torch.Tensor, frames: int) -> None:
    with torch.inference_mode():
        model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=frames,
            do_sample=True,
            top_k=TOP_K,
            temperature=TEMPERATURE,
            depth_decoder_do_sample=True,
            depth_decoder_top_k=TOP_K,
            depth_decoder_temperature=TEMPERATURE,
        )


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f}"


def speed(args: argparse.Namespace, tokenizer) -> dict[str, list[float]]:
    model = build_csm(tokenizer, DEEP_NARROW)
    long_text = " ".join(SENTENCES * 4)  # ~1,000 characters: no row ends within --frames
    embeds = prompt(tokenizer, model, long_text)
    figures: dict[str, list[float]] = {}
    for batch in (1, 16):
        rows = [Row(n, embeds, args.frames, seed=n) for n in range(batch)]
        batched = embeds[None].expand(batch, -1, -1).contiguous()
        generate(model, batched, 2)  # warm-up
        drain(model, rows, batch)
        for _ in range(args.repeats):
            frames = batch * args.frames
            loop = timed(lambda: drain(model, rows, batch))  # noqa: B023
            baseline = timed(lambda: generate(model, batched, args.frames))  # noqa: B023
            figures.setdefault(f"loop_fps_b{batch}", []).append(frames / loop)
            figures.setdefault(f"generate_fps_b{batch}", []).append(frames / baseline)
            figures.setdefault(f"loop_over_generate_b{batch}", []).append(baseline / loop)
    loops_b1, loops_b16 = figures["loop_fps_b1"], figures["loop_fps_b16"]
    figures["b16_over_b1"] = [b16 / b1 for b1, b16 in zip(loops_b1, loops_b16, strict=True)]
    return figures


def kept(args: argparse.Namespace, tokenizer) -> dict[str, list[float]]:
    model = build_csm(tokenizer)  # the tiny model: rows end after about chars / 1.12 frames
    chunking, rng = ChunkingConfig(), random.Random(0)
    rows = []
    for n in range(args.rows):
        seconds = rng.uniform(1.5, 12.0)
        text = " ".join(SENTENCES * 8)[: int(seconds * chunking.chars_per_second)]
        cap = chunking.max_frames(len(text))
        rows.append(Row(n, prompt(tokenizer, model, text), cap, seed=n))
    rows.sort(key=lambda row: len(row.embeds) + row.cap, reverse=True)  # as the engine does
    figures: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        steps = []
        loop = FrameLoop(
            model, 16, temperature=TEMPERATURE, top_k=TOP_K, codebook_size=CODEBOOK_SIZE
        )
        real_step = loop.step
        loop.step = lambda span: (steps.append(1), real_step(span))  # noqa: B023
        finished = [f for group in loop.run(deque(rows)) for f in group]
        useful = 0
        for row in finished:
            end = end_frame(row.codes)
            useful += len(row.codes) if end is None else end
        figures.setdefault("kept_over_computed", []).append(useful / loop.frames_computed)
        figures.setdefault("slot_occupancy", []).append(loop.frames_computed / (16 * len(steps)))
        figures.setdefault("frames_kept", []).append(useful)
        figures.setdefault("frames_computed", []).append(loop.frames_computed)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16, help="frames per row, speed part")
    parser.add_argument("--rows", type=int, default=48, help="rows of the kept/computed catalog")
    parser.add_argument("--books", type=int, default=300, help="books of the padding comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    conditions = f"CPU, {args.threads} thread(s), {args.repeats} repeats"

    figures = speed(args, tokenizer)
    print(
        f"1. random CSM, backbone {DEEP_NARROW.hidden} x {DEEP_NARROW.layers} layers, depth "
        f"decoder {DEEP_NARROW.depth_hidden} x {DEEP_NARROW.depth_layers}, {args.frames} frames "
        f"a row ({conditions}); audio frames/s:"
    )
    for batch in (1, 16):
        print(f"   B={batch:<2}  frame loop  {spread(figures[f'loop_fps_b{batch}'])}")
        print(f"         generate    {spread(figures[f'generate_fps_b{batch}'])}")
        print(f"         loop / generate  {spread(figures[f'loop_over_generate_b{batch}'])}x")
    print(f"   frame loop B=16 / B=1  {spread(figures['b16_over_b1'])}x")

    occupancy = kept(args, tokenizer)
    figures.update(occupancy)
    print(
        f"2. tiny CSM, {args.rows} rows of 1.5-12 s, 16 slots with refill, live mask read every "
        f"4 frames ({conditions}):"
    )
    print(f"   frames kept / computed  {spread(occupancy['kept_over_computed'])}")
    print(
        f"   ({statistics.median(occupancy['frames_kept']):.0f} kept of "
        f"{statistics.median(occupancy['frames_computed']):.0f} computed); slot occupancy "
        f"{spread(occupancy['slot_occupancy'])}"
    )

    chunks = catalog_chunks(args.books)
    plan = PlanConfig()
    sorted_efficiency = padding_efficiency(plan_batches(chunks, plan))
    input_efficiency = padding_efficiency(plan_batches(chunks, plan, sort=False))
    print(
        f"3. padding efficiency, {len(chunks):,} chunks of {args.books} books in batches of "
        f"{plan.batch_size}: length-sorted {sorted_efficiency:.1%}, input order "
        f"{input_efficiency:.1%}"
    )
    keys = [
        "loop_over_generate_b1",
        "loop_over_generate_b16",
        "kept_over_computed",
        "b16_over_b1",
        "loop_fps_b1",
        "loop_fps_b16",
        "generate_fps_b1",
        "generate_fps_b16",
        "slot_occupancy",
    ]
    medians = {key: round(statistics.median(figures[key]), 3) for key in keys}
    print(json.dumps({**medians, "padding_efficiency_sorted": round(sorted_efficiency, 3)}))


def catalog_chunks(books: int, seed: int = 0) -> list[Chunk]:
    """Chunks of `books` narratives of 50-2,000 words, in catalog (input) order."""
    rng = random.Random(seed)
    chunks: list[Chunk] = []
    for book in range(books):
        words = rng.randint(50, 2000)
        sentences = [rng.choice(SENTENCES) for _ in range(words // 8)]
        chunks += chunk_book(
            f"book-{book}", " ".join(sentences), config=ChunkingConfig(), engine_fingerprint="bench"
        )
    return chunks


if __name__ == "__main__":
    main()
