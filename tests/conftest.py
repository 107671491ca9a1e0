"""Shared fixtures: one small SynthSeasons street per test session."""

from __future__ import annotations

import pytest
import torch

from locseg.synth.generate import generate


@pytest.fixture(scope="session")
def small_street(tmp_path_factory):
    """A generated ``--size small`` test street (a few seconds to make)."""
    return generate(tmp_path_factory.mktemp("synth") / "street", seed=0, split="test", size="small")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models run faster so, and far faster when
    other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
