"""Tests of locseg.models.backbone: torchvision's VGG-16 key layout, loading of a
torchvision-layout state dict, activations against a plain functional VGG-16,
the slim variant and the backbone registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from locseg.errors import FormatError, InputError, RegistryError, ShapeError
from locseg.models.backbone import (
    BACKBONES,
    build_backbone,
    load_torchvision_vgg16,
    vgg16,
    vgg16_slim,
)

# torchvision's vgg16().features, written out: (index, in_channels, out_channels)
# of its 13 3x3 convolutions; every conv is followed by a ReLU, and the max-pools
# sit at 4, 9, 16, 23, 30.
VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]
SLIM_CHANNELS = {3: 3, 64: 16, 128: 32, 256: 64, 512: 128}
POOLS = {4, 9, 16, 23, 30}
# torchvision's classifier: Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU,
# Dropout, Linear(4096, 1000).
CLASSIFIER = {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}


def expected_shapes(channels: dict[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """torchvision's ``features.*`` keys and shapes, in its order (slim if ``channels``)."""
    channels = channels or {c: c for c in (3, 64, 128, 256, 512)}
    shapes = {}
    for index, c_in, c_out in VGG16_CONVS:
        shapes[f"features.{index}.weight"] = (channels[c_out], channels[c_in], 3, 3)
        shapes[f"features.{index}.bias"] = (channels[c_out],)
    return shapes


