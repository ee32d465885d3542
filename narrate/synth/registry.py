"""The synthesis engines narrate knows, in one table: `load_engine`, `narrate doctor`, the CLI's
`--engine` choices and the metadata of published files read it. A new engine is a module with
an `Engine` class and a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from narrate.config import EngineConfig
from narrate.errors import UsageError

if TYPE_CHECKING:
    from narrate.synth import Engine
    from narrate.synth.voices import VoiceLibrary

Loader = Callable[..., "Engine"]  # (config, *, device, voices, compile) -> Engine


@dataclass(frozen=True)
class EngineSpec:
    name: str  # the `--engine` value, and EngineConfig.engine
    summary: str  # one line for `--engine`'s help
    load: Loader  # imports the engine's module only when called: torch stays unimported
    csm_checkpoint: bool  # --model names a CSM checkpoint, decoded by the Mimi codec
    voice_prompts: bool  # speaks with prompts from the voice library (their content keys chunks)
    on_devices: bool  # runs on the devices asked for (CUDA); else always on the CPU
    espeak: bool  # speaks through eSpeak NG
    fixed_model: str | None = None  # the model in published metadata, where --model is unused

    def model_name(self, config: EngineConfig) -> str:
        """The model a published file names in its metadata."""
        return self.fixed_model or config.model


def _load_csm(
    config: EngineConfig, *, device: str, voices: VoiceLibrary | None, compile: bool
) -> Engine:
    from narrate.synth.csm import CsmEngine

    return CsmEngine.load(config, device=device, voices=voices, compile=compile)


def _load_preview(config: EngineConfig, **_: object) -> Engine:
    from narrate.synth.preview import PreviewEngine

    return PreviewEngine.load(config)


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "csm",
            "Sesame CSM-1B",
            _load_csm,
            csm_checkpoint=True,
            voice_prompts=True,
            on_devices=True,
            espeak=False,
        ),
        EngineSpec(
            "preview",
            "eSpeak NG, fast and CPU-only",
            _load_preview,
            csm_checkpoint=False,
            voice_prompts=False,
            on_devices=False,
            espeak=True,
            fixed_model="espeak-ng",
        ),
    )
}
DEFAULT_ENGINE = "csm"


def engine_spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        choices = " or ".join(f"--engine {n}" for n in ENGINES)
        raise UsageError(f"unknown engine {name!r}", f"use {choices}") from None
