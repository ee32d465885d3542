"""Plan a large synthetic catalog and report wall time and peak memory of `narrate plan`.

Target (issue: foundation): a 1,000,000-row Parquet manifest, narratives of 50-2,000 words,
planned in <= 60 s and <= 1.5 GB peak RSS (all planning processes together) on a 2-core
machine. The manifest is written once into bench/out/ and reused by later runs.

    python bench/plan_scale.py [--rows N] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "the a of and to in was he it that his her with as had for she at on by not be but from "
    "which you were all this my they one so said have an been would their there what no when "
    "who could old house river morning captain garden letter window evening sister brother "
    "journey silence kingdom mountain whisper lantern harbour merchant village thunder"
).split()


def synthetic_pool(words: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A long text of sentences (5-25 words, some paragraphs) and the offset of every word."""
    picks = rng.integers(0, len(WORDS), size=words)
    parts: list[str] = []
    offsets = np.empty(words + 1, dtype=np.int64)
    pos = 0
    left_in_sentence = 0
    for i, pick in enumerate(picks):
        word = WORDS[pick]
        if left_in_sentence == 0:
            word = word.capitalize()
            left_in_sentence = int(rng.integers(5, 26))
        left_in_sentence -= 1
        sep = " "
        if left_in_sentence == 0:
            sep = ".\n\n" if rng.random() < 0.15 else ". "
        offsets[i] = pos
        parts.append(word + sep)
        pos += len(word) + len(sep)
    offsets[words] = pos
    return "".join(parts), offsets


def write_manifest(path: Path, rows: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    pool_words = 60_000
    pool, offsets = synthetic_pool(pool_words, rng)
    schema = pa.schema([("book_id", pa.string()), ("text", pa.string())])
    step = 10_000
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            lengths = rng.integers(50, 2001, size=n)
            begins = rng.integers(0, pool_words - 2001, size=n)
            texts = [
                pool[offsets[b] : offsets[b + k]].strip()
                for b, k in zip(begins, lengths, strict=True)
            ]
            ids = [f"book-{start + i:07d}" for i in range(n)]
            writer.write_table(pa.table({"book_id": ids, "text": texts}, schema=schema))


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        total += int(rss.split()[1]) * 1024 if rss else 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.out / f"catalog-{args.rows}.parquet"
    if not manifest.exists():
        started = time.perf_counter()
        write_manifest(manifest.with_suffix(".tmp"), args.rows)
        manifest.with_suffix(".tmp").rename(manifest)
        size_gb = manifest.stat().st_size / 1e9
        print(f"wrote {manifest} ({size_gb:.2f} GB) in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    command = ["plan", str(manifest), "--engine", "preview", "--json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "narrate.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while process.poll() is None:  # planning processes count together: sample the whole tree
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode not in (0, 1):
        sys.exit(f"narrate plan failed ({process.returncode}): {stderr[-2000:]}")
    summary = json.loads(stdout)
    peak_gb = peak / 1e9
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "books",
                    "rows_rejected",
                    "chunks",
                    "characters",
                    "batches",
                    "padding_efficiency",
                )
            }
        )
    )
    print(
        f"plan of {args.rows:,} rows: wall {wall:.1f} s (target <= 60), "
        f"peak RSS {peak_gb:.2f} GB (target <= 1.5), "
        f"{summary['characters'] / wall / 1e6:.1f} M chars/s"
    )


if __name__ == "__main__":
    main()
