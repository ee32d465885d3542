"""Synthesis engines: a batch of chunks in, one mono 24 kHz waveform per chunk out.

The runner only knows `Engine` and `load_engine`; the engines that implement it (`csm`: Sesame
CSM-1B, `preview`: eSpeak NG) are listed in narrate.synth.registry. A device worker drives its
engine through `Engine.stream`: batches in from a feed, each chunk's audio out as soon as it is
done; an engine without a frame loop to keep busy inherits the default, one `synthesize` call a
batch. Importing this package does not import torch: engines load on demand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from narrate.config import EngineConfig
from narrate.errors import UsageError
from narrate.records import Batch, ChunkAudio
from narrate.synth.registry import engine_spec

if TYPE_CHECKING:
    from narrate.synth.voices import VoiceLibrary


@dataclass(frozen=True)
class Turn:
    """A context turn spoken before the chunk. CSM expects audio on every turn but the last,
    so the CSM engine renders the turn's audio first (once) and puts it in the prompt."""

    speaker: int
    text: str

    @classmethod
    def parse(cls, spec: str) -> Turn:
        """`SPEAKER:TEXT`, e.g. `1:Where were you?`"""
        speaker, sep, text = spec.partition(":")
        if not sep or not speaker.strip().isdigit() or not text.strip():
            raise UsageError(
                f"context turn {spec!r} is not SPEAKER:TEXT", "e.g. --context '1:Hello.'"
            )
        return cls(int(speaker), text.strip())


@dataclass(frozen=True)
class BatchTask:
    """A batch to synthesize, as a feed hands it to `Engine.stream`; `tag` names it in the
    results, `attempts` as for `Engine.synthesize`."""

    tag: int
    batch: Batch
    attempts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Synthesized:
    """Chunks of the batch `tag` done since the last result (one per chunk id, the batch's
    first occurrence); `finished`: every chunk of the batch is done. `slot_frames`: frame
    steps x slots the engine computed since its last result (idle slots included; 0 for an
    engine without a frame loop)."""

    tag: int
    audios: tuple[ChunkAudio, ...]
    finished: bool
    slot_frames: int = 0


class BatchFeed(Protocol):
    def next(self, *, wait: bool) -> BatchTask | None:
        """The next batch. `wait`: block until one comes or the feed ends (None: no more);
        otherwise None at once when none is waiting yet."""
        ...


class Engine(Protocol):
    config: EngineConfig

    def synthesize(
        self,
        batch: Batch,
        *,
        context: Sequence[Turn] = (),
        attempts: Mapping[str, int] | None = None,
    ) -> list[ChunkAudio]:
        """One result per chunk, same order: mono float32 at 24 kHz, or an error.

        `attempts`: a chunk's first attempt number (default 0), the seed being
        `chunk_seed(chunk_id, attempt)`; the run asks for a take that failed the quality check
        again from its next attempt. `ChunkAudio.attempts` is its last attempt number + 1."""
        ...

    def stream(self, feed: BatchFeed) -> Iterator[Synthesized]:
        """Synthesize the feed's batches until it ends, yielding chunks as they are done. This
        default takes one batch at a time (engines inherit it by subclassing Engine); the CSM
        engine keeps one frame loop running across batches instead, taking the next batch
        whenever a slot would otherwise sit idle."""
        while (task := feed.next(wait=True)) is not None:
            audios = unique_audios(self.synthesize(task.batch, attempts=task.attempts))
            yield Synthesized(task.tag, audios, finished=True)

    def close(self) -> None: ...


def unique_audios(audios: Sequence[ChunkAudio]) -> tuple[ChunkAudio, ...]:
    """The first result of each chunk id (a batch may list a chunk twice)."""
    first: dict[str, ChunkAudio] = {}
    for audio in audios:
        first.setdefault(audio.chunk_id, audio)
    return tuple(first.values())


def chunk_seed(chunk_id: str, attempt: int = 0) -> int:
    """The sampling seed of a chunk's attempt: from its id, so reruns reproduce its audio."""
    try:
        base = int(chunk_id[:8], 16)
    except ValueError:
        base = int(hashlib.sha256(chunk_id.encode()).hexdigest()[:8], 16)
    return base + attempt


def load_engine(
    config: EngineConfig,
    *,
    device: str = "cpu",
    voices: VoiceLibrary | None = None,
    compile: bool = False,
) -> Engine:
    """Load the engine `config.engine` once (per worker); `compile` (CUDA graphs of the frame
    step) only matters on CUDA."""
    spec = engine_spec(config.engine)
    return spec.load(config, device=device, voices=voices, compile=compile)
