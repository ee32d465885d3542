"""AudioSeal watermark: a 16-bit payload derived from the book id, embedded and detected.

AudioSeal 0.2 works at 16 kHz and no longer resamples by itself. The watermark is computed
on the 16 kHz version of the book and only its residual is upsampled and added to the 24 kHz
audio, so everything above 8 kHz stays exactly as synthesized. Long books are cut into
fixed-length segments (bounded memory, batches of equal shapes) that overlap a little; the
residuals crossfade over the overlaps so segment boundaries leave no seams.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchaudio.functional as AF

from narrate.config import SAMPLE_RATE
from narrate.errors import ModelError

if TYPE_CHECKING:
    from audioseal.models import AudioSealDetector, AudioSealWM

WATERMARK_RATE = 16_000
NBITS = 16
GENERATOR_CARD = "audioseal_wm_16bits"
DETECTOR_CARD = "audioseal_detector_16bits"
# file names in huggingface.co/facebook/audioseal, looked for in a --watermark-model folder
GENERATOR_FILE = "generator_base.pth"
DETECTOR_FILE = "detector_base.pth"
SEGMENT_S = 10  # samples the model sees at once, plus the context either side
CONTEXT_S = 0.5
SEGMENTS_PER_BATCH = 8
# a Kaiser-windowed sinc, steep enough that the upsampled residual has nothing above 8 kHz
_RESAMPLING: dict[str, Any] = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}
_LOAD_HINT = (
    "AudioSeal's weights come from huggingface.co/facebook/audioseal: without network access, "
    f"put {GENERATOR_FILE} and {DETECTOR_FILE} in a folder and pass --watermark-model DIR; "
    "--no-watermark publishes without a watermark"
)


@dataclass(frozen=True, slots=True)
class Detection:
    """How likely a recording carries a watermark, and the payload it decodes to."""

    probability: float
    payload: int


def watermark_payload(book_id: str) -> int:
    """The book's stable 16-bit payload: a found copy traces back to its book id."""
    return int.from_bytes(hashlib.sha256(book_id.encode()).digest()[:2], "big")


def payload_bits(payload: int) -> list[int]:
    """The payload as AudioSeal's message, most significant bit first."""
    if not 0 <= payload < 1 << NBITS:
        raise ValueError(f"payload {payload} does not fit in {NBITS} bits")
    return [(payload >> (NBITS - 1 - i)) & 1 for i in range(NBITS)]


def bits_payload(bits: list[int]) -> int:
    return sum(bit << (NBITS - 1 - i) for i, bit in enumerate(bits))


_DETECT_HINT = (
    "AudioSeal's detector weights come from huggingface.co/facebook/audioseal: without network "
    f"access, put {DETECTOR_FILE} in a folder and pass --watermark-model DIR (or set "
    "NARRATE_AUDIOSEAL_DIR)"
)


def resolve_checkpoints(model: str | None) -> tuple[str, str]:
    """Generator and detector to load: model cards, a folder, or "GENERATOR,DETECTOR"."""
    if model is None:
        return GENERATOR_CARD, DETECTOR_CARD
    if "," in model:
        generator, detector = (part.strip() for part in model.split(",", 1))
        return generator, detector
    folder = Path(model)
    if not folder.is_dir():
        raise ModelError(
            f"--watermark-model {model!r} is neither a folder nor GENERATOR,DETECTOR", _LOAD_HINT
        )
    return _find_checkpoint(folder, GENERATOR_FILE), _find_checkpoint(folder, DETECTOR_FILE)


def _find_checkpoint(folder: Path, name: str, hint: str = _LOAD_HINT) -> str:
    if (folder / name).is_file():
        return str(folder / name)
    role = name.split("_")[0]
    found = sorted(folder.glob(f"*{role}*.pth"))
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise ModelError(f"{what} AudioSeal {role} checkpoint (*{role}*.pth) in {folder}", hint)
    return str(found[0])


