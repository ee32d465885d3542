"""Thin click layer: parse options, call into the stages, map NarrateError to exit codes.

Importing this module must not import torch (fast `--help` and `plan`): heavy modules are
imported inside the commands that need them.
"""

from __future__ import annotations

import click

from narrate import __version__
from narrate.errors import NarrateError


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


main = cli

if __name__ == "__main__":
    main()
