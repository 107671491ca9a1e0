"""The ``--device`` option of every command that runs a network (``locseg.device``).

The option resolves its value while the command line is parsed, so a command receives a
``torch.device`` and an unknown or unavailable device fails before any work starts.
"""

from __future__ import annotations

import click
import torch

from locseg.device import AUTO, DEVICE_HELP, resolve_device


def _resolve(ctx: click.Context, param: click.Parameter, value: str) -> torch.device:
    return resolve_device(value)


device_option = click.option("--device", default=AUTO, show_default=True, help=DEVICE_HELP, callback=_resolve)
