"""The tiny random CSM + Mimi (narrate.synth.tiny), built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder for `--model` / `EngineConfig(model=...)`, loaded via from_pretrained."""
    from narrate.synth.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-csm"))


@pytest.fixture(scope="module")
def torch_one_thread():
    """The tiny model is all per-step overhead: on a shared CPU extra threads only spin."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
