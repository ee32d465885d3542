"""What batching buys the CSM engine, and what length-sorted planning buys batching.

1. A scaled-down random CSM (backbone hidden 512 x 4 layers, depth decoder 256 x 2 layers; the
   tiny model's hand-set length head, so rows end with an end frame after about as many frames
   as their text calls for, like CSM-1B) goes through the real engine on CPU: audio frames
   generated per second at batch 1, 4 and 16, and the ratio batch 16 / batch 1 (target >= 4x).
2. The padding efficiency (useful / computed window positions) of a length-sorted plan against
   the same chunks batched in input order, for a catalog of mixed-length books.

One thread by default: this measures batching, not threading, and on a shared CPU extra threads
mostly spin. `--threads N` to change it.

    python bench/synth_batching.py [--threads 1] [--books 300]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

import torch

from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
from narrate.plan import padding_efficiency, plan_batches
from narrate.records import Batch, Chunk
from narrate.synth import load_engine
from narrate.synth.tiny import Sizes, build_tiny_model
from narrate.text import chunk_book

SCALED = Sizes(hidden=512, layers=4, heads=8, depth_hidden=256, depth_layers=2, depth_heads=4)
SENTENCES = [
    "The river ran past the old mill at dawn.",
    "Mr. Hale wrote to his sister every evening.",
    "Nobody in the village had seen the captain.",
    "She opened the letter, read it, and laughed.",
    "Rain fell softly on the harbour all night.",
    "At noon the bells rang out across the valley.",
]
CHUNKING = ChunkingConfig()


def chunk(text: str, n: int) -> Chunk:
    chunk_id = hashlib.sha256(f"{n}|{text}".encode()).hexdigest()[:24]
    return Chunk(chunk_id, "bench", n, text, max_frames=CHUNKING.max_frames(len(text)))


def frames_per_second(engine, batch_size: int, rows: int) -> tuple[float, int, int]:
    """Synthesize `rows` similar chunks in batches of `batch_size`: (frames/s, frames, retries)."""
    chunks = [chunk(SENTENCES[n % len(SENTENCES)], n) for n in range(rows)]
    frames = retries = 0
    started = time.perf_counter()
    for start in range(0, rows, batch_size):
        for audio in engine.synthesize(Batch(tuple(chunks[start : start + batch_size]))):
            frames += audio.frames
            retries += audio.attempts - 1
    return frames / (time.perf_counter() - started), frames, retries


def catalog_chunks(books: int, seed: int = 0) -> list[Chunk]:
    """Chunks of `books` narratives of 50-2,000 words, in catalog (input) order."""
    rng = random.Random(seed)
    chunks: list[Chunk] = []
    for book in range(books):
        words = rng.randint(50, 2000)
        sentences = [rng.choice(SENTENCES) for _ in range(words // 8)]
        chunks += chunk_book(
            f"book-{book}", " ".join(sentences), config=CHUNKING, engine_fingerprint="bench"
        )
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--books", type=int, default=300, help="books of the padding comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "scaled-csm", sizes=SCALED)
        engine = load_engine(EngineConfig(model=str(model)), device="cpu")
        frames_per_second(engine, 1, 1)  # warm-up
        print(
            f"scaled random CSM on CPU ({args.threads} thread(s)): backbone {SCALED.hidden} x "
            f"{SCALED.layers}, depth decoder {SCALED.depth_hidden} x {SCALED.depth_layers}"
        )
        speeds = {}
        for batch_size, rows in ((1, 4), (4, 8), (16, 16)):
            speed, frames, retries = frames_per_second(engine, batch_size, rows)
            speeds[batch_size] = speed
            print(
                f"  batch {batch_size:>2}: {speed:7.1f} audio frames/s "
                f"({frames} frames in {rows} chunks, {retries} retries)"
            )
        engine.close()
    ratio = speeds[16] / speeds[1]
    print(
        f"  batch 16 / batch 1: {ratio:.2f}x (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})"
    )

    chunks = catalog_chunks(args.books)
    plan = PlanConfig()
    sorted_efficiency = padding_efficiency(plan_batches(chunks, plan))
    input_efficiency = padding_efficiency(plan_batches(chunks, plan, sort=False))
    print(
        f"padding efficiency, {len(chunks):,} chunks of {args.books} books in batches of "
        f"{plan.batch_size}: length-sorted {sorted_efficiency:.1%}, input order "
        f"{input_efficiency:.1%}"
    )


if __name__ == "__main__":
    main()