def torchvision_state_dict(seed: int = 0, classifier: bool = True) -> dict[str, torch.Tensor]:
    """A full torchvision-layout VGG-16 state dict with random He-scaled weights.

    The classifier tensors have torchvision's shapes but are zero-stride views of
    one number: the loader must ignore them, and 400 MB of random numbers would
    only slow the test down.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes().items():
        if key.endswith("weight"):
            fan_in = shape[1] * 9
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    if classifier:
        for name, shape in CLASSIFIER.items():
            state[f"{name}.weight"] = torch.zeros(1).expand(shape)
            state[f"{name}.bias"] = torch.zeros(1).expand(shape[:1])
    return state


def reference_activations(state: dict[str, torch.Tensor], images: torch.Tensor) -> list[torch.Tensor]:
    """Activations entering every index 0..31 of a plain functional VGG-16."""
    convs = {index for index, _, _ in VGG16_CONVS}
    entering, x = [images], images
    for index in range(31):
        if index in convs:
            x = F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
        elif index in POOLS:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        else:
            x = F.relu(x)
        entering.append(x)
    return entering


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return torchvision_state_dict()


@pytest.fixture(scope="module")
def reference(state, images) -> list[torch.Tensor]:
    return reference_activations(state, images)


@pytest.fixture(scope="module")
def model(state):
    return load_torchvision_vgg16(state)


# ----------------------------------------------------------------------------- layout
def test_state_dict_keys_and_shapes_match_torchvision():
    state = vgg16().state_dict()
    expected = expected_shapes()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_slim_has_the_same_keys_with_fewer_channels():
    state = vgg16_slim().state_dict()
    expected = expected_shapes(SLIM_CHANNELS)
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert [type(a) for a in vgg16_slim().features] == [type(b) for b in vgg16().features]


def test_slim_width_factor_is_configurable():
    model = vgg16_slim(width_factor=0.5)
    assert model.widths == (32, 64, 128, 256, 256)
    assert model.state_dict()["features.28.weight"].shape == (256, 256, 3, 3)
    with pytest.raises(InputError, match="width_factor"):
        vgg16_slim(width_factor=0)


def test_layer_metadata():
    model = vgg16()
    assert model.num_layers == 31
    assert [model.channels_entering(i) for i in (0, 14, 17, 21, 24, 28, 29, 30, 31)] == \
        [3, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [model.stride_entering(i) for i in (0, 14, 17, 21, 24, 28, 30, 31)] == [1, 4, 8, 8, 16, 16, 16, 32]
    assert [model.describe_entering(i) for i in (14, 17, 21, 24, 28, 29, 30)] == [
        "relu3_2 output", "pool3 output", "relu4_2 output", "pool4 output", "relu5_2 output",
        "conv5_3 output", "relu5_3 output"]


# ----------------------------------------------------------------------------- loading
def test_torchvision_state_dict_loads_and_matches_a_plain_vgg(state, images, reference):
    model = load_torchvision_vgg16(state)
    indices = list(range(32))
    with torch.no_grad():
        ours = model.activations(images, indices)
    for index, a, b in zip(indices, ours, reference):
        assert a.shape == b.shape, index
        torch.testing.assert_close(a, b, msg=lambda m, i=index: f"entering {i}: {m}")
    assert ours[14].shape == (2, 256, 16, 12)
    assert ours[24].shape == (2, 512, 4, 3)
    assert ours[31].shape == (2, 512, 2, 1)


def test_activations_keep_the_order_asked_and_stop_after_the_last(model, images, reference):
    called = []
    hooks = [layer.register_forward_hook(lambda *_, i=index: called.append(i))
             for index, layer in enumerate(model.features)]
    with torch.no_grad():
        out = model.activations(images, [21, 14, 17, 14])
    for hook in hooks:
        hook.remove()
    assert called == list(range(21))  # features[21] and beyond never ran
    for a, index in zip(out, [21, 14, 17, 14]):
        torch.testing.assert_close(a, reference[index])


def test_conv5_3_for_netvlad(model, images, reference):
    with torch.no_grad():
        torch.testing.assert_close(model.conv5_3(images), reference[29])  # before ReLU
        relu = model.conv5_3(images, relu=True)
        torch.testing.assert_close(relu, reference[30])
    assert relu.shape == (2, 512, 4, 3) and bool((relu >= 0).all())
    assert bool((reference[29] < 0).any())


def test_loads_from_a_torch_file_and_a_wrapped_checkpoint(tmp_path, state):
    path = tmp_path / "vgg16-random.pth"
    torch.save(state, path)
    model = load_torchvision_vgg16(path)
    torch.testing.assert_close(model.features[28].weight, state["features.28.weight"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    model = load_torchvision_vgg16(tmp_path / "wrapped.pth")
    torch.testing.assert_close(model.features[0].bias, state["features.0.bias"])


def test_loads_from_safetensors_into_a_slim_model(tmp_path):
    from safetensors.torch import save_file

    slim = vgg16_slim()
    save_file({k: torch.randn(v.shape) for k, v in slim.state_dict().items()}, tmp_path / "slim.safetensors")
    loaded = load_torchvision_vgg16(tmp_path / "slim.safetensors", model=vgg16_slim())
    assert loaded.features[26].weight.shape == (128, 128, 3, 3)


def test_wrong_shape_names_the_key(state):
    state = dict(state)
    state["features.12.weight"] = torch.zeros(256, 128, 3, 3)
    with pytest.raises(InputError, match=r"features\.12\.weight has shape \(256, 128, 3, 3\), "
                                         r"expected \(256, 256, 3, 3\)"):
        load_torchvision_vgg16(state)


def test_missing_and_unexpected_keys_are_listed(state):
    state = dict(state)
    del state["features.28.bias"]
    state["features.31.weight"] = torch.zeros(3)
    with pytest.raises(InputError) as err:
        load_torchvision_vgg16(state)
    assert "missing key features.28.bias (expected shape (512,))" in str(err.value)
    assert "unexpected key features.31.weight" in str(err.value)


def test_a_full_model_into_slim_fails_and_says_why(state):
    with pytest.raises(InputError, match=r"vgg16-slim .*features\.0\.weight has shape \(64, 3, 3, 3\)"):
        load_torchvision_vgg16(state, model=vgg16_slim())


def test_foreign_state_dict_gets_a_hint(state):
    state = {f"encoder.{k[len('features.'):]}": v for k, v in state.items() if k.startswith("features.")}
    with pytest.raises(InputError, match="no features.* keys at all .*encoder.0.weight"):
        load_torchvision_vgg16(state)


def test_unreadable_file_is_a_format_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="bad.pth"):
        load_torchvision_vgg16(bad)
    with pytest.raises(InputError, match="no such weights file"):
        load_torchvision_vgg16(tmp_path / "absent.pth")


# ----------------------------------------------------------------------------- registry, checks
def test_registry():
    assert sorted(BACKBONES) == ["vgg16", "vgg16-half", "vgg16-slim"]
    assert build_backbone("vgg16-half").widths == (32, 64, 128, 256, 256)
    assert build_backbone("vgg16").widths == (64, 128, 256, 512, 512)
    assert build_backbone("vgg16-slim").widths == (16, 32, 64, 128, 128)
    assert build_backbone("vgg16-slim", width_factor=0.5).widths == (32, 64, 128, 256, 256)
    assert build_backbone("vgg16-slim").name == "vgg16-slim"


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(RegistryError, match="unknown backbone 'resnet50'; valid names: vgg16, vgg16-half, vgg16-slim"):
        build_backbone("resnet50")


def test_bad_indices_and_images():
    model = vgg16_slim()
    with pytest.raises(InputError, match=r"in \[0, 31\]"):
        model.activations(torch.zeros(1, 3, 32, 32), [32])
    with pytest.raises(InputError, match="at least one"):
        model.activations(torch.zeros(1, 3, 32, 32), [])
    with pytest.raises(ShapeError, match=r"expected \(B, 3, H, W\)"):
        model.activations(torch.zeros(3, 32, 32), [14])
    with pytest.raises(ShapeError, match="must be >= 16"):
        model.activations(torch.zeros(1, 3, 32, 12), [24])
    assert model.activations(torch.zeros(1, 3, 32, 12), [14])[0].shape == (1, 64, 8, 3)
