"""Entry point of the ``locseg`` command.

Every sub-command is a thin wrapper over a library function. Library code raises
:class:`locseg.errors.LocsegError`; this module turns such errors into a one-line
message on stderr and the error's exit code, so a user never sees a traceback for
bad input (``LOCSEG_DEBUG=1`` shows it).
"""

from __future__ import annotations

import os
import sys

import click

from locseg import __version__
from locseg.errors import LocsegError


class LocsegGroup(click.Group):
    """A click group that reports LocsegError as a one-line message."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocsegError as err:
            if os.environ.get("LOCSEG_DEBUG"):
                raise
            click.secho(f"locseg: error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)


@click.group(cls=LocsegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="locseg")
def cli() -> None:
    """Visual localization under changing conditions, and segmentation trained
    on the cross-condition correspondences it produces."""


def _register() -> None:
    from . import (
        evaluate,
        export,
        features,
        localize,
        reference,
        segment,
        synth,
        train,
        weights,
    )

    for module in (synth, localize, reference, export, evaluate, train, features, segment, weights):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="locseg")


if __name__ == "__main__":
    main()
