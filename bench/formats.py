"""Lossy formats: does every demo book pass the gate, and what does each format cost?

`narrate run` renders the demo manifest (7 books, 10.4 min of audio) with the preview engine
on the CPU, without the watermark, once per format (wav, flac, mp3, opus), each from an empty
cache and output folder; the formats take turns within each round so that the load of this
shared machine falls on all of them alike. Per format: books ready and failed, and the run's
wall time over the WAV run of the same round (min / median / max over the rounds).
Target: every book ready in every format; MP3 and Opus within 2x of WAV.

    python bench/formats.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo.jsonl"
FORMATS = ("wav", "flac", "mp3", "opus")
TARGET_RATIO = 2.0


def render(fmt: str, folder: Path) -> tuple[float, dict]:
    """Wall seconds of one `narrate run` of the demo, and its totals."""
    args = ["--engine=preview", "--devices=cpu", "--no-watermark", f"--format={fmt}"]
    args += [f"--out={folder / 'out'}", f"--cache={folder / 'cache'}"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "narrate.cli", "run", str(DEMO), *args],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{fmt}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    failed: dict[str, int] = dict.fromkeys(FORMATS, 0)
    for round_no in range(args.rounds):
        for fmt in FORMATS:
            with tempfile.TemporaryDirectory(prefix=f"narrate-bench-{fmt}-") as folder:
                wall, totals = render(fmt, Path(folder))
            seconds[fmt].append(wall)
            failed[fmt] += totals["failed"]
            print(
                f"round {round_no + 1} {fmt:<4} {wall:6.1f} s  ready {totals['ready']} "
                f"failed {totals['failed']}",
                flush=True,
            )
    print(f"demo, preview engine, --devices cpu, no watermark, {args.rounds} rounds")
    for fmt in FORMATS:
        ratios = [s / w for s, w in zip(seconds[fmt], seconds["wav"], strict=True)]
        print(
            f"{fmt:<4} wall {min(seconds[fmt]):.1f} / {statistics.median(seconds[fmt]):.1f} / "
            f"{max(seconds[fmt]):.1f} s (min / median / max); over WAV {min(ratios):.2f} / "
            f"{statistics.median(ratios):.2f} / {max(ratios):.2f}; books failed: {failed[fmt]}"
        )
    lossy = [
        s / w for fmt in ("mp3", "opus") for s, w in zip(seconds[fmt], seconds["wav"], strict=True)
    ]
    verdict = "meets" if max(lossy) <= TARGET_RATIO and not any(failed.values()) else "MISSES"
    print(f"target: every book ready, MP3/Opus <= {TARGET_RATIO:g}x WAV: {verdict}")


if __name__ == "__main__":
    main()
