"""Rebuild manifests/demo.parquet from manifests/demo.jsonl, so the two demos never drift.

Run after editing demo.jsonl: `.venv/bin/python manifests/make_demo_parquet.py`.
tests/test_manifest.py checks that both files hold the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

# The column types a Parquet manifest uses (manifests/README.md).
SCHEMA = pa.schema(
    [
        ("book_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("speaker", pa.int64()),
        ("language", pa.string()),
    ]
)


def main(source: Path = HERE / "demo.jsonl", target: Path = HERE / "demo.parquet") -> None:
    lines = source.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), target, compression="zstd")
    print(f"wrote {len(rows)} rows to {target}")


if __name__ == "__main__":
    main()
