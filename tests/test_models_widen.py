"""Tests of locseg.models.widen: a widened backbone computes the narrow one's
activations with every channel repeated, so hypercolumn cosines are unchanged,
and its replicas are not identical (training can tell them apart)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from locseg.errors import InputError
from locseg.models import Hypercolumns, build_backbone
from locseg.models.widen import replica_spread, widen_backbone

F64 = torch.float64


@pytest.fixture(scope="module")
def slim() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("vgg16-slim").double()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 70, 53, generator=torch.Generator().manual_seed(1), dtype=F64)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_every_activation_is_the_narrow_one_with_channels_repeated(slim, images, noise):
    wide = widen_backbone(slim, 2, "vgg16-half", split_noise=noise)
    indices = list(range(1, 32))
    for index, narrow, widened in zip(indices, slim.activations(images, indices), wide.activations(images, indices)):
        expected = narrow.repeat_interleave(2, dim=1)
        torch.testing.assert_close(widened, expected, rtol=1e-9, atol=1e-9, msg=f"entering {index}")


def test_widened_slim_is_the_half_architecture_and_loads_by_its_name(slim):
    wide = widen_backbone(slim, 2, "vgg16-half")
    assert wide.widths == build_backbone("vgg16-half").widths == (32, 64, 128, 256, 256)
    build_backbone("vgg16-half").load_state_dict(wide.state_dict())  # same keys and shapes


@pytest.mark.parametrize("normalization", ["levels", "joint"])
def test_hypercolumn_cosines_are_unchanged(slim, images, normalization):
    narrow = Hypercolumns(slim, normalization=normalization).dense(images)  # (B, C, h, w)
    wide = Hypercolumns(widen_backbone(slim, 2, "vgg16-half", split_noise=0.05),
                        normalization=normalization).dense(images)
    assert wide.shape[1] == 2 * narrow.shape[1]
    a, b = (m.permute(0, 2, 3, 1).flatten(0, 2) for m in (narrow, wide))  # (B h w, C)
    torch.testing.assert_close(b @ b[:50].T, a @ a[:50].T, rtol=1e-9, atol=1e-9)


def test_split_noise_breaks_the_symmetry_between_replicas(slim):
    conv = [m for m in widen_backbone(slim, 2, "vgg16-half", split_noise=0.05).features
            if isinstance(m, nn.Conv2d)][1]
    replica_a, replica_b = conv.weight[:, 0::2], conv.weight[:, 1::2]
    assert not torch.allclose(replica_a, replica_b)
    narrow = [m for m in slim.features if isinstance(m, nn.Conv2d)][1].weight
    torch.testing.assert_close(replica_a + replica_b, narrow.repeat_interleave(2, dim=0))
    exact = [m for m in widen_backbone(slim, 2, "vgg16-half", split_noise=0.0).features
             if isinstance(m, nn.Conv2d)][1]
    torch.testing.assert_close(exact.weight[:, 0::2], exact.weight[:, 1::2])


def test_seeded_and_leaves_the_narrow_model_alone(slim):
    before = {k: v.clone() for k, v in slim.state_dict().items()}
    first = widen_backbone(slim, 2, "vgg16-half", seed=3).state_dict()
    second = widen_backbone(slim, 2, "vgg16-half", seed=3).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(before[k], v) for k, v in slim.state_dict().items())


@pytest.mark.parametrize("factor", [0, 1.5, True])
def test_bad_factor_is_refused(slim, factor):
    with pytest.raises(InputError, match="integer >= 1"):
        widen_backbone(slim, factor, "x")


# ----------------------------------------------------------------------------- weights files and the CLI
def test_widen_backbone_command_writes_weights_that_match_like_the_source(slim, images, tmp_path):
    from click.testing import CliRunner
    from locseg_cli.main import cli
    from safetensors.torch import save_file

    from locseg.models.load import load_hypercolumns
    from locseg.models.weights import read_safetensors_metadata

    source = tmp_path / "slim.safetensors"
    save_file({k: v.float() for k, v in slim.state_dict().items()}, str(source))
    out = CliRunner().invoke(cli, ["widen-backbone", str(source), "--output", str(tmp_path / "half.safetensors")])
    assert out.exit_code == 0, out.output
    assert read_safetensors_metadata(tmp_path / "half.safetensors")["backbone"] == "vgg16-half"
    narrow = load_hypercolumns("vgg16-slim", str(source)).dense(images.float())
    wide = load_hypercolumns("vgg16-half", str(tmp_path / "half.safetensors")).dense(images.float())
    a, b = (m.permute(0, 2, 3, 1).flatten(0, 2) for m in (narrow, wide))
    torch.testing.assert_close(b @ b[:50].T, a @ a[:50].T, rtol=1e-4, atol=1e-5)

    out = CliRunner().invoke(cli, ["widen-backbone", str(tmp_path / "half.safetensors"), "--backbone", "vgg16-slim",
                                   "--output", str(tmp_path / "bad.safetensors")])
    assert out.exit_code != 0 and "not an integer multiple" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "bad.safetensors").exists()


def test_widening_by_four_gives_vgg16_and_seeds_pick_the_noise(slim, images):
    state = torch.random.get_rng_state()
    wide = widen_backbone(slim, 4, "vgg16", split_noise=0.05, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    assert wide.widths == build_backbone("vgg16").widths
    torch.testing.assert_close(wide.activations(images, [30])[0], slim.activations(images, [30])[0]
                               .repeat_interleave(4, dim=1), rtol=1e-9, atol=1e-9)
    other = widen_backbone(slim, 4, "vgg16", split_noise=0.05, seed=2)
    assert not torch.equal(wide.features[2].weight, other.features[2].weight)


def test_weights_that_are_no_vgg16_are_refused(slim, tmp_path):
    from safetensors.torch import save_file

    from locseg.models.widen import narrow_backbone, widen_weights

    state = {k: v.float() for k, v in slim.state_dict().items()}
    save_file({k: v for k, v in state.items() if not k.startswith("features.28.")}, str(tmp_path / "short.safetensors"))
    with pytest.raises(InputError, match="12 convolutions, expected VGG-16's 13"):
        narrow_backbone(str(tmp_path / "short.safetensors"))
    state["features.2.weight"] = state["features.2.weight"][:8]  # conv1_2 narrower than its block
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(InputError, match="not a VGG-16 backbone: key features"):
        widen_weights(str(tmp_path / "odd.safetensors"), "vgg16-half", tmp_path / "out.safetensors")


def test_widened_weights_record_their_recipe(slim, tmp_path):
    import json

    from safetensors.torch import save_file

    from locseg.models.weights import read_safetensors_metadata
    from locseg.models.widen import widen_weights

    save_file({k: v.float() for k, v in slim.state_dict().items()}, str(tmp_path / "slim.safetensors"))
    out = widen_weights(str(tmp_path / "slim.safetensors"), "vgg16", tmp_path / "wide.safetensors", seed=5)
    recipe = json.loads(read_safetensors_metadata(out)["recipe"])
    assert recipe["factor"] == 4 and recipe["seed"] == 5 and len(recipe["widened_from_digest"]) == 64


# ----------------------------------------------------------------------------- segmentation models
@pytest.fixture(scope="module")
def slim_segmentation() -> nn.Module:
    from locseg.models.segmentation import SegmentationModel, SegModelConfig

    torch.manual_seed(4)
    model = SegmentationModel(SegModelConfig(backbone="vgg16-slim")).double().eval()
    with torch.no_grad():  # GroupNorm starts at weight 1, bias 0: give it values a trained model would have
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_widened_segmentation_model_predicts_what_the_narrow_one_does(slim_segmentation, images, noise):
    from locseg.models.widen import widen_segmentation

    wide = widen_segmentation(slim_segmentation, 2, "vgg16-half", split_noise=noise)
    assert wide.config.backbone == "vgg16-half" and not wide.training
    assert wide.head.pool.stages[0][0].out_channels == 2 * slim_segmentation.head.pool.stages[0][0].out_channels
    with torch.no_grad():
        narrow, widened = slim_segmentation(images, aux=True), wide(images, aux=True)
    for name in ("logits", "features", "aux_logits"):
        torch.testing.assert_close(getattr(widened, name), getattr(narrow, name), rtol=1e-9, atol=1e-9, msg=name)
    replicas = wide.head.bottleneck[0].weight
    assert noise == 0 or not torch.allclose(replicas[:, 0::2], replicas[:, 1::2])


def test_widen_backbone_command_widens_a_segmentation_model_that_train_seg_can_continue(slim_segmentation, images,
                                                                                       tmp_path):
    from click.testing import CliRunner
    from locseg_cli.main import cli

    from locseg.models.segmentation import (
        load_segmentation_model,
        segmentation_metadata,
    )
    from locseg.models.weights import save_safetensors
    from locseg.train.segmentation import SegConfig, build_model

    source = tmp_path / "seg.safetensors"
    save_safetensors({k: v.float() for k, v in slim_segmentation.state_dict().items()}, source,
                     metadata=segmentation_metadata(slim_segmentation.config))
    out = CliRunner().invoke(cli, ["widen-backbone", str(source), "--output", str(tmp_path / "half.safetensors")])
    assert out.exit_code == 0, out.output
    wide = load_segmentation_model(str(tmp_path / "half.safetensors"))
    assert wide.config.backbone == "vgg16-half"
    continued = build_model(SegConfig(backbone="vgg16-half", init=str(tmp_path / "half.safetensors"))).eval()
    with torch.no_grad():
        expected = slim_segmentation.float()(images.float()).logits
        slim_segmentation.double()
        for model in (wide, continued):
            torch.testing.assert_close(model(images.float()).logits, expected, rtol=1e-4, atol=1e-4)


def test_replica_spread_is_zero_when_widened_and_grows_as_replicas_move_apart(slim):
    """Whatever the split noise, freshly widened replicas have the same summed incoming
    weights; moving one replica's weights shows up in that layer only."""
    wide = widen_backbone(slim, 2, "vgg16-half", split_noise=0.5)
    spread = replica_spread(wide, 2)
    assert list(spread)[:3] == ["conv1_1", "conv1_2", "conv2_1"] and len(spread) == 13
    assert max(spread.values()) < 1e-12
    conv3_1 = wide.features[10]
    with torch.no_grad():
        conv3_1.weight[1] += 0.1 * conv3_1.weight[0].norm() / conv3_1.weight[0].numel() ** 0.5
    moved = replica_spread(wide, 2)
    assert moved["conv3_1"] > 1e-3 and max(v for k, v in moved.items() if k != "conv3_1") < 1e-12


def test_replica_spread_refuses_a_factor_that_does_not_divide_the_widths(slim):
    with pytest.raises(InputError, match="factor must be an integer >= 2"):
        replica_spread(slim, 1)
    with pytest.raises(InputError, match="not 3 times"):
        replica_spread(slim, 3)
