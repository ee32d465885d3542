"""The preview engine: eSpeak NG, for demos on CPU-only machines and cheap catalog dry runs.

eSpeak NG comes from PyPI `espeakng-loader` (the library and its data, no system package), or
else from the system (`apt-get install espeak-ng`). It is driven through its C API with ctypes
in synchronous mode: `espeak_Synth` returns once the text is spoken, and the samples (int16 at
22,050 Hz) arrive through the synth callback. They are resampled to 24 kHz mono float32.
Speaker ids pick eSpeak voice variants, so two speakers sound different; voice prompts need
CSM and are ignored here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from narrate.config import SAMPLE_RATE, EngineConfig
from narrate.errors import ModelError
from narrate.records import Batch, ChunkAudio
from narrate.synth import Turn, chunk_seed
from narrate.synth.guards import SAMPLES_PER_FRAME

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1  # espeak_PARAMETER: words per minute
WORDS_PER_MINUTE = 165  # about the 14 characters a second the planner expects
VARIANTS = ("m3", "f3", "m1", "f1", "m7", "f4", "m2", "f2")  # speaker id -> voice variant
INSTALL_HINT = "pip install espeakng-loader (bundles eSpeak NG), or apt-get install espeak-ng"

SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass
class _ESpeak:
    """The process-wide eSpeak NG library (it keeps global state, hence one instance and a lock)."""

    library: ctypes.CDLL
    sample_rate: int
    lock: threading.Lock


_instance: _ESpeak | None = None


def _espeak() -> _ESpeak:
    global _instance
    if _instance is None:
        library, data_path = _find_library()
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        rate = library.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise ModelError(
                "eSpeak NG failed to initialize (its data files were not found)", INSTALL_HINT
            )
        library.espeak_SetSynthCallback.argtypes = [SynthCallback]
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        _instance = _ESpeak(library, rate, threading.Lock())
    return _instance


def _find_library() -> tuple[ctypes.CDLL, bytes | None]:
    try:
        import espeakng_loader

        return ctypes.CDLL(
            espeakng_loader.get_library_path()
        ), espeakng_loader.get_data_path().encode()
    except (ImportError, OSError, RuntimeError):
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise ModelError("eSpeak NG is not installed (needed by --engine preview)", INSTALL_HINT)
    try:
        return ctypes.CDLL(name), None  # the system library knows where its data is
    except OSError as exc:
        raise ModelError(f"cannot load eSpeak NG ({name}): {exc}", INSTALL_HINT) from None


class PreviewEngine:
    def __init__(self, config: EngineConfig, espeak: _ESpeak) -> None:
        self.config = config
        self.espeak = espeak

    @classmethod
    def load(cls, config: EngineConfig) -> PreviewEngine:
        return cls(config, _espeak())

    def synthesize(self, batch: Batch, *, context: Sequence[Turn] = ()) -> list[ChunkAudio]:
        """Chunk by chunk (eSpeak is fast and single-threaded); context turns are not spoken."""
        return [self._speak(c.chunk_id, c.text, c.speaker) for c in batch.chunks]

    def close(self) -> None:
        """Nothing to free: the library stays loaded for the process."""

    def _speak(self, chunk_id: str, text: str, speaker: int) -> ChunkAudio:
        samples = self.speak(text, speaker)
        audio = _resample(samples, self.espeak.sample_rate)
        frames = math.ceil(len(audio) / SAMPLES_PER_FRAME)  # padded to whole Mimi frames
        audio = np.pad(audio, (0, frames * SAMPLES_PER_FRAME - len(audio)))
        error = None if frames else "eSpeak produced no audio"
        return ChunkAudio(
            chunk_id=chunk_id,
            audio=audio,
            frames=frames,
            stop_reason="eos" if frames else "failed",
            seed=chunk_seed(chunk_id),
            error=error,
        )

    def speak(self, text: str, speaker: int = 0) -> np.ndarray:
        """int16 samples at eSpeak's own rate."""
        pieces: list[np.ndarray] = []

        def collect(wav: ctypes.POINTER(ctypes.c_short), count: int, _events: int) -> int:
            if wav and count > 0:
                pieces.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0  # 0: go on

        callback = SynthCallback(collect)  # kept referenced until espeak_Synth returns
        data = text.encode("utf-8") + b"\0"
        voice = f"en+{VARIANTS[speaker % len(VARIANTS)]}".encode()
        library = self.espeak.library
        with self.espeak.lock:
            library.espeak_SetSynthCallback(callback)
            library.espeak_SetVoiceByName(voice)
            library.espeak_SetParameter(ESPEAK_RATE, WORDS_PER_MINUTE, 0)
            status = library.espeak_Synth(
                data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
        if status != 0:
            raise ModelError(f"eSpeak NG failed to speak (error {status})", INSTALL_HINT)
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    audio = torch.from_numpy(samples.astype(np.float32) / 32768.0)
    if rate != SAMPLE_RATE and len(audio):
        audio = AF.resample(audio, rate, SAMPLE_RATE)
    return audio.numpy()
