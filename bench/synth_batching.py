"""What the frame loop buys CSM synthesis, side by side in one run, on the CPU.

1. Speed: a random CSM of CSM-1B's depth (16 backbone + 4 depth decoder layers, 32 codebooks)
   and tiny width, so that per-frame overhead dominates as it does on a GPU. narrate's frame
   loop (narrate.synth.frames) against transformers' `CsmForConditionalGeneration.generate`
   (the engine's previous path, kept here only as the baseline; same top-k 50, temperature
   0.9), at batch 1 and 16. Every row runs exactly `--frames` frames (its text is far longer),
   so both compute the same frames. Targets: loop / generate >= 3x at B=1, >= 2x at B=16;
   loop B=16 / B=1 >= 4x.
2. Frames kept / frames computed on the engine's real path: `narrate run` (its device worker,
   whose frame loop runs across the plan's batches, refilling each freed slot from the next
   batch) on a catalog of one-chunk books of 1.5-12 s, batches of 16. Kept: frames of the
   chunks the run keeps; computed: every slot of every frame step, idle slots included, as
   the worker reports them. Twice: with the tiny model, whose rows end with an end frame after
   about as many frames as their text calls for (target >= 0.95), and with its variant that
   misses its end frame and holds a silence instead (one repeated first code, as CSM-1B does),
   which the loop stops a second into. Then what that stop saves: the same silent rows
   without it (the 3 s runaway guard or the 2x cap end them) / with it, in slot-frames.
   The queue's last rows leave slots idle as they finish (once per run: ~16 slots x ~25
   frames), so the figure rises with the catalog's size: --rows 160 by default.
3. The padding efficiency of a length-sorted plan against input order (planning only).

Every figure is measured `--repeats` times: min / median / max. The last line printed is one
JSON object of the medians. One thread by default: this measures overhead and batching, not
threading, and on a shared CPU extra threads mostly spin.

    python bench/synth_batching.py [--threads 1] [--repeats 3] [--frames 16] [--rows 160]
        [--only-engine-path]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
from narrate.plan import PlannedBook, chunk_books, padding_efficiency, plan_batches
from narrate.records import Book, Chunk
from narrate.synth import BatchTask, load_engine
from narrate.synth.frames import FrameLoop, Row
from narrate.synth.mimi import CODEBOOK_SIZE
from narrate.synth.tiny import Sizes, build_csm, build_tiny_model, build_tokenizer
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


def write_catalog(path: Path, rows: int) -> None:
    """`rows` books of one chunk each, 1.5-12 s of speech, in random length order."""
    rng = random.Random(0)
    lines = []
    for n in range(rows):
        seconds = rng.uniform(1.5, 12.0)
        sentences = SENTENCES[n % len(SENTENCES) :] + SENTENCES * 8  # distinct texts
        text = " ".join(sentences)[: int(seconds * ChunkingConfig().chars_per_second)]
        lines.append(json.dumps({"book_id": f"book-{n:03d}", "text": text.strip()}) + "\n")
    path.write_text("".join(lines))


def engine_path(args: argparse.Namespace, model: Path, catalog: Path) -> dict:
    """`narrate run` on the catalog (one CPU worker, batches of 16, so 16 slots): what its
    worker's frame loop computed (every slot of every frame step, idle slots included) and the
    frames of the chunks it kept, as the worker reports them (its `engine_frames` event)."""
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "narrate.cli", "run", str(catalog)]
        command += ["--model", str(model), "--devices=cpu", f"--cpu-threads={args.threads}"]
        command += ["--batch-size=16", "--no-watermark", "--quality=off", "--format=wav"]
        command += [f"--out={work}/out", f"--cache={work}/cache", f"--report={work}/report.json"]
        done = subprocess.run(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    events = [json.loads(line) for line in done.stderr.splitlines() if line[:1] == b"{"]
    (frames,) = [e for e in events if e["event"] == "engine_frames"]
    return frames


def silence_stop_saving(args: argparse.Namespace, model: Path, catalog: Path) -> list[float]:
    """Slot-frames the catalog costs without the stop on a held silence / with it, through the
    engine's own `stream` (what the worker calls) on the run's plan, in one process: the run
    has no switch for the stop. A count, the same every time: measured once."""
    lines = [json.loads(line) for line in catalog.read_text().splitlines()]
    books = [Book(r["book_id"], n + 1, text=r["text"]) for n, r in enumerate(lines)]
    config = EngineConfig(model=str(model))
    planned = chunk_books(books, chunking=ChunkingConfig(), engine_fingerprint=config.fingerprint())
    chunks = [c for p in planned if isinstance(p, PlannedBook) for c in p.chunks]
    batches = plan_batches(chunks, PlanConfig(batch_size=16))
    engine = load_engine(config, device="cpu")
    build_loop = engine.loops.build

    def computed(stop_on_silence: bool) -> int:
        def loop(slots: int) -> FrameLoop:
            built = build_loop(slots)
            built.silence_limit = engine.guard.silence_frames if stop_on_silence else 1 << 30
            return built

        engine.loops.clear()  # loops are kept by slot count: build them again with this stop
        engine.loops.build = loop
        tasks = deque(BatchTask(n, batch) for n, batch in enumerate(batches))
        feed = SimpleNamespace(next=lambda wait: tasks.popleft() if tasks else None)
        before = engine.slot_frames
        for _ in engine.stream(feed):
            pass
        return engine.slot_frames - before

    ratio = computed(False) / computed(True)
    engine.close()
    return [ratio]


def engine_path_section(args: argparse.Namespace, conditions: str, figures: dict) -> None:
    """Part 2, printed; its figures go into `figures`."""
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.jsonl"
        write_catalog(catalog, args.rows)
        ending = build_tiny_model(Path(tmp) / "ending")
        silent = build_tiny_model(Path(tmp) / "silent", end_frames=False)
        runs = {"ended": [], "missed": []}
        for repeat in range(args.repeats):  # the two models alternate which runs first
            order = ("missed", "ended") if repeat % 2 else ("ended", "missed")
            for name in order:
                runs[name].append(engine_path(args, ending if name == "ended" else silent, catalog))
        saving = silence_stop_saving(args, silent, catalog)
    print(
        f"2. `narrate run`'s worker path, tiny CSM, {args.rows} books of one chunk of 1.5-12 s "
        f"(a length-sorted queue), batches of 16 = 16 slots ({conditions}). Kept: frames of the "
        "kept chunks; computed: every slot of every frame step, idle slots included:"
    )
    for name, label in (
        ("ended", "rows end at their end frame"),
        ("missed", "rows miss their end frame and hold a silence (stopped 1 s into it)"),
    ):
        ratios = [r["kept"] / r["slot_frames"] for r in runs[name]]
        key = "kept_over_computed_engine_path" + ("" if name == "ended" else "_missed_end_frame")
        figures[key] = ratios
        middle = sorted(runs[name], key=lambda r: r["kept"] / r["slot_frames"])[len(ratios) // 2]
        low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
        print(
            f"   {label}: kept / computed min {low:.3f} / median {mid:.3f} / max {high:.3f} "
            f"({middle['kept']} kept of "
            f"{middle['slot_frames']} slot-frames; stop reasons {middle['stops']})"
        )
    figures["silence_stop_saving"] = saving
    print(
        "   the same silent rows without the stop on a held silence (runaway guard at 3 s or the "
        f"2x cap) / with it, slot-frames (engine.stream in one process, a count): {saving[0]:.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16, help="frames per row, speed part")
    parser.add_argument("--rows", type=int, default=160, help="books of the kept/computed part")
    parser.add_argument("--books", type=int, default=300, help="books of the padding comparison")
    parser.add_argument("--only-engine-path", action="store_true", help="only part 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    conditions = f"CPU, {args.threads} thread(s), {args.repeats} repeats"

    if args.only_engine_path:
        figures: dict[str, list[float]] = {}
        engine_path_section(args, conditions, figures)
        print(json.dumps({k: round(statistics.median(v), 3) for k, v in figures.items()}))
        return
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

    engine_path_section(args, conditions, figures)

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
        "b16_over_b1",
        "loop_fps_b1",
        "loop_fps_b16",
        "generate_fps_b1",
        "generate_fps_b16",
        "kept_over_computed_engine_path_missed_end_frame",
        "silence_stop_saving",
        "kept_over_computed_engine_path",
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
