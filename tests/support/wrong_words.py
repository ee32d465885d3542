"""An engine that garbles one sentence: the preview engine (eSpeak NG) behind the Engine
protocol, except that chunks holding WRONG_TEXT are spoken as other words on every attempt, as a
model that keeps garbling one sentence would. tests/support/spawn_hook/sitecustomize.py installs
it in processes a test run spawns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import narrate.synth
from narrate.records import Batch, Chunk, ChunkAudio
from narrate.synth import Engine, Turn

WRONG_TEXT = "harbour"


class WrongWordsEngine(Engine):
    """The preview engine, except that chunks holding WRONG_TEXT come out as other words, on
    every attempt (as a model that keeps garbling one sentence would)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.calls: list[dict[str, int]] = []

    def synthesize(
        self,
        batch: Batch,
        *,
        context: Sequence[Turn] = (),
        attempts: Mapping[str, int] | None = None,
    ) -> list[ChunkAudio]:
        spoken = Batch(
            tuple(
                Chunk(c.chunk_id, c.book_id, c.index, "Bananas are yellow and sweet.")
                if WRONG_TEXT in c.text
                else c
                for c in batch.chunks
            )
        )
        return self.engine.synthesize(spoken, context=context, attempts=attempts)

    def close(self) -> None:
        self.engine.close()


def install() -> None:
    """Make narrate.synth.load_engine return WrongWordsEngine around the engine it loads."""
    real_load = narrate.synth.load_engine

    def load_engine(*args: object, **kwargs: object) -> WrongWordsEngine:
        return WrongWordsEngine(real_load(*args, **kwargs))  # type: ignore[arg-type]

    narrate.synth.load_engine = load_engine  # type: ignore[assignment]
