"""Shared fixtures: one small SynthSeasons street per test session."""

from __future__ import annotations

import pytest

from locseg.synth.generate import generate


@pytest.fixture(scope="session")
def small_street(tmp_path_factory):
    """A generated ``--size small`` test street (a few seconds to make)."""
    return generate(tmp_path_factory.mktemp("synth") / "street", seed=0, split="test", size="small")
