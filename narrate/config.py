"""Frozen option sets shared by the stages, and their fingerprints. No I/O here."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from narrate.errors import UsageError

if TYPE_CHECKING:
    from narrate.records import Pause

SAMPLE_RATE = 24_000  # Mimi's rate; every waveform between stages is mono float32 at this rate
FRAME_RATE = 12.5  # Mimi frames per second (80 ms per frame)
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FRAME_RATE)  # 1920
WINDOW = 2048  # CSM positions: context text + context audio + target text + generated frames
# added to the nice value of post-processing threads and quality-check processes: where cores
# are short, the threads that feed the engines run first (the device must not wait)
POST_NICE = 10
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores(cgroup: Path | None = None) -> int:
    """The CPUs this process may use: those it may run on, within its container's CPU limit.
    `os.cpu_count()` is the whole node's count: in a Kubernetes pod limited to 4 CPUs on a
    48-core node it would have started 47 render processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup or CGROUP_ROOT)
    return max(1, min(cores, math.ceil(limit)) if limit else cores)


def _cgroup_cpu_limit(cgroup: Path) -> float | None:
    """The container's CPU limit in CPUs (cgroup v2's cpu.max, else v1's CFS quota); None
    without one."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        return int(quota) / int(period) if int(quota) > 0 else None
    except (ValueError, ZeroDivisionError):  # "max": no limit
        return None


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (dataclasses are expanded)."""
    payload = [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts]
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class EngineConfig:
    """Everything that changes the audio a chunk gets; it is part of every chunk id."""

    engine: str = "csm"  # "csm" | "preview"
    model: str = "sesame/csm-1b"
    temperature: float = 0.9
    top_k: int = 50
    max_audio_ms: int = 30_000

    def fingerprint(self) -> str:
        return fingerprint(self)


@dataclass(frozen=True, eq=False)
class Lexicon:
    """A pronunciation lexicon: (written, spoken) pairs in file order (read and applied by
    narrate.spoken; kept here because ChunkingConfig carries it).

    A written form in lowercase matches whatever its case ("gif" matches "GIF" and "Gif"); one
    with a capital matches only as written ("Hermione"). Whole words only; an entry wins over
    the built-in rules; the longest entry wins where two start at the same word. A match that
    starts with a capital gets a capital ("Colonel" with "colonel -> kernel" reads "Kernel").
    """

    entries: tuple[tuple[str, str], ...] = ()
    source: str = ""  # where it was read from, for messages
    key: str = field(init=False, repr=False)  # content fingerprint: equality and hashing

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", fingerprint(self.entries))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lexicon) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class ChunkingConfig:
    """How text becomes chunks that fit CSM's window.

    The frame cap of a chunk is 2x its expected duration + 1 s (never above max_audio_ms);
    expected duration comes from a speaking rate calibrated on narration (~14 chars/s).
    """

    window: int = WINDOW
    max_audio_ms: int = 30_000
    chars_per_second: float = 14.0
    chars_per_token: float = 3.6  # Llama-3 tokenizer on English prose, used without a tokenizer
    max_text_chars: int = 200_000  # per book; longer narratives are rejected at validation
    # the catalog's pronunciation lexicon (narrate.spoken), applied before chunking: it changes
    # chunk texts, and so the ids of the chunks it changes, and no other
    lexicon: Lexicon | None = None
    # reject rows not in English before synthesis (narrate.language); off for operators whose
    # model speaks other languages
    check_language: bool = True

    def expected_frames(self, chars: int) -> float:
        return chars / self.chars_per_second * FRAME_RATE

    def max_frames(self, chars: int) -> int:
        cap = 2 * self.expected_frames(chars) + FRAME_RATE
        return int(min(cap, self.max_audio_ms / 1000 * FRAME_RATE))

    @property
    def max_chunk_chars(self) -> int:
        """Longest chunk whose frame cap stays under max_audio_ms."""
        seconds = (self.max_audio_ms / 1000 - 1.0) / 2
        return max(20, int(seconds * self.chars_per_second))

    def estimate_tokens(self, text: str) -> int:
        # +4: begin/end of text and the "[speaker]" prefix the processor adds
        return int(len(text) / self.chars_per_token) + 4


@dataclass(frozen=True)
class PlanConfig:
    batch_size: int = 16
    max_batch_positions: int = 16 * WINDOW  # rows x longest row's positions, per batch
    window_books: int = 2000  # books planned together (streaming completion)


def build_configs(
    engine: str,
    model: str,
    batch_size: int,
    window_books: int,
    max_audio_length_ms: int,
    max_text_chars: int,
    lexicon: Lexicon | None = None,
    check_language: bool = True,
    *,
    temperature: float = 0.9,
    top_k: int = 50,
) -> tuple[EngineConfig, ChunkingConfig, PlanConfig]:
    """The option sets of the catalog options (`narrate plan`, `run`, `status`): a batch may
    hold `batch_size` rows of a full window."""
    chunking = ChunkingConfig(
        max_audio_ms=max_audio_length_ms,
        max_text_chars=max_text_chars,
        lexicon=lexicon,
        check_language=check_language,
    )
    plan = PlanConfig(
        batch_size=batch_size,
        max_batch_positions=batch_size * chunking.window,
        window_books=window_books,
    )
    return (
        EngineConfig(engine, model, temperature, top_k, max_audio_length_ms),
        chunking,
        plan,
    )


AUDIO_FORMATS = ("wav", "flac", "mp3", "opus")


@dataclass(frozen=True)
class PostConfig:
    """How a book's chunk waveforms become one published file (see narrate.post)."""

    sentence_gap_ms: int = 250
    paragraph_gap_ms: int = 700
    crossfade_ms: int = 10
    loudness_lufs: float = -18.0
    true_peak_db: float = -1.5
    format: str = "wav"  # one of AUDIO_FORMATS
    mp3_bitrate: int = 64_000
    opus_bitrate: int = 32_000  # Opus is transparent for mono speech well below MP3's rate
    watermark: bool = True
    # None: AudioSeal's model cards (audioseal_wm_16bits / audioseal_detector_16bits, weights
    # from the Hugging Face hub); else a local directory or "GENERATOR.pth,DETECTOR.pth"
    watermark_model: str | None = None
    # room tone (silence) before the first word and after the last: a player's first word is
    # not clipped, and consecutive books do not run into each other
    head_s: float = 0.3
    tail_s: float = 0.5
    # the file's artist tag: the synthetic voice and model (set per book by the run; not part
    # of any hash, the model and voice are in the chunk ids)
    narrator: str = ""

    def pause_ms(self, pause: Pause) -> int:
        """Silence wanted between the speech of two chunks joined with this pause."""
        return {"none": 0, "sentence": self.sentence_gap_ms, "paragraph": self.paragraph_gap_ms}[
            pause
        ]

    def __post_init__(self) -> None:
        if self.format not in AUDIO_FORMATS:
            raise UsageError(
                f"audio format {self.format!r} is not one of {', '.join(AUDIO_FORMATS)}"
            )

    def fingerprint(self) -> str:
        return fingerprint(self)
