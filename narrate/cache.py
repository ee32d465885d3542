"""The chunk cache: every synthesized chunk stored under its content id. It is the checkpoint.

Completion is the existence of the object (datatrove/luigi style): a rerun, a resumed pod or a
run with another shard count skips every chunk already here, and identical chunks of different
books are stored once. Writes go through `Storage.put(..., overwrite=False)`, which is atomic
(temp file + rename locally, `if_generation_match=0` on Cloud Storage).

Audio is stored as 16-bit FLAC rather than Mimi codes: every engine (eSpeak has no codes) can
fill it, assembly needs no codec to read it back, it is lossless at the precision of the files
we publish, and it is about half the size of WAV.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf

from narrate.config import SAMPLE_RATE
from narrate.errors import AudioError, first_line
from narrate.records import ChunkAudio
from narrate.storage import Storage

# takes a stopped run could not check before it exited: the next run with the check hears
# them before it synthesizes their chunks again (see narrate.gate)
UNCHECKED = "unchecked/"

MapFunction = Callable[[Callable[[str], object], Iterable[str]], Iterator[object]]


class ChunkCache:
    list_threshold = 16  # ids in one fan-out folder from which listing it beats a stat each

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def name(chunk_id: str) -> str:
        # a two-character fan-out keeps local directories and GCS listings small
        return f"{chunk_id[:2]}/{chunk_id}.flac"

    def has(self, chunk_id: str) -> bool:
        return self.storage.stat(self.name(chunk_id)) is not None

    def missing(self, chunk_ids: Iterable[str], map_: MapFunction = map) -> set[str]:
        """The ids not in the cache. Where many ids share a fan-out folder, one listing of the
        folder replaces their stat calls: on Cloud Storage a window of 2,000 books means ~70k
        stats, or a few hundred list pages. `map_` (an executor's map) runs lookups in parallel.
        """
        by_folder: dict[str, set[str]] = defaultdict(set)
        for chunk_id in chunk_ids:
            by_folder[chunk_id[:2]].add(chunk_id)
        listed = [f for f, ids in by_folder.items() if len(ids) >= self.list_threshold]
        single = sorted(i for f, ids in by_folder.items() if f not in listed for i in ids)
        absent = {i for i, hit in zip(single, map_(self.has, single), strict=True) if not hit}
        for folder, names in zip(listed, map_(self._listing, listed), strict=True):
            absent |= by_folder[folder] - names
        return absent

    def _listing(self, folder: str) -> set[str]:
        return {
            name.rsplit("/", 1)[-1].removesuffix(".flac")
            for name in self.storage.list(f"{folder}/")
        }

    def put(self, chunk: ChunkAudio, *, quality_score: float | None = None, takes: int = 1) -> None:
        """Store a chunk; `quality_score` and `takes` (how many takes the quality check heard
        up to this one) are kept with it for the books rendered from it later."""
        metadata = _metadata(chunk)
        if quality_score is not None:  # a resumed run's book scores read it back
            metadata["qualityScore"] = f"{quality_score:.4f}"
            metadata["qualityTakes"] = str(takes)
        self.storage.put(
            self.name(chunk.chunk_id),
            _flac(chunk.audio),
            content_type="audio/flac",
            metadata=metadata,
            overwrite=False,
        )

    def put_unchecked(self, take: ChunkAudio) -> None:
        """Keep a take its quality check never heard, apart from the cache: it is no chunk's
        audio until a run checks it (`take_unchecked`). A later take replaces it."""
        name = UNCHECKED + self.name(take.chunk_id)
        audio, metadata = _flac(take.audio), _metadata(take)
        self.storage.put(name, audio, content_type="audio/flac", metadata=metadata)

    def unchecked(self) -> set[str]:
        """The chunk ids with a take kept unchecked (one listing: a stop leaves few)."""
        return {
            name.rsplit("/", 1)[-1].removesuffix(".flac") for name in self.storage.list(UNCHECKED)
        }

    def take_unchecked(self, chunk_id: str) -> ChunkAudio | None:
        """The take kept unchecked for `chunk_id`, as the engine returned it; None if it is gone
        or unreadable (the chunk is then synthesized again)."""
        name = UNCHECKED + self.name(chunk_id)
        stored, data = self.storage.stat(name), self.storage.get(name)
        if stored is None or data is None:
            return None
        try:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32")
            metadata = stored.metadata
            take = ChunkAudio(
                chunk_id,
                audio,
                int(metadata["frames"]),
                metadata["stopReason"],  # type: ignore[arg-type]
                int(metadata["seed"]),
                int(metadata["attempts"]),
            )
        except (RuntimeError, KeyError, ValueError):  # damaged: synthesize it again
            self.drop_unchecked(chunk_id)
            return None
        return take if rate == SAMPLE_RATE and audio.ndim == 1 else None

    def drop_unchecked(self, chunk_id: str) -> None:
        self.storage.delete(UNCHECKED + self.name(chunk_id))

    def quality(self, chunk_id: str) -> tuple[float | None, int]:
        """The quality check's score stored with a cached chunk and the takes it needed;
        (None, 1): cached unchecked."""
        stored = self.storage.stat(self.name(chunk_id))
        metadata = stored.metadata if stored else {}
        score, takes = metadata.get("qualityScore"), metadata.get("qualityTakes", "1")
        return (float(score) if score else None), int(takes) if takes.isdigit() else 1

    def get(self, chunk_id: str) -> np.ndarray:
        """The chunk's audio. KeyError if it is not cached; AudioError if its file is not the
        mono FLAC narrate writes (damaged, or written by something else): it is removed first,
        so that the next run synthesizes the chunk again instead of failing its book again."""
        name = self.name(chunk_id)
        data = self.storage.get(name)
        if data is None:
            raise KeyError(chunk_id)
        try:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32")
        except RuntimeError as exc:  # soundfile.LibsndfileError
            problem = f"does not decode ({first_line(exc)})"
        else:
            if rate == SAMPLE_RATE and audio.ndim == 1:
                return audio
            problem = f"is not {SAMPLE_RATE} Hz mono"
        self.storage.delete(name)
        raise AudioError(
            f"cached chunk {chunk_id} {problem}: removed from the cache",
            hint="the next run synthesizes it again",
        )


def _flac(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _metadata(chunk: ChunkAudio) -> dict[str, str]:
    """How the engine made the take: its next take starts from the attempt after these."""
    return {
        "frames": str(chunk.frames),
        "stopReason": chunk.stop_reason,
        "seed": str(chunk.seed),
        "attempts": str(chunk.attempts),
    }
