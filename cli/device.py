"""The ``--device`` option of every command that runs a network (``locseg.device``)."""

from __future__ import annotations

import click

from locseg.device import AUTO, DEVICE_HELP

device_option = click.option("--device", default=AUTO, show_default=True, help=DEVICE_HELP)
