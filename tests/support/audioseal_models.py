"""Random AudioSeal checkpoints built locally, in the released checkpoint format.

The real weights cannot be downloaded here. These checkpoints are built from AudioSeal's own
model cards (`audioseal_wm_16bits`, `audioseal_detector_16bits`) with its `builder`, shrunk
for speed, and saved the way facebook/audioseal's files are (`{"xp.cfg": ..., "model": ...}`,
pre-TorchScript parameter names), so `AudioSeal.load_generator(path)` /
`load_detector(path)` load them through their real code path.

Random weights detect nothing. Like a trained generator, the random one is scaled to add a
quiet residual (about -30 dB under the signal) instead of random noise at full level. For
testing what surrounds detection (segments, payload bits, book lookup), `detector_answer`
builds a detector whose output layer ignores its input and always reports that payload (as
watermarked, or with `answer_marked=False` as not watermarked).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from audioseal import AudioSeal
from audioseal.builder import (
    AudioSealDetectorConfig,
    AudioSealWMConfig,
    create_detector,
    create_generator,
)
from audioseal.loader import load_local_model_config
from omegaconf import OmegaConf

from narrate.post.watermark import (
    DETECTOR_CARD,
    DETECTOR_FILE,
    GENERATOR_CARD,
    GENERATOR_FILE,
    payload_bits,
)

# fewer filters and one LSTM layer: the same architecture at ~1/16 of the cost
SMALL_SEANET = {"n_filters": 4, "dimension": 32, "lstm": 1}
RESIDUAL_SCALE = 0.02


def card_config(card: str, **seanet: Any) -> dict[str, Any]:
    """A model card's config as the loader reads it, seanet fields overridden."""
    config = OmegaConf.to_container(load_local_model_config(card))
    assert isinstance(config, dict)
    for key in ("checkpoint", "name", "model_type"):
        config.pop(key, None)
    config["seanet"].update(seanet)
    return config


def _released_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # the released files predate TorchScript support; the loader renames their conv weights
    return {name.replace(".inner_conv.", "."): value for name, value in state.items()}


def build_checkpoints(
    folder: Path,
    *,
    seed: int = 0,
    detector_answer: int | None = None,
    answer_marked: bool = True,
    **seanet: Any,
) -> Path:
    """Write generator_base.pth and detector_base.pth with random weights into `folder`."""
    seanet = seanet or SMALL_SEANET
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator_config = card_config(GENERATOR_CARD, **seanet)
    generator = create_generator(AudioSeal.parse_config(generator_config, AudioSealWMConfig))
    last_conv = [m for m in generator.decoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]
    with torch.no_grad():
        last_conv.weight.mul_(RESIDUAL_SCALE)
        last_conv.bias.mul_(RESIDUAL_SCALE)
    detector_config = card_config(DETECTOR_CARD, **seanet)
    detector = create_detector(AudioSeal.parse_config(detector_config, AudioSealDetectorConfig))
    if detector_answer is not None:
        _always_answer(detector.detector[-1], detector_answer, marked=answer_marked)
    for model, config, name in (
        (generator, generator_config, GENERATOR_FILE),
        (detector, detector_config, DETECTOR_FILE),
    ):
        checkpoint = {"xp.cfg": config, "model": _released_names(model.state_dict())}
        torch.save(checkpoint, folder / name)
    return folder


def _always_answer(output_layer: torch.nn.Conv1d, payload: int, *, marked: bool) -> None:
    # channels: [not watermarked, watermarked, bit 0 ... bit 15] logits, per sample
    bits = torch.tensor(payload_bits(payload), dtype=torch.float32)
    verdict = torch.tensor([-8.0, 8.0] if marked else [8.0, -8.0])
    with torch.no_grad():
        output_layer.weight.zero_()
        output_layer.bias.copy_(torch.cat([verdict, (bits * 2 - 1) * 8]))


@pytest.fixture(scope="session")
def audioseal_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with random AudioSeal checkpoints, for --watermark-model."""
    yield build_checkpoints(tmp_path_factory.mktemp("audioseal"))
