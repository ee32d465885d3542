"""Does post-processing and publishing hide behind synthesis, do books finish throughout the
run, and what does a SIGKILL cost?

Per repeat (side by side, same catalog, same engine, same threads):
1. Synthesis only: a fresh Python process loads the engine (a scaled-down random CSM,
   narrate.synth.tiny.SYNTH_BOUND) and streams every batch of the catalog's plan through it
   (`Engine.stream`, as the run's worker does: one frame loop across batches): timed
   from the process's start to its exit, as the end-to-end run is, so both pay the
   interpreter's start, the imports and the model load.
2. End to end: `narrate run` on the catalog (worker process, cache, assembly, loudness,
   encoding, local publishing). Target: end-to-end / synthesis-only <= 1.10. Also printed: when
   the first book is ready, as a fraction of the run's time (books must finish throughout the
   run, not at its end).
3. Post-processing only: the same run again with `--force` (every chunk cached: assembly,
   loudness, encoding and publishing alone), to show the catalog makes post-processing a real
   share of the work (>= 10 % of synthesis time; `--format mp3` by default, the dearest).
1 and 2 alternate which runs first from one repeat to the next.
On this CPU-only machine post-processing competes with synthesis for the same two cores, so
the end-to-end ratio here is an upper bound of what a GPU node sees.

Once: kill and resume. `narrate run` is SIGKILLed once some chunks are cached, then rerun.
Chunks re-synthesized = dispatched to the worker but not cached when it died; target: no more
than the chunks in flight (two batches' worth per worker: the frame loop's rows and the next
batch's, which take the slots as the first's free).

The watermark is off (--no-watermark): real AudioSeal weights cannot be downloaded here. The
quality check is off (--quality off): random weights never say the text, so every chunk would be
retried; its own cost on a run is measured by `make bench-quality`.

    python bench/pipeline_overlap.py [--books 32] [--batch-size 8] [--format mp3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from synth_batching import SENTENCES

from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
from narrate.plan import PlannedBook, chunk_books, plan_batches
from narrate.records import Book
from narrate.synth import BatchTask, load_engine
from narrate.synth.tiny import SYNTH_BOUND, build_tiny_model


def write_catalog(path: Path, books: int) -> None:
    rng = random.Random(5)
    rows = []
    for i in range(books):
        text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(2, 8)))
        rows.append(Book(f"book-{i:03d}", i + 1, text=text))
    path.write_text(
        "".join(json.dumps({"book_id": b.book_id, "text": b.text}) + "\n" for b in rows)
    )


def synthesis_only(model: Path, manifest: Path, batch_size: int) -> float:
    """Seconds from the start of a process that synthesizes the catalog to its exit."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--synthesize", str(model), str(manifest), str(batch_size)],
        check=True,
    )
    return time.perf_counter() - started


def synthesize(model: Path, manifest: Path, batch_size: int) -> None:
    """Every batch of the catalog's plan through the engine, nothing else (one torch thread,
    as the run's worker has with --cpu-threads 1)."""
    torch.set_num_threads(1)
    lines = manifest.read_text().splitlines()
    books = [
        Book(r["book_id"], n + 1, text=r["text"]) for n, r in enumerate(map(json.loads, lines))
    ]
    engine_config = EngineConfig(model=str(model))
    engine = load_engine(engine_config, device="cpu")
    planned = chunk_books(
        books, chunking=ChunkingConfig(), engine_fingerprint=engine_config.fingerprint()
    )
    chunks = [c for p in planned if isinstance(p, PlannedBook) for c in p.chunks]
    batches = plan_batches(chunks, PlanConfig(batch_size=batch_size))
    tasks = deque(BatchTask(n, batch) for n, batch in enumerate(batches))
    feed = SimpleNamespace(next=lambda wait: tasks.popleft() if tasks else None)
    for _ in engine.stream(feed):  # as the run's worker drives it: one loop across batches
        pass
    engine.close()


def narrate_run(
    workdir: Path, model: Path, manifest: Path, batch_size: int, *extra: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "narrate.cli",
        "run",
        str(manifest),
        "--model",
        str(model),
        "--devices",
        "cpu",
        "--cpu-threads",
        "1",
        "--batch-size",
        str(batch_size),
        "--no-watermark",
        "--quality",
        "off",
        "--out",
        str(workdir / "out"),
        "--cache",
        str(workdir / "cache"),
        "--report",
        str(workdir / "report.json"),
        *extra,
    ]


@dataclass
class Timing:
    wall: float  # the process, start to exit
    first_ready: float  # from the process start to the first book_ready event
    post: float  # from the window_planned event to the last book_ready event
    totals: dict