def _resample(audio: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    return audio if rate == new_rate else AF.resample(audio, rate, new_rate, **_RESAMPLING)


@contextlib.contextmanager
def _inference() -> Iterator[None]:
    """Eager inference: AudioSeal's bundled moshi layers torch.compile themselves on first
    use, which costs minutes on a CPU and recompiles for every new input length."""
    from audioseal.libs.moshi.utils.compile import no_compile

    with torch.inference_mode(), no_compile():
        yield


def _offline_without_weights(source: str) -> bool:
    """True for a model card whose weights were never downloaded while HF_HUB_OFFLINE is set.

    audioseal fetches a card's checkpoint URL with torch.hub, which ignores the Hugging Face
    offline switch and waits on the network without a timeout. Its cache file is named after
    a hash of the URL's path, under AUDIOSEAL_CACHE_DIR (or XDG_CACHE_HOME, ~/.cache)/audioseal.
    """
    from audioseal.loader import load_local_model_config
    from huggingface_hub import constants

    card = load_local_model_config(source)
    if card is None or not constants.HF_HUB_OFFLINE:
        return False
    root = os.environ.get("AUDIOSEAL_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    name = hashlib.sha1(urlparse(card.checkpoint).path.encode()).hexdigest()[:24]
    return not (Path(root or Path.home() / ".cache") / "audioseal" / name).is_file()


def _load_model(kind: str, source: str, device: str, hint: str = _LOAD_HINT) -> Any:
    from audioseal import AudioSeal

    if _offline_without_weights(source):
        raise ModelError(
            f"cannot load the AudioSeal watermark {kind} {source!r}: HF_HUB_OFFLINE is set "
            "and its weights were never downloaded",
            hint,
        )
    load = AudioSeal.load_generator if kind == "generator" else AudioSeal.load_detector
    try:
        model = load(source, nbits=NBITS, device=torch.device(device))
    except Exception as exc:  # the loader raises whatever its download or unpickling raised
        raise ModelError(
            f"cannot load the AudioSeal watermark {kind} {source!r}: {exc}", hint
        ) from exc
    return model.eval()


class Watermarker:
    """Embeds and detects book payloads. Load it once per process with `Watermarker.load`."""

    def __init__(self, generator: AudioSealWM | None, detector_source: str, device: str) -> None:
        self.generator = generator
        self.device = device
        self._detector_source = detector_source
        self._detector: AudioSealDetector | None = None
        self._detector_lock = threading.Lock()

    @classmethod
    def for_detection(cls, model: str | None = None, device: str = "cpu") -> Watermarker:
        """Only the detector (`narrate detect`): loaded now, ModelError naming the detector
        if it cannot be; no generator is needed or loaded."""
        if model is None:
            source = DETECTOR_CARD
        elif "," in model:
            source = model.split(",", 1)[1].strip()
        elif Path(model).is_dir():
            source = _find_checkpoint(Path(model), DETECTOR_FILE, _DETECT_HINT)
        else:
            raise ModelError(
                f"--watermark-model {model!r} is neither a folder nor GENERATOR,DETECTOR",
                _DETECT_HINT,
            )
        detector = _load_model("detector", source, device, _DETECT_HINT)
        watermarker = cls(None, source, device)
        watermarker._detector = detector
        return watermarker

    @classmethod
    def load(cls, model: str | None = None, device: str = "cpu") -> Watermarker:
        """Load the generator now (ModelError if it cannot be); the detector on first use."""
        generator_source, detector_source = resolve_checkpoints(model)
        return _load_watermarker(generator_source, detector_source, str(device))

    @property
    def detector(self) -> AudioSealDetector:
        with self._detector_lock:
            if self._detector is None:
                self._detector = _load_model("detector", self._detector_source, self.device)
            return self._detector

    def apply(self, audio: np.ndarray, payload: int) -> np.ndarray:
        """The audio (mono float32 at 24 kHz) with the payload's watermark added."""
        if len(audio) == 0:
            return audio.astype(np.float32)
        signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        residual = self._residual(_resample(signal, SAMPLE_RATE, WATERMARK_RATE), payload)
        upsampled = _resample(residual, WATERMARK_RATE, SAMPLE_RATE)[: len(audio)]
        upsampled = torch.nn.functional.pad(upsampled, (0, len(audio) - len(upsampled)))
        return (signal + upsampled).numpy()

    def _residual(self, signal: torch.Tensor, payload: int) -> torch.Tensor:
        hop, context = SEGMENT_S * WATERMARK_RATE, int(CONTEXT_S * WATERMARK_RATE)
        length = hop + 2 * context
        count = -(-len(signal) // hop)
        padded = torch.nn.functional.pad(signal, (context, count * hop + context - len(signal)))
        segments = padded.unfold(0, length, hop)  # [count, length], segment i starts at i*hop
        ramp = torch.linspace(0, 1, 2 * context + 2)[1:-1]
        weight = torch.ones(length)
        weight[: 2 * context], weight[-2 * context :] = ramp, ramp.flip(0)
        total, weights = torch.zeros(len(padded)), torch.zeros(len(padded))
        message = torch.tensor([payload_bits(payload)], device=self.device)
        assert self.generator is not None, "a detection-only Watermarker cannot embed"
        with _inference():
            for first in range(0, count, SEGMENTS_PER_BATCH):
                batch = segments[first : first + SEGMENTS_PER_BATCH].to(self.device)
                marks = self.generator.get_watermark(
                    batch[:, None, :], message=message.repeat(len(batch), 1)
                )
                for offset, mark in enumerate(marks[:, 0].float().cpu()):
                    start = (first + offset) * hop
                    total[start : start + length] += mark * weight
                    weights[start : start + length] += weight
        return (total / weights.clamp_min(1e-6))[context : context + len(signal)]

    def detect(self, audio: np.ndarray, sample_rate: int) -> Detection:
        """Probability (share of the audio judged watermarked) and the decoded payload."""
        signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        signal = _resample(signal, sample_rate, WATERMARK_RATE)
        if len(signal) == 0:
            return Detection(0.0, 0)
        hop = SEGMENT_S * WATERMARK_RATE
        count = -(-len(signal) // hop)
        segments = torch.nn.functional.pad(signal, (0, count * hop - len(signal))).view(count, hop)
        valid = torch.full((count,), hop)
        valid[-1] = len(signal) - (count - 1) * hop
        watermarked, bit_sums = 0.0, torch.zeros(NBITS)
        with _inference():
            for first in range(0, count, SEGMENTS_PER_BATCH):
                batch = segments[first : first + SEGMENTS_PER_BATCH].to(self.device)
                scores, bit_probabilities = self.detector(batch[:, None, :])
                for offset in range(len(batch)):
                    n = int(valid[first + offset])
                    watermarked += float((scores[offset, 1, :n] > 0.5).sum())
                    bit_sums += bit_probabilities[offset].float().cpu() * n
        bits = (bit_sums / len(signal) > 0.5).int().tolist()
        return Detection(watermarked / len(signal), bits_payload(bits))


@functools.cache
def _load_watermarker(generator_source: str, detector_source: str, device: str) -> Watermarker:
    generator = _load_model("generator", generator_source, device)
    return Watermarker(generator, detector_source, device)
