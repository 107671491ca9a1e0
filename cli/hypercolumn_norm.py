"""Options shared by the commands that compute hypercolumns: ``--hypercolumn-norm`` and
``--hypercolumn-scales`` (and the comma-separated scales parser that ``--retrieval-scales`` uses too)."""

from __future__ import annotations

import click

from locseg.errors import InputError
from locseg.models.hypercolumn import (
    DEFAULT_NORMALIZATION,
    NORMALIZATIONS,
    SINGLE_SCALE,
    check_scales,
)


def parse_scales(value: str, what: str = "scales") -> tuple[float, ...]:
    """``"1,0.7071"`` → (1.0, 0.7071), positive factors (``check_scales``, naming ``what``), or a
    usage error before any work starts."""
    try:
        return check_scales((float(part) for part in value.split(",")), what)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 1,0.7071,0.5") from None
    except InputError as err:
        raise click.BadParameter(str(err)) from None


hypercolumn_norm_option = click.option(
    "--hypercolumn-norm", type=click.Choice(NORMALIZATIONS), default=DEFAULT_NORMALIZATION, show_default=True,
    help="levels: L2-normalise each layer's part, then the hypercolumn (locseg's fine-tuned weights); "
         "joint: the concatenation only (S2DHM's convention).")

hypercolumn_scales_option = click.option(
    "--hypercolumn-scales", default=",".join(map(str, SINGLE_SCALE)), show_default=True,
    callback=lambda _ctx, _param, value: parse_scales(value, "hypercolumn scales"),
    help="Comma-separated multiples of the input size whose hypercolumns are averaged into each dense map, "
         "e.g. 0.8,1,1.25; every scale but 1 costs one more network pass per image.")