def timed_run(workdir: Path, model: Path, manifest: Path, batch_size: int, *extra: str) -> Timing:
    started_at, started = time.time(), time.perf_counter()
    done = subprocess.run(
        narrate_run(workdir, model, manifest, batch_size, *extra),
        check=True,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    ready = [e["ts"] for e in events if e["event"] == "book_ready"]
    planned = next(e["ts"] for e in events if e["event"] == "window_planned")
    totals = json.loads((workdir / "report.json").read_text())["totals"]
    return Timing(wall, min(ready) - started_at, max(ready) - planned, totals)


def kill_and_resume(workdir: Path, model: Path, manifest: Path, batch_size: int) -> dict[str, int]:
    events: list[dict] = []
    process = subprocess.Popen(
        narrate_run(workdir, model, manifest, batch_size),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )

    def read_events() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("{"):
                events.append(json.loads(line))

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    cache = workdir / "cache"
    while sum(1 for e in events if e["event"] == "batch_done") < 2:
        time.sleep(0.05)
        if process.poll() is not None:
            sys.exit("the run finished before it could be killed: use more --books")
    process.send_signal(signal.SIGKILL)
    process.wait()
    reader.join(timeout=5)
    dispatched = sum(e["chunks"] for e in events if e["event"] == "batch_started")
    cached = len(list(cache.rglob("*.flac")))
    subprocess.run(
        narrate_run(workdir, model, manifest, batch_size),
        check=True,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    resumed = json.loads((workdir / "report.json").read_text())["totals"]
    return {
        "dispatched_before_kill": dispatched,
        "cached_before_kill": cached,
        "resynthesized": dispatched - cached,
        "resume_synthesized": resumed["chunks_synthesized"],
        "ready_after_resume": resumed["ready"],
    }


def spread(values: list[float], digits: int = 2) -> str:
    """min / median / max."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--synthesize", nargs=3, help=argparse.SUPPRESS)  # synthesis_only's child
    parser.add_argument("--format", default="mp3", choices=["wav", "flac", "mp3", "opus"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.synthesize:
        model, manifest, batch_size = args.synthesize
        return synthesize(Path(model), Path(manifest), int(batch_size))
    fmt = f"--format={args.format}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", sizes=SYNTH_BOUND)
        write_catalog(root / "catalog.jsonl", args.books)
        rows = []
        for repeat in range(args.repeats):
            workdir = root / f"e2e-{repeat}"
            # the two alternate which runs first: a load that falls or rises during a repeat
            # must not favour one side
            if repeat % 2:
                run = timed_run(workdir, model, root / "catalog.jsonl", args.batch_size, fmt)
                synth = synthesis_only(model, root / "catalog.jsonl", args.batch_size)
            else:
                synth = synthesis_only(model, root / "catalog.jsonl", args.batch_size)
                run = timed_run(workdir, model, root / "catalog.jsonl", args.batch_size, fmt)
            post = timed_run(
                workdir, model, root / "catalog.jsonl", args.batch_size, fmt, "--force"
            )
            rows.append((synth, run, post.post))
            print(
                f"  repeat {repeat + 1}: synthesis only {synth:.1f} s, end to end "
                f"{run.wall:.1f} s, first book ready at {run.first_ready:.1f} s, "
                f"post-processing only {post.post:.1f} s"
            )
        totals = rows[0][1].totals
        print(
            f"catalog: {args.books} books, {totals['chunks_synthesized']} chunks, "
            f"{totals['audio_seconds']:.0f} s of audio, batch size {args.batch_size}, "
            f"{args.format}, {os.cpu_count()} CPU cores, {args.repeats} repeats "
            "(min / median / max)"
        )
        print(
            "  post-processing / synthesis-only: "
            f"{spread([post / synth for synth, _, post in rows])} (catalog needs >= 0.10)"
        )
        print(
            "  end-to-end / synthesis-only: "
            f"{spread([run.wall / synth for synth, run, _ in rows])} (target <= 1.10)"
        )
        print(
            "  time to first ready book / run time: "
            f"{spread([run.first_ready / run.wall for _, run, _ in rows])}"
        )
        print(
            "  padding efficiency of the run: "
            f"{spread([run.totals['padding_efficiency'] for _, run, _ in rows], 3)}"
        )
        kill = kill_and_resume(root / "kill", model, root / "catalog.jsonl", args.batch_size)
        in_flight = 2 * args.batch_size
        print(
            f"SIGKILL + resume: {kill['resynthesized']} chunks re-synthesized "
            f"(target <= {in_flight}: the chunks in flight); {json.dumps(kill)}"
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
