"""Training checkpoints: round trip, exact resumption, corrupt files, config changes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from locseg.errors import FormatError, InputError
from locseg.train import checkpoint as ckpt_module
from locseg.train.checkpoint import (
    config_differences,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)

CONFIG = {
    "model": {"width": 16, "dropout": 0.3},
    "optim": {"lr": 1e-2, "betas": (0.9, 0.99)},
    "batch_size": 8,
}


@pytest.fixture(autouse=True)
def keep_global_rng():
    """These tests reseed the global generators; leave them as they were found."""
    saved = rng_state()
    yield
    restore_rng_state(saved)


# --------------------------------------------------------------------------- a tiny run


DATA_X = torch.linspace(-1, 1, 64 * 3).reshape(64, 3)
DATA_Y = DATA_X.sum(dim=1, keepdim=True).sin()


def make_run(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    return model, optimizer, np.random.default_rng(seed)


def train_step(model, optimizer, generator: np.random.Generator) -> float:
    """One step drawing from every generator: numpy sampling, python and torch noise, dropout."""
    index = torch.from_numpy(generator.choice(len(DATA_X), size=8, replace=False))
    x = DATA_X[index] * (1 + 0.1 * random.random()) + 0.01 * torch.randn(8, 3)
    x = x + 0.01 * float(np.random.standard_normal())
    loss = torch.nn.functional.mse_loss(model(x), DATA_Y[index])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def save_run(path: Path, model, optimizer, generator, step: int, config=CONFIG) -> Path:
    return save_checkpoint(
        path,
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        step=step,
        rng_state=rng_state(generator),
        config=config,
        metrics={"loss": [1.0, 0.5], "best": 0.5},
    )


# --------------------------------------------------------------------------- tests


def test_round_trip(tmp_path):
    model, optimizer, generator = make_run(0)
    train_step(model, optimizer, generator)
    path = save_run(tmp_path / "run" / "last.pt", model, optimizer, generator, step=1)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left

    ckpt = load_checkpoint(path, config=CONFIG)
    assert ckpt.path == path and ckpt.step == 1
    assert ckpt.config == CONFIG and ckpt.metrics == {"loss": [1.0, 0.5], "best": 0.5}
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[key], value), key
    fresh_model, fresh_optimizer, _ = make_run(1)
    fresh_model.load_state_dict(ckpt.model_state)
    fresh_optimizer.load_state_dict(ckpt.optimizer_state)
    assert fresh_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def _three_steps_saved_then_a_fourth(tmp_path):
    """(checkpoint after step 3, loss of step 4, parameters after step 4)."""
    model, optimizer, generator = make_run(0)
    for _ in range(3):
        train_step(model, optimizer, generator)
    path = save_run(tmp_path / "step3.pt", model, optimizer, generator, step=3)
    return path, train_step(model, optimizer, generator), parameters(model)


def test_resume_reproduces_the_next_step(tmp_path):
    path, loss4, params4 = _three_steps_saved_then_a_fourth(tmp_path)

    # fresh objects, other seeds, generators moved on: everything must come from the file
    fresh_model, fresh_optimizer, fresh_generator = make_run(123)
    random.random(), np.random.random(), torch.rand(5)
    ckpt = load_checkpoint(path, config=CONFIG)
    fresh_model.load_state_dict(ckpt.model_state)
    fresh_optimizer.load_state_dict(ckpt.optimizer_state)
    restore_rng_state(ckpt.rng_state, fresh_generator)
    assert train_step(fresh_model, fresh_optimizer, fresh_generator) == loss4
    for a, b in zip(parameters(fresh_model), params4):
        assert torch.equal(a, b)


def test_resume_without_random_state_does_not_reproduce(tmp_path):
    """The test above has teeth: weights and optimizer alone give another step."""
    path, loss4, _ = _three_steps_saved_then_a_fourth(tmp_path)
    fresh_model, fresh_optimizer, fresh_generator = make_run(123)
    ckpt = load_checkpoint(path)
    fresh_model.load_state_dict(ckpt.model_state)
    fresh_optimizer.load_state_dict(ckpt.optimizer_state)
    assert train_step(fresh_model, fresh_optimizer, fresh_generator) != loss4


def test_random_state_is_plain_data_for_any_numpy_bit_generator(tmp_path):
    generator = np.random.Generator(np.random.MT19937(5))
    generator.random(3)
    state = rng_state(generator)
    path = save_checkpoint(tmp_path / "c.pt", model_state={}, optimizer_state={}, step=0,
                           rng_state=state, config={}, metrics={})
    expected = (generator.random(4), random.random(), np.random.random(), torch.rand(2))
    other = np.random.Generator(np.random.MT19937(99))
    restore_rng_state(load_checkpoint(path).rng_state, other)
    again = (other.random(4), random.random(), np.random.random(), torch.rand(2))
    np.testing.assert_array_equal(again[0], expected[0])
    assert again[1:3] == expected[1:3] and torch.equal(again[3], expected[3])
    with pytest.raises(InputError, match="MT19937"):
        restore_rng_state(state, np.random.default_rng(0))


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_damaged_checkpoint_is_a_format_error_naming_the_file(tmp_path, damage):
    model, optimizer, generator = make_run(0)
    path = save_run(tmp_path / "last.pt", model, optimizer, generator, step=0)
    data = path.read_bytes()
    content = {"truncated": data[: len(data) * 2 // 3], "empty": b"", "text": b"step = 3\n"}[damage]
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        load_checkpoint(path)
    assert err.value.path == path and str(path) in str(err.value)


def test_foreign_files_are_format_errors(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "weights.pt")
    with pytest.raises(FormatError, match="not a locseg checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")
    evil = {"format": "locseg-checkpoint", "version": 1, "step": 0, "obj": Path("x")}
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(FormatError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_config_mismatch_lists_the_differing_keys(tmp_path):
    model, optimizer, generator = make_run(0)
    path = save_run(tmp_path / "last.pt", model, optimizer, generator, step=2)
    changed = {
        "model": {"width": 16, "dropout": 0.5},
        "optim": {"lr": 1e-2, "betas": [0.9, 0.99]},  # a list equal to the saved tuple is no change
        "epochs": 3,
    }
    with pytest.raises(InputError) as err:
        load_checkpoint(path, config=changed)
    message = str(err.value)
    assert "model.dropout, batch_size, epochs" in message
    assert "optim" not in message.split("differing keys:")[1]
    ckpt = load_checkpoint(path, config=changed, allow_config_change=True)
    assert ckpt.config == CONFIG and ckpt.step == 2


def test_config_differences():
    assert config_differences(CONFIG, CONFIG) == []
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1.0, "b": {"c": 3}, "d": None}) == ["b.c", "d"]
    assert config_differences({"flag": True}, {"flag": 1}) == ["flag"]
    assert config_differences({"b": {"c": 2}}, {"b": 2}) == ["b"]


def test_an_option_newer_than_the_checkpoint_is_no_difference_at_its_default():
    saved = {"lr": 0.1, "loss": {"margin": 1.0}}
    defaults = {"lr": 0.5, "new": False, "loss": {"margin": 1.0, "extra": 0.0}}
    at_default = {"lr": 0.1, "new": False, "loss": {"margin": 1.0, "extra": 0.0}}
    assert config_differences(saved, at_default, defaults=defaults) == []
    assert config_differences(saved, at_default) == ["loss.extra", "new"]          # without defaults
    moved = {"lr": 0.1, "new": True, "loss": {"margin": 1.0, "extra": 0.5}}
    assert config_differences(saved, moved, defaults=defaults) == ["loss.extra", "new"]
    # a key the checkpoint has and the current config lacks still differs
    assert config_differences(at_default | {"old": 1}, at_default, defaults=defaults) == ["old"]


def test_unplain_values_are_refused_before_writing(tmp_path):
    model, optimizer, generator = make_run(0)
    path = save_run(tmp_path / "last.pt", model, optimizer, generator, step=1)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"config\['data'\]\['root'\] is a PosixPath|is a WindowsPath"):
        save_run(path, model, optimizer, generator, step=2, config={"data": {"root": tmp_path}})
    with pytest.raises(InputError, match="non-negative int"):
        save_run(path, model, optimizer, generator, step=-1)
    assert path.read_bytes() == before


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, generator = make_run(0)
    path = save_run(tmp_path / "last.pt", model, optimizer, generator, step=1)
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_run(path, model, optimizer, generator, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
