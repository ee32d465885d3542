"""`narrate run` arguments shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path


def preview_args(workdir: Path, *extra: str) -> list[str]:
    """A fast local run: eSpeak NG, one CPU worker, no watermark, outputs under `workdir`."""
    return [
        "--engine=preview",
        "--devices=cpu",
        "--no-watermark",
        f"--out={workdir / 'out'}",
        f"--cache={workdir / 'cache'}",
        *extra,
    ]
