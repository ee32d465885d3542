"""Thin click layer: parse options, call into the stages, map NarrateError to exit codes.

Importing this module must not import torch (fast `--help` and `plan`): heavy modules are
imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from narrate import __version__
from narrate.config import ChunkingConfig, EngineConfig, PlanConfig
from narrate.errors import EXIT_OK, EXIT_SOME_FAILED, NarrateError


class NarrateGroup(click.Group):
    """Turns a NarrateError from any command into its message and exit code, no traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NarrateError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=NarrateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="narrate")
def cli() -> None:
    """Render book narratives to narrated audio with Sesame CSM-1B."""


def catalog_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that plans a catalog (plan, run, status)."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(["csm", "preview"]),
            default="csm",
            show_default=True,
            help="csm: Sesame CSM-1B; preview: eSpeak NG, fast and CPU-only",
        ),
        click.option(
            "--model",
            default="sesame/csm-1b",
            show_default=True,
            help="Hugging Face id or local directory of the CSM model",
        ),
        click.option(
            "--voices",
            "voices_dir",
            default="voices",
            show_default=True,
            type=click.Path(file_okay=False),
            help="voice prompt library (voices/NAME/)",
        ),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024)),
        click.option(
            "--window",
            "window_books",
            default=2000,
            show_default=True,
            type=click.IntRange(1),
            help="books planned together; each window is length-sorted on its own",
        ),
        click.option(
            "--max-audio-length-ms",
            default=30_000,
            show_default=True,
            type=click.IntRange(2_000, 90_000),
            help="frame cap of any one chunk",
        ),
        click.option(
            "--max-text-chars",
            default=200_000,
            show_default=True,
            type=click.IntRange(1),
            help="longest narrative accepted",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_configs(
    engine: str,
    model: str,
    batch_size: int,
    window_books: int,
    max_audio_length_ms: int,
    max_text_chars: int,
) -> tuple[EngineConfig, ChunkingConfig, PlanConfig]:
    chunking = ChunkingConfig(max_audio_ms=max_audio_length_ms, max_text_chars=max_text_chars)
    plan = PlanConfig(
        batch_size=batch_size,
        max_batch_positions=batch_size * chunking.window,
        window_books=window_books,
    )
    return (
        EngineConfig(engine=engine, model=model, max_audio_ms=max_audio_length_ms),
        chunking,
        plan,
    )


@cli.command()
@click.argument("manifest")
@catalog_options
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def plan(manifest: str, voices_dir: str, as_json: bool, **options: Any) -> None:
    """Validate and plan MANIFEST (JSONL or Parquet, local or gs://) without synthesizing.

    Exit 0 when every row is valid, 1 when some rows were rejected, 2 when the manifest cannot
    be read.
    """
    from narrate.plan import plan_manifest, render_summary, voice_library_lookup

    engine, chunking, plan_config = build_configs(**options)
    summary = plan_manifest(
        manifest,
        engine=engine,
        chunking=chunking,
        plan=plan_config,
        voices=voice_library_lookup(voices_dir),
        progress=sys.stderr.isatty(),
    )
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else render_summary(summary))
    sys.exit(EXIT_SOME_FAILED if summary.rows_rejected else EXIT_OK)


main = cli

if __name__ == "__main__":
    main()
