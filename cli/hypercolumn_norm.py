"""The ``--hypercolumn-norm`` option of every command that computes hypercolumns."""

from __future__ import annotations

import click

from locseg.models.hypercolumn import DEFAULT_NORMALIZATION, NORMALIZATIONS

hypercolumn_norm_option = click.option(
    "--hypercolumn-norm", type=click.Choice(NORMALIZATIONS), default=DEFAULT_NORMALIZATION, show_default=True,
    help="levels: L2-normalise each layer's part, then the hypercolumn (locseg's fine-tuned weights); "
         "joint: the concatenation only (S2DHM's convention).")
