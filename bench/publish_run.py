"""Publishing inside `narrate run`: the shared upload pool against one upload at a time.

Target (issue #12, deliver 5): a run publishes >= 5x faster with its upload pool than one book
after another, through a proxy that adds 30 ms to every storage request (a pod's round trip to
Cloud Storage), measured on the run's own path: `narrate run` with the preview engine, every
chunk already cached (so the run only assembles, encodes and publishes), to fake-gcs-server.

Each repeat runs the same catalog twice into fresh buckets, side by side: `--upload-workers 1`
(sequential) and `--upload-workers N`. The publish phase is timed from the run's first
`book_ready` event to its last (the steady state: before the first book, both runs wait alike
for planning, the published-or-not lookups and post-processing's imports). Printed: both
times and their ratio, min / median / max, and how busy the machine's cores were during each
publish phase (all processes: narrate, fake-gcs-server, the proxy, anything else): near 100 %
the run is bound by the CPU, not by round trips, and more upload workers cannot help it. A
cached run starts no engine, so it is given every core for post-processing (`--post-workers`,
default: all of them).

    python bench/publish_run.py [--books 200] [--workers 16] [--latency-ms 30] [--repeats 3]
        [--post-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake-gcs-server launcher the tests use

from publish import latency_proxy  # noqa: E402
from support.gcs import fake_gcs_server  # noqa: E402

SENTENCES = [
    "The lamp was lit at dusk.",
    "Nobody came to the door that night.",
    "Rain fell softly on the harbour.",
    "A ship came in at noon.",
]


def write_catalog(path: Path, books: int) -> None:
    rows = (
        json.dumps({"book_id": f"book-{i:04d}", "text": f"{SENTENCES[i % 4]} Number {i}."})
        for i in range(books)
    )
    path.write_text("\n".join(rows) + "\n")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuSampler:
    """/proc/stat every 50 ms, so that how busy the cores were can be read for any window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.time(), *cpu_ticks()))

    def busy(self, start: float, stop: float) -> float:
        inside = [s for s in self.samples if start <= s[0] <= stop]
        if len(inside) < 2:
            return float("nan")
        (_, busy0, total0), (_, busy1, total1) = inside[0], inside[-1]
        return (busy1 - busy0) / max(1, total1 - total0)


def narrate_run(manifest: Path, out: str, cache: Path, workdir: Path, *extra: str) -> list[dict]:
    """Run narrate in `workdir` (its local status file lands there); returns its log events."""
    args = [sys.executable, "-m", "narrate.cli", "run", str(manifest), "--engine=preview"]
    args += ["--devices=cpu", "--no-watermark", f"--out={out}", f"--cache={cache}", *extra]
    workdir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"narrate run failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


def publish_window(events: list[dict], books: int) -> tuple[float, float]:
    ready = [e["ts"] for e in events if e["event"] == "book_ready"]
    if len(ready) != books:
        raise SystemExit(f"{len(ready)} of {books} books published")
    return min(ready), max(ready)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--post-workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, fake_gcs_server(Path(tmp) / "gcs.log") as server:
        root = Path(tmp)
        manifest, cache = root / "catalog.jsonl", root / "cache"
        write_catalog(manifest, args.books)
        narrate_run(manifest, str(root / "warm"), cache, root / "warm-run")  # fills the cache
        rows = []
        with latency_proxy(server.url, args.latency_ms) as url:
            os.environ["STORAGE_EMULATOR_HOST"] = url
            os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
            for repeat in range(args.repeats):
                times, busy = {}, {}
                for workers in (1, args.workers):
                    out = f"gs://{server.create_bucket()}/audio"
                    where = root / f"run-{repeat}-{workers}"
                    with CpuSampler() as cpu:
                        events = narrate_run(
                            manifest,
                            out,
                            cache,
                            where,
                            f"--upload-workers={workers}",
                            f"--post-workers={args.post_workers}",
                        )
                    start, stop = publish_window(events, args.books)
                    times[workers], busy[workers] = stop - start, cpu.busy(start, stop)
                rows.append((times[1], times[args.workers]))
                print(
                    f"  repeat {repeat + 1}: sequential {times[1]:.2f} s, "
                    f"{args.workers} workers {times[args.workers]:.2f} s, "
                    f"{times[1] / times[args.workers]:.1f}x (cores busy while publishing: "
                    f"{busy[1]:.0%} and {busy[args.workers]:.0%})"
                )
    ratios = sorted(s / c for s, c in rows)
    print(
        f"narrate run publishing {args.books} cached books (preview engine, WAV, "
        f"{args.post_workers} post workers) to fake-gcs-server through a +{args.latency_ms:g} ms "
        f"proxy, {os.cpu_count()} CPU cores, {args.repeats} repeats"
    )
    print(
        f"  speed-up of --upload-workers {args.workers} over 1: min {ratios[0]:.1f}x / median "
        f"{statistics.median(ratios):.1f}x / max {ratios[-1]:.1f}x (target >= 5x)"
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
