"""The Mimi codec (moshi) that turns CSM's codes into 24 kHz audio, and voice prompts into codes.

Where its weights come from, for `--model M`:
1. `M/mimi.safetensors` (+ `M/mimi_config.json` when the architecture is not the standard one):
   a local model folder that carries its own codec, like the tiny test model;
2. `M/tokenizer-e351c8d8-checkpoint125.safetensors`: an offline copy of the standard weights;
3. otherwise the standard weights from the hub (`kyutai/moshiko-pytorch-bf16`, cached in HF_HOME).
An untrained Mimi (`get_mimi(None)`) is never used: it would silently turn every book into noise.

moshi compiles parts of Mimi with `torch.compile` on first use, which needs a C compiler at run
time (the runtime image has none) and buys little next to CSM: encoding and decoding run with
moshi's `no_compile()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from moshi.models import loaders
from moshi.utils.compile import no_compile

from narrate.config import SAMPLES_PER_FRAME
from narrate.errors import ModelError, UsageError, first_line

log = logging.getLogger(__name__)

NUM_CODEBOOKS = 32  # CSM speaks Mimi with all 32 codebooks (moshi uses 8)
CODEBOOK_SIZE = 2048  # Mimi codes per codebook; CSM's audio vocabulary adds 3 specials
LOCAL_WEIGHTS = "mimi.safetensors"
LOCAL_CONFIG = "mimi_config.json"
# Mimi's decoder holds about 34 MB per row-second decoded together (fp32, its real
# architecture): 2.7 MB a frame, rounded up. A decode call takes at most half the free device
# memory, and on the CPU at most 2,000 frames (about 6 GB of the host's memory).
FRAME_BYTES = 3 << 20
FREE_MEMORY_SHARE = 0.5
CPU_DECODE_FRAMES = 2000
DECODE_FRAMES_ENV = "NARRATE_DECODE_FRAMES"  # overrides the frames a decode call may hold


@dataclass
class Codec:
    """A loaded Mimi and `key`, a content hash of its weights: cached voice codes are per key."""

    model: torch.nn.Module
    key: str
    device: torch.device
    max_frames: int | None = None  # frames (rows x longest) per decode call; None: from memory

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """[samples] float at 24 kHz -> codes [frames, 32]."""
        with no_compile():
            codes = self.model.encode(audio.to(self.device, torch.float32)[None, None])
        return codes[0].T

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [rows, frames, 32] -> audio [rows, frames * 1920], all rows in one call.

        Mimi is causal: a row's audio does not depend on the frames after its end, so rows of
        different lengths share one call and are cut afterwards.
        """
        with no_compile():
            return self.model.decode(codes.to(self.device).transpose(1, 2))[:, 0]

    def frames_per_call(self) -> int:
        """The most frames (rows x the longest row) one decode call may hold: `max_frames`,
        or what half the device's free memory holds."""
        if self.max_frames:
            return self.max_frames
        if self.device.type != "cuda":
            return CPU_DECODE_FRAMES
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, int(free * FREE_MEMORY_SHARE) // FRAME_BYTES)

    def decode_rows(self, rows: list[np.ndarray]) -> list[np.ndarray | None]:
        """Each row's audio (codes [frames, 32], cut at the row's end), in calls of at most
        `frames_per_call()` padded frames, rows of similar lengths together. A call that runs
        out of device memory is split in halves down to single rows and retried; a row that
        does not decode even alone gets None (the others keep their audio)."""
        audio: list[np.ndarray | None] = [None] * len(rows)
        budget = self.frames_per_call()
        order = sorted(range(len(rows)), key=lambda n: len(rows[n]), reverse=True)
        group: list[int] = []
        for n in order:
            if group and (len(group) + 1) * len(rows[group[0]]) > budget:
                self._decode_group(rows, group, audio)
                group = []
            group.append(n)
        if group:
            self._decode_group(rows, group, audio)
        return audio

    def _decode_group(
        self, rows: list[np.ndarray], group: list[int], audio: list[np.ndarray | None]
    ) -> None:
        longest = max(len(rows[n]) for n in group)
        if longest == 0:
            for n in group:
                audio[n] = np.zeros(0, np.float32)
            return
        padded = np.zeros((len(group), longest, NUM_CODEBOOKS), np.int64)
        for slot, n in enumerate(group):
            padded[slot, : len(rows[n])] = rows[n]
        valid = torch.from_numpy(np.clip(padded, 0, CODEBOOK_SIZE - 1))
        try:
            decoded = self.decode(valid).float().cpu().numpy()
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(group) == 1:
                log.warning("Mimi ran out of device memory decoding one row of %d frames", longest)
                return
            half = len(group) // 2
            log.warning(
                "Mimi ran out of device memory decoding %d rows x %d frames: %d and %d rows",
                len(group),
                longest,
                half,
                len(group) - half,
            )
            self._decode_group(rows, group[:half], audio)
            self._decode_group(rows, group[half:], audio)
            return
        for slot, n in enumerate(group):
            audio[n] = decoded[slot, : len(rows[n]) * SAMPLES_PER_FRAME]


def weights_source(model: str) -> tuple[Path, dict | None]:
    folder = Path(model)
    if (folder / LOCAL_WEIGHTS).is_file():
        config_path = folder / LOCAL_CONFIG
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
        return folder / LOCAL_WEIGHTS, config
    if (folder / loaders.MIMI_NAME).is_file():
        return folder / loaders.MIMI_NAME, None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME)), None
    except Exception as exc:  # offline, unreachable, missing: hub errors share no base class
        raise ModelError(
            f"cannot get the Mimi codec weights ({loaders.DEFAULT_REPO}/{loaders.MIMI_NAME}): "
            f"{first_line(exc)}",
            f"download them once with network access, or put {loaders.MIMI_NAME} (or "
            f"{LOCAL_WEIGHTS}) in the --model folder",
        ) from None


def load_codec(model: str, device: torch.device) -> Codec:
    path, config = weights_source(model)
    try:
        mimi = loaders.get_mimi(path, config, device=device, num_codebooks=NUM_CODEBOOKS)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ModelError(f"cannot load the Mimi codec from {path}: {first_line(exc)}") from None
    return Codec(mimi.eval(), _content_key(path, config), device, _decode_frames())


def _decode_frames() -> int | None:
    value = os.environ.get(DECODE_FRAMES_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(
            f"{DECODE_FRAMES_ENV}={value!r} is not a number of frames",
            "set it to a positive whole number (frames per Mimi decode call), or unset it",
        )
    return int(value)


def _content_key(path: Path, config: dict | None) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with path.open("rb") as stream:
        while block := stream.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:16]
