"""Thin click layer: parse options, call into the stages, map NarrateError to exit codes.

Importing this module must not import torch (fast `--help` and `plan`): heavy modules are
imported inside the commands that need them.
"""

from __future__ import annotations

import sys

import click

from narrate import __version__
from narrate.errors import NarrateError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="narrate")
def cli() -> None:
    """Render book narratives to narrated audio with Sesame CSM-1B."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except NarrateError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
