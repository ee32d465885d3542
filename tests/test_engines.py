"""The engine registry: every place that names engines offers exactly the registered ones."""

from __future__ import annotations

import click
import pytest

from narrate.cli import cli
from narrate.config import EngineConfig
from narrate.errors import UsageError
from narrate.synth import load_engine
from narrate.synth.registry import DEFAULT_ENGINE, ENGINES


def engine_options() -> dict[str, click.Option]:
    """Every `--engine` option of every narrate command, by command name."""
    found = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and "--engine" in param.opts:
                found[name] = param
    return found


def test_every_registered_engine_can_be_chosen_wherever_an_engine_is_asked_for() -> None:
    options = engine_options()
    assert {"run", "say"} <= set(options)
    for command, option in options.items():
        assert isinstance(option.type, click.Choice), command
        assert list(option.type.choices) == list(ENGINES), command
        assert option.default == DEFAULT_ENGINE, command


def test_an_unknown_engine_is_a_usage_error_naming_every_known_one() -> None:
    with pytest.raises(UsageError, match="unknown engine 'festival'") as raised:
        load_engine(EngineConfig(engine="festival"))
    assert all(f"--engine {name}" in (raised.value.hint or "") for name in ENGINES)
