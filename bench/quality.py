"""The quality check (narrate/quality.py) on the demo catalog, spoken by the preview engine.

1. False rejections on clean chunks (target <= 1 %), and detections on audio corrupted from
   clean chunks, one row per kind of corruption (target >= 95 % each).
2. The check's speed in x real time per core: seconds of clean audio checked per second of
   this process's CPU time, min / median / max over --repeats passes.
3. Does the check slow a run? `narrate run` end to end on the first --books books of the demo
   catalog with a random CSM (narrate.synth.tiny, scaled up so that synthesis dominates as on a
   GPU), `--quality on` against `--quality off`, run alternately --repeats times, fresh cache
   each time.
   Retries included, as a run has them (`--quality-retries` at its default, 2): random-weight
   audio never says its text, so with the check every chunk is synthesized three times, and
   on / off is the worst case of a check that rejects everything; the retried takes are
   counted and printed with it. Target (without retries): on / off <= 1.10. On this CPU-only
   machine the checking process competes with the CPU worker for the same cores; on a GPU node
   it uses a core the engine leaves idle.

    python bench/quality.py [--every 1] [--repeats 3] [--books 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the clean and corrupted audio the test uses

from support.corruptions import render_demo, trials  # noqa: E402

from narrate.config import SAMPLE_RATE  # noqa: E402
from narrate.quality import check  # noqa: E402
from narrate.synth.tiny import SYNTH_BOUND, build_tiny_model  # noqa: E402

DEMO = ROOT / "manifests" / "demo.jsonl"
# synthesis-bound on a CPU core: per-frame compute well above the run's fixed costs


def figures(values: list[float], digits: int = 2) -> str:
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def end_to_end(books: int, repeats: int) -> None:
    """Section 3: wall seconds of `narrate run` with the check on and off, alternately."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", sizes=SYNTH_BOUND)
        manifest = root / "catalog.jsonl"
        manifest.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:books]))
        walls: dict[str, list[float]] = {"on": [], "off": []}
        retried: list[int] = []  # takes asked again, per run with the check
        totals: dict[str, object] = {}
        for repeat in range(repeats):
            for mode in ("off", "on") if repeat % 2 else ("on", "off"):
                workdir = root / f"{mode}-{repeat}"
                args = [sys.executable, "-m", "narrate.cli", "run", str(manifest)]
                args += ["--model", str(model), "--devices=cpu", "--cpu-threads=1"]
                args += ["--no-watermark", f"--out={workdir / 'out'}", f"--cache={workdir / 'c'}"]
                args += [f"--report={workdir / 'report.json'}"]
                args += ["--quality", mode]
                started = time.perf_counter()
                done = subprocess.run(
                    args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
                walls[mode].append(time.perf_counter() - started)
                if done.returncode not in (0, 1):  # 1: some book failed, which random audio may
                    sys.exit(done.stderr[-2000:])
                if mode == "on":
                    retried.append(done.stderr.count('"event": "chunk_retried"'))
                totals = json.loads((workdir / "report.json").read_text())["totals"]
        ratios = [on / off for on, off in zip(walls["on"], walls["off"], strict=True)]
        print(
            f"end to end, random CSM {SYNTH_BOUND}, {books} demo books, "
            f"{totals['chunks_synthesized']} chunks, "
            f"{totals['audio_seconds']:.0f} s of audio, 1 CPU worker (1 torch thread), "
            f"{os.cpu_count()} cores, retries on (every chunk retried twice: {retried} takes "
            f"asked again), {repeats} repeats, alternating, min / median / max:"
        )
        print(f"  --quality off  {figures(walls['off'], 1)} s")
        print(f"  --quality on   {figures(walls['on'], 1)} s")
        print(f"  on / off       {figures(ratios)}  (with every chunk synthesized 3 times)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="use every N-th demo chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--books", type=int, default=2, help="demo books of the end-to-end runs")
    parser.add_argument(
        "--only-run", action="store_true", help="only section 3 (the end-to-end runs)"
    )
    args = parser.parse_args()
    if args.only_run:
        end_to_end(args.books, args.repeats)
        return

    rendered = render_demo(every=args.every)
    print(f"demo catalog: {len(rendered)} chunks, preview engine (eSpeak NG), 1 process")
    print(f"{'audio':32} {'chunks':>6} {'flagged':>8} {'rate':>7}  target")
    for kind, pairs in trials(rendered).items():
        flagged = [text for text, audio in pairs if not check(audio, SAMPLE_RATE, text).passed]
        target = "<= 1 %" if kind == "clean" else ">= 95 %"
        share = 100 * len(flagged) / len(pairs)
        print(f"{kind:32} {len(pairs):6} {len(flagged):8} {share:6.1f}%  {target}")

    clean = [(r.chunk.text, r.audio) for r in rendered]
    seconds = sum(len(audio) for _, audio in clean) / SAMPLE_RATE
    speeds = []
    for _ in range(args.repeats):
        started = time.process_time()
        for text, audio in clean:
            check(audio, SAMPLE_RATE, text)
        speeds.append(seconds / (time.process_time() - started))
    print(
        f"check speed on {seconds:.0f} s of clean audio, x real time per core (CPU time), "
        f"{args.repeats} passes: min {min(speeds):.0f} / median {statistics.median(speeds):.0f}"
        f" / max {max(speeds):.0f}  (target >= 60)"
    )
    end_to_end(args.books, args.repeats)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
