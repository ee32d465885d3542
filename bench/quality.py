"""The quality check (narrate/quality.py) on the demo catalog, spoken by the preview engine.

1. False rejections on clean chunks (target <= 1 %), and detections on audio corrupted from
   clean chunks, one row per kind of corruption (target >= 95 % each).
2. The check's speed in x real time per core: seconds of clean audio checked per second of
   this process's CPU time, min / median / max over --repeats passes.

    python bench/quality.py [--every 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the clean and corrupted audio the test uses

from support.corruptions import render_demo, trials  # noqa: E402

from narrate.config import SAMPLE_RATE  # noqa: E402
from narrate.quality import check  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="use every N-th demo chunk")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
