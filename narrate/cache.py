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
from collections.abc import Iterable

import numpy as np
import soundfile as sf

from narrate.config import SAMPLE_RATE
from narrate.records import ChunkAudio
from narrate.storage import Storage


class ChunkCache:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def name(chunk_id: str) -> str:
        # a two-character fan-out keeps local directories and GCS listings small
        return f"{chunk_id[:2]}/{chunk_id}.flac"

    def has(self, chunk_id: str) -> bool:
        return self.storage.stat(self.name(chunk_id)) is not None

    def missing(self, chunk_ids: Iterable[str]) -> set[str]:
        return {chunk_id for chunk_id in set(chunk_ids) if not self.has(chunk_id)}

    def put(self, chunk: ChunkAudio) -> None:
        buffer = io.BytesIO()
        sf.write(
            buffer, np.clip(chunk.audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16"
        )
        metadata = {
            "frames": str(chunk.frames),
            "stopReason": chunk.stop_reason,
            "seed": str(chunk.seed),
            "attempts": str(chunk.attempts),
        }
        self.storage.put(
            self.name(chunk.chunk_id),
            buffer.getvalue(),
            content_type="audio/flac",
            metadata=metadata,
            overwrite=False,
        )

    def get(self, chunk_id: str) -> np.ndarray:
        data = self.storage.get(self.name(chunk_id))
        if data is None:
            raise KeyError(chunk_id)
        audio, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == SAMPLE_RATE, f"cached chunk {chunk_id} is at {rate} Hz"
        return audio
