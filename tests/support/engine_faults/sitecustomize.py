"""Run at start-up by every Python process whose PYTHONPATH starts with this folder: the engines
a test's `narrate run` loads fail as NARRATE_TEST_ENGINE_FAULT says, as a real model can:
`load` (it cannot load: gated, missing, out of memory) or `synthesize` (every chunk fails)."""

from __future__ import annotations

import os

import numpy as np

import narrate.synth
from narrate.errors import ModelError
from narrate.records import Batch, ChunkAudio
from narrate.synth import Engine

FAULT = os.environ.get("NARRATE_TEST_ENGINE_FAULT")


class FailingEngine(Engine):
    def __init__(self, config: object) -> None:
        self.config = config

    def synthesize(self, batch: Batch, **_: object) -> list[ChunkAudio]:
        return [
            ChunkAudio(c.chunk_id, np.zeros(0, np.float32), 0, "failed", 0, error="model diverged")
            for c in batch.chunks
        ]

    def close(self) -> None:
        pass


def load_engine(config: object, **_: object) -> FailingEngine:
    if FAULT == "load":
        raise ModelError("the model cannot load: out of GPU memory", "use a larger GPU")
    return FailingEngine(config)


if FAULT in ("load", "synthesize"):
    narrate.synth.load_engine = load_engine  # type: ignore[assignment]
