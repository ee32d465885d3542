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
from dataclasses import dataclass
from pathlib import Path

import torch
from moshi.models import loaders
from moshi.utils.compile import no_compile

from narrate.errors import ModelError, first_line

NUM_CODEBOOKS = 32  # CSM speaks Mimi with all 32 codebooks (moshi uses 8)
CODEBOOK_SIZE = 2048  # Mimi codes per codebook; CSM's audio vocabulary adds 3 specials
LOCAL_WEIGHTS = "mimi.safetensors"
LOCAL_CONFIG = "mimi_config.json"


@dataclass
class Codec:
    """A loaded Mimi and `key`, a content hash of its weights: cached voice codes are per key."""

    model: torch.nn.Module
    key: str
    device: torch.device

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
    return Codec(mimi.eval(), _content_key(path, config), device)


def _content_key(path: Path, config: dict | None) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with path.open("rb") as stream:
        while block := stream.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:16]
