"""`narrate run` arguments shared by the end-to-end tests."""

from __future__ import annotations

import time
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


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:  # a zombie has exited; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_gone_within(pids: list[int], seconds: float) -> None:
    """Wait for the processes `pids` (a killed run's workers) to exit; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its killed run"
        time.sleep(0.2)
