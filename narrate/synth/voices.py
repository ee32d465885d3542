"""The voice library: short reference recordings that keep one narrator across chunks and books.

A voice is `voices/NAME/` holding `audio.wav` (24 kHz mono), `voice.json` (its exact transcript
and speaker id) and, once an engine has used it, `codes-<codec>-<fingerprint>.npy` (its Mimi
codes for that codec and that audio, so the encoder runs once per voice, not once per chunk or
per worker).

No torch at import: the planner uses this module to size prompts without loading a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from narrate.atomic import open_regular_file, write_atomic
from narrate.config import SAMPLE_RATE, SAMPLES_PER_FRAME, ChunkingConfig
from narrate.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

MAX_SECONDS = 20.0
AUDIO_FILE = "audio.wav"
META_FILE = "voice.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Voice:
    """One registered voice. `fingerprint` changes when its audio, transcript or speaker does."""

    name: str
    transcript: str
    speaker: int
    audio_path: Path
    text_tokens: int  # estimated: `<bos>[speaker]transcript<eos>`
    frames: int  # Mimi frames of the audio
    fingerprint: str

    @property
    def positions(self) -> int:
        """Window positions the prompt takes in every chunk: its text, its frames, the end frame."""
        return self.text_tokens + self.frames + 1

    def codes_path(self, codec_key: str) -> Path:
        """Where this audio's codes under the codec `codec_key` are cached."""
        return self.audio_path.parent / f"codes-{codec_key}-{self.fingerprint}.npy"

    def save_codes(self, codec_key: str, codes: np.ndarray) -> None:
        """Cache the codes (atomic: workers sharing the library never read half a file)."""
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, codes)
        write_atomic(self.codes_path(codec_key), buffer.getvalue())


class VoiceLibrary:
    """Voices stored under `root/NAME/`."""

    def __init__(self, root: Path = Path("voices")) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{META_FILE}"))

    def get(self, name: str) -> Voice:
        folder = self.root / name
        meta_path = folder / META_FILE
        if not NAME_PATTERN.fullmatch(name) or not meta_path.is_file():
            known = ", ".join(self.names()) or "none"
            raise UsageError(
                f"voice {name!r} is not in the voice library {self.root}/ (known: {known})",
                f"register it: narrate voice add {name} --audio FILE.wav --text 'its transcript'",
            )
        import soundfile as sf

        audio_path = folder / AUDIO_FILE
        hint = (
            f"register it again: narrate voice add {name} --audio FILE.wav --text '...' --replace"
        )
        try:
            meta = json.loads(_read_regular(meta_path, MAX_META_BYTES).decode("utf-8"))
            transcript, speaker = meta["transcript"], int(meta["speaker"])
            if not isinstance(transcript, str):
                raise TypeError("transcript is not a string")
            audio = _read_regular(audio_path, MAX_AUDIO_BYTES)
            samples = sf.info(io.BytesIO(audio)).frames
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            # a damaged voice.json, a FIFO or device in place of a file, audio that does not
            # decode: one clear error, never a traceback or a read that blocks forever
            detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
            raise UsageError(
                f"voice {name!r} in {self.root}/ is unreadable: {detail}", hint
            ) from None
        return Voice(
            name=name,
            transcript=transcript,
            speaker=speaker,
            audio_path=audio_path,
            text_tokens=ChunkingConfig().estimate_tokens(transcript),
            frames=math.ceil(samples / SAMPLES_PER_FRAME),
            fingerprint=_fingerprint(audio, transcript, speaker),
        )

    def add(
        self,
        name: str,
        audio_path: Path,
        text: str,
        speaker: int = 0,
        *,
        replace: bool = False,
    ) -> Voice:
        """Register a voice: mixes down to mono and resamples to 24 kHz when needed."""
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(
                f"voice name {name!r} is not usable as a folder name",
                "use letters, digits, '_', '-' or '.', at most 64 characters",
            )
        transcript = " ".join(text.split())
        if not transcript:
            raise UsageError(f"voice {name!r}: the transcript is empty", "pass --text")
        folder = self.root / name
        if (folder / META_FILE).exists() and not replace:
            raise UsageError(f"voice {name!r} already exists in {self.root}/", "pass --replace")
        audio = _load_mono_24k(Path(audio_path))
        seconds = len(audio) / SAMPLE_RATE
        if seconds > MAX_SECONDS:
            raise UsageError(
                f"voice {name!r}: {audio_path} lasts {seconds:.1f} s, over {MAX_SECONDS:.0f} s",
                "trim it: a prompt takes window positions from every chunk",
            )
        if not len(audio) or float(abs(audio).max()) < 1e-4:
            raise UsageError(f"voice {name!r}: {audio_path} is silent")

        import soundfile as sf

        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("codes-*.npy"):  # codes of the audio being replaced
            stale.unlink()
        wav = io.BytesIO()
        sf.write(wav, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        write_atomic(folder / AUDIO_FILE, wav.getvalue())
        meta = {"name": name, "transcript": transcript, "speaker": int(speaker)}
        write_atomic(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
        return self.get(name)


MAX_META_BYTES = 1 << 20
MAX_AUDIO_BYTES = 256 << 20  # minutes of 24 kHz audio; a voice prompt is seconds


def _read_regular(path: Path, max_bytes: int) -> bytes:
    try:
        with open_regular_file(path, max_bytes) as stream:
            return stream.read()
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: {exc.strerror or exc}") from None


def _fingerprint(audio: bytes, transcript: str, speaker: int) -> str:
    digest = hashlib.sha256(audio)
    digest.update(json.dumps([transcript, int(speaker)]).encode())
    return digest.hexdigest()[:24]


def _load_mono_24k(path: Path):  # -> np.ndarray (float32)
    import numpy as np
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:  # soundfile raises LibsndfileError (a RuntimeError)
        raise UsageError(f"cannot read audio {path}: {exc}", "give a WAV or FLAC file") from None
    mono = audio.mean(axis=1)  # a stereo reference is mixed down, not rejected
    if rate != SAMPLE_RATE:
        import torch
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)
