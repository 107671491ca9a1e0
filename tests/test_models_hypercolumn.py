"""Tests of locseg.models.hypercolumn (dense and sparse hypercolumns, the COLMAP
to grid_sample conversion) and locseg.models.preprocess (loading, resizing with
the camera, normalisation).

The 1/4-grid relation under test: ``dense[..., y, x]`` is the hypercolumn at COLMAP
pixel ``(4x + 2, 4y + 2)``, and pixel ``(u, v)`` sits at fractional cell index
``(u/4 - 0.5, v/4 - 0.5)``. A map of stride ``s`` relates the same way with ``s``
for 4. The tests check it with an independent bilinear interpolation written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from locseg.errors import FormatError, InputError, ShapeError
from locseg.geometry import Camera
from locseg.models import (
    DEFAULT_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Hypercolumns,
    build_backbone,
    load_image,
    normalize_image,
    pixels_to_grid,
    prepare_image,
    resize_image,
    sample_feature_map,
)
from locseg.models.hypercolumn import grid_centers
from locseg.models.preprocess import resized_size

F64 = torch.float64


def bilinear(feature_map: torch.Tensor, fx: float, fy: float) -> torch.Tensor:
    """Plain bilinear interpolation of a (C, h, w) map at fractional cell index
    (fx, fy), clamped to the outermost cell centres; returns (C,)."""
    _, h, w = feature_map.shape
    fx, fy = min(max(fx, 0.0), w - 1.0), min(max(fy, 0.0), h - 1.0)
    x0, y0 = int(np.floor(fx)), int(np.floor(fy))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = fx - x0, fy - y0
    return ((1 - ax) * (1 - ay) * feature_map[:, y0, x0] + ax * (1 - ay) * feature_map[:, y0, x1]
            + (1 - ax) * ay * feature_map[:, y1, x0] + ax * ay * feature_map[:, y1, x1])


@pytest.fixture(scope="module")
def slim() -> torch.nn.Module:
    """A slim VGG-16 with seeded random weights, in float64 for exact comparisons."""
    torch.manual_seed(0)
    return build_backbone("vgg16-slim").double()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 70x53 images: neither side a multiple of 4, 8 or 16."""
    return torch.randn(2, 3, 70, 53, generator=torch.Generator().manual_seed(2), dtype=F64)


# ----------------------------------------------------------------------------- dense
def test_dense_shapes_and_unit_norm(slim, images):
    net = Hypercolumns(slim)
    assert net.layers == DEFAULT_LAYERS == (14, 17, 21, 24, 28)
    assert net.channels == 64 + 64 + 128 + 128 + 128
    with torch.no_grad():
        dense = net.dense(images)
    assert dense.shape == (2, 512, 70 // 4, 53 // 4)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, 17, 13, dtype=F64))


def test_full_vgg16_has_2048_channels():
    net = Hypercolumns(build_backbone("vgg16"))
    assert net.channels == 2048
    assert net.describe() == ("vgg16 [14 relu3_2 output, 17 pool3 output, 21 relu4_2 output, "
                              "24 pool4 output, 28 relu5_2 output] -> 2048, levels L2")
    assert Hypercolumns(build_backbone("vgg16"), normalization="joint").describe().endswith("-> 2048, joint L2")
    with torch.no_grad():
        assert net.dense(torch.randn(1, 3, 32, 48)).shape == (1, 2048, 8, 12)


def test_single_stride4_layer_is_the_normalised_activation(slim, images):
    with torch.no_grad():
        dense = Hypercolumns(slim, [14]).dense(images)
        relu3_2 = slim.activations(images, [14])[0]
    torch.testing.assert_close(dense, F.normalize(relu3_2, dim=1))


def test_deeper_layer_is_sampled_at_the_quarter_grid_centres(slim, images):
    """pool4 (stride 16) on a 70x53 image: cell (x, y) of the 1/4 grid reads pool4
    at fractional index ((4x + 2)/16 - 0.5, (4y + 2)/16 - 0.5)."""
    with torch.no_grad():
        dense = Hypercolumns(slim, [24]).dense(images)
        pool4 = slim.activations(images, [24])[0]
    assert pool4.shape[-2:] == (4, 3)
    for b in range(2):
        for y in range(dense.shape[2]):
            for x in range(dense.shape[3]):
                expected = bilinear(pool4[b], (4 * x + 2) / 16 - 0.5, (4 * y + 2) / 16 - 0.5)
                torch.testing.assert_close(dense[b, :, y, x], F.normalize(expected, dim=0))


@pytest.mark.parametrize("layer", [4, 9, 17, 24, 31])   # strides 1, 2, 8, 16, 32
def test_every_stride_reads_its_map_at_the_quarter_grid_centres(slim, images, layer):
    """Whatever the layer's stride, the dense map is that layer sampled bilinearly at the
    1/4-grid cell centres (clamped at the borders), and it is channels-last in memory."""
    with torch.no_grad():
        dense = Hypercolumns(slim, [layer]).dense(images)
        activation = slim.activations(images, [layer])[0]
    centres = grid_centers(*dense.shape[-2:], dtype=F64).reshape(1, -1, 2).expand(2, -1, -1)
    expected = sample_feature_map(activation, centres, slim.stride_entering(layer))
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), F.normalize(expected, dim=-1))
    assert dense.permute(0, 2, 3, 1).is_contiguous()


def test_dense_is_channels_last_whatever_the_input_layout(slim, images):
    """An image loaded as (H, W, 3) and viewed as (1, 3, H, W) has a batch stride of 3; the
    map must still come out channels-last, and equal to that of a contiguous input."""
    hwc = images[:1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert hwc.is_contiguous(memory_format=torch.channels_last)
    net = Hypercolumns(slim)
    with torch.no_grad():
        from_view, from_contiguous = net.dense(hwc[0][None]), net.dense(images[:1].contiguous())
    assert from_view.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(from_view, from_contiguous)


def test_multiple_of_16_matches_standard_upsampling(slim):
    """Both normalisations of the same two levels: each level to norm 1/sqrt(2) ("levels"),
    or the concatenation to norm 1, however the levels' magnitudes compare ("joint")."""
    images = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        levels = Hypercolumns(slim, [14, 24]).dense(images)
        joint = Hypercolumns(slim, [14, 24], normalization="joint").dense(images)
        relu3_2, pool4 = slim.activations(images, [14, 24])
    upsampled = F.interpolate(pool4, size=(16, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(joint, F.normalize(torch.cat([relu3_2, upsampled], dim=1), dim=1))
    torch.testing.assert_close(levels, torch.cat([F.normalize(relu3_2, dim=1), F.normalize(upsampled, dim=1)],
                                                 dim=1) / 2 ** 0.5)
    part_norms = torch.stack([levels[:, :64].norm(dim=1), levels[:, 64:].norm(dim=1)])
    torch.testing.assert_close(part_norms, torch.full_like(part_norms, 2 ** -0.5))


def test_layer_order_is_concatenation_order(slim, images):
    with torch.no_grad():
        ab = Hypercolumns(slim, [14, 24]).dense(images)
        ba = Hypercolumns(slim, [24, 14]).dense(images)
    torch.testing.assert_close(ba, torch.cat([ab[:, 64:], ab[:, :64]], dim=1))


def test_bad_layers(slim):
    with pytest.raises(InputError, match="distinct"):
        Hypercolumns(slim, [14, 14])
    with pytest.raises(InputError, match="at least one"):
        Hypercolumns(slim, [])
    with pytest.raises(InputError, match=r"in \[0, 31\]"):
        Hypercolumns(slim, [14, 40])
    with pytest.raises(InputError, match="unknown hypercolumn normalization 'l1'; valid: levels, joint"):
        Hypercolumns(slim, [14], normalization="l1")


# ----------------------------------------------------------------------------- sparse and sampling
def test_sparse_at_grid_centres_equals_dense_cells(slim, images):
    """Keypoint (4x + 2, 4y + 2), an integer COLMAP coordinate (the corner shared by
    four input pixels), reads exactly dense[..., y, x]."""
    net = Hypercolumns(slim)
    with torch.no_grad():
        dense = net.dense(images)
        ys, xs = torch.meshgrid(torch.arange(17), torch.arange(13), indexing="ij")
        keypoints = torch.stack([4 * xs + 2, 4 * ys + 2], dim=-1).reshape(1, -1, 2).expand(2, -1, -1)
        sparse = net.sparse(images, keypoints.to(F64))
    torch.testing.assert_close(sparse, dense.flatten(2).transpose(1, 2))


def test_sparse_at_pixel_centres_interpolates_the_dense_map(slim, images):
    """Input pixel (i, j) has centre (i + 0.5, j + 0.5), at fractional cell index
    ((i + 0.5)/4 - 0.5, (j + 0.5)/4 - 0.5) of the 1/4 grid."""
    net = Hypercolumns(slim)
    gen = torch.Generator().manual_seed(4)
    pixels = torch.stack([torch.randint(0, 53, (2, 40), generator=gen),
                          torch.randint(0, 70, (2, 40), generator=gen)], dim=-1)
    pixels[0, :4] = torch.tensor([[0, 0], [52, 69], [0, 69], [52, 0]])  # corners: clamped
    keypoints = pixels.to(F64) + 0.5
    with torch.no_grad():
        dense = net.dense(images)
        sparse = net.sparse(images, keypoints)
    for b in range(2):
        for n, (u, v) in enumerate(keypoints[b].tolist()):
            expected = bilinear(dense[b], u / 4 - 0.5, v / 4 - 0.5)
            torch.testing.assert_close(sparse[b, n], F.normalize(expected, dim=0))
    torch.testing.assert_close(sparse.norm(dim=-1), torch.ones(2, 40, dtype=F64))


def affine_map(coeffs: torch.Tensor, h: int, w: int, stride: float) -> torch.Tensor:
    """(1, C, h, w) map whose cell (x, y) holds a_c u + b_c v + d_c at its centre
    (u, v) = (stride (x + 0.5), stride (y + 0.5))."""
    u = (torch.arange(w, dtype=F64) + 0.5) * stride
    v = (torch.arange(h, dtype=F64) + 0.5) * stride
    a, b, d = coeffs.unbind(-1)
    return (a[:, None, None] * u[None, None, :] + b[:, None, None] * v[None, :, None] + d[:, None, None])[None]


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_sampling_an_affine_map_is_exact(stride):
    """Between the outermost cell centres bilinear interpolation reproduces an
    affine function exactly, so any half-pixel slip in the conversion shows."""
    gen = torch.Generator().manual_seed(5)
    coeffs = torch.randn(3, 3, generator=gen, dtype=F64)
    h, w = 9, 13
    feature_map = affine_map(coeffs, h, w, stride)
    lo = stride / 2
    u = lo + torch.rand(1, 500, generator=gen, dtype=F64) * (stride * w - 2 * lo)
    v = lo + torch.rand(1, 500, generator=gen, dtype=F64) * (stride * h - 2 * lo)
    sampled = sample_feature_map(feature_map, torch.stack([u, v], -1), stride)
    expected = (coeffs[:, 0] * u[..., None] + coeffs[:, 1] * v[..., None] + coeffs[:, 2])
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)


def test_hypercolumn_sample_round_trip_and_border_clamping():
    """``Hypercolumns.sample`` on a 1/4 map of a 53x70 image: exact affine values
    inside, the value at the clamped position beyond the outer cell centres."""
    net = Hypercolumns(build_backbone("vgg16-slim"))
    gen = torch.Generator().manual_seed(6)
    coeffs = torch.randn(4, 3, generator=gen, dtype=F64)
    dense = affine_map(coeffs, 70 // 4, 53 // 4, 4).expand(2, -1, -1, -1)
    uv = torch.stack([2 + torch.rand(2, 300, generator=gen, dtype=F64) * (4 * 13 - 4),
                      2 + torch.rand(2, 300, generator=gen, dtype=F64) * (4 * 17 - 4)], dim=-1)
    outside = torch.tensor([[-3.0, 10.0], [0.0, 0.0], [53.0, 70.0], [51.9, 1.0]], dtype=F64)
    uv[:, :4] = outside
    sampled = net.sample(dense, uv, (53, 70), normalize=False)
    clamped = torch.stack([uv[..., 0].clamp(2, 4 * 13 - 2), uv[..., 1].clamp(2, 4 * 17 - 2)], dim=-1)
    expected = clamped @ coeffs[:, :2].T + coeffs[:, 2]
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)
    normalized = net.sample(dense, uv, torch.tensor([53, 70]))
    torch.testing.assert_close(normalized, F.normalize(expected, dim=-1))


def test_pixels_to_grid():
    uv = torch.tensor([[0.0, 0.0], [52.0, 68.0], [2.0, 2.0], [26.0, 34.0]])
    grid = pixels_to_grid(uv, (52, 68))
    torch.testing.assert_close(grid, torch.tensor([[-1.0, -1.0], [1.0, 1.0],
                                                   [1 / 13 - 1, 1 / 17 - 1], [0.0, 0.0]]))


def test_sample_checks_shapes():
    net = Hypercolumns(build_backbone("vgg16-slim"))
    dense = torch.zeros(1, 512, 17, 13)
    with pytest.raises(ShapeError, match=r"expected \(B, C, 16, 13\)"):
        net.sample(dense, torch.zeros(1, 5, 2), (53, 64))
    with pytest.raises(ShapeError, match=r"keypoints has shape \(5, 2\)"):
        net.sample(dense, torch.zeros(5, 2), (53, 70))
    with pytest.raises(ShapeError, match="image_size"):
        net.sample(dense, torch.zeros(1, 5, 2), (53.5, 70))


def test_sparse_is_differentiable_in_the_keypoints():
    dense = torch.randn(1, 3, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(7))
    uv = torch.tensor([[[5.3, 7.1], [13.9, 10.2]]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, p: sample_feature_map(m, p, 4),
                                    (dense.requires_grad_(), uv))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(slim, images):
    net = Hypercolumns(build_backbone("vgg16-slim"))
    keypoints = torch.rand(2, 10, 2) * 50
    with torch.no_grad():
        cpu = net.sparse(images.float(), keypoints)
        gpu = net.cuda().sparse(images.float().cuda(), keypoints.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size, expected", [
    ((1024, 768), (512, 384)), ((768, 1024), (384, 512)), ((1001, 667), (512, 341)),
    ((300, 200), (300, 200)), ((512, 100), (512, 100)),
])
def test_resized_size(size, expected):
    assert resized_size(*size) == expected


def test_upsampling_only_when_asked():
    image = torch.rand(3, 200, 300)
    same, _ = resize_image(image)
    assert same is image
    bigger, _ = resize_image(image, upsample=True)
    assert bigger.shape == (3, 341, 512)
    smaller, _ = resize_image(image, max_side=150)
    assert smaller.shape == (3, 100, 150)


@pytest.mark.parametrize("model, params", [
    ("PINHOLE", [800.0, 780.0, 500.3, 333.7]),
    ("OPENCV", [800.0, 780.0, 500.3, 333.7, -0.05, 0.01, 0.001, -0.002]),
    ("SIMPLE_RADIAL", [700.0, 498.0, 340.0, -0.05]),
])
@pytest.mark.parametrize("width, height", [(1024, 768), (1001, 667)])
def test_resized_camera_projects_to_the_same_relative_place(model, params, width, height):
    """Project with the original camera and scale by (W'/W, H'/H), or project with
    the rescaled camera: the same pixel. Exact for two-focal models. A one-focal
    model cannot follow unequal x and y factors (1001x667 -> 512x341 keeps the aspect
    ratio only up to rounding): its f scales by their mean, which moves a pixel by
    exactly f (s_mean - s_axis) x_distorted, a few hundredths of a pixel here."""
    camera = Camera.from_params(model, width, height, torch.tensor(params, dtype=F64))
    resized, new_camera = resize_image(torch.rand(3, height, width), camera)
    new_height = 384 if height == 768 else 341
    assert resized.shape == (3, new_height, 512)
    assert new_camera.size.tolist() == [512, new_height]
    points = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.7, 3.5], [0.01, 0.02, 1.0]], dtype=F64)
    uv, _ = camera.project(points)
    uv_new, _ = new_camera.project(points)
    factors = torch.tensor([512 / width, new_height / height], dtype=F64)
    expected = uv * factors
    if model == "SIMPLE_RADIAL":
        xy_distorted = camera.normalize(uv)
        expected = expected + params[0] * (factors.mean() - factors) * xy_distorted
        assert (uv_new - uv * factors).abs().max() < (0.03 if width == 1001 else 1e-9)
    torch.testing.assert_close(uv_new, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("antialias", [False, True])
def test_resized_pixels_follow_the_camera_convention(antialias):
    """An image whose value at pixel centre u is u (x = u - 0.5) resizes to one whose
    value at new pixel centre u' is u' / s: what u -> s u predicts (interior
    pixels; the borders are clamped or reflected)."""
    width, height = 1000, 40
    u = torch.arange(width, dtype=F64) + 0.5
    image = u.expand(3, height, width).clone()
    resized, _ = resize_image(image, max_side=400, antialias=antialias)
    s = 400 / width
    u_new = torch.arange(400, dtype=F64) + 0.5
    torch.testing.assert_close(resized[0, 8, 10:-10], (u_new / s)[10:-10], rtol=0, atol=1e-9)


def test_camera_of_another_size_is_refused():
    camera = Camera.from_string("SIMPLE_PINHOLE 640 480 500 320 240")
    with pytest.raises(InputError, match=r"\[640.0, 480.0\] \(W, H\) but the image is 600x480"):
        resize_image(torch.rand(3, 480, 600), camera)


def test_normalize_image():
    image = torch.tensor(IMAGENET_MEAN)[:, None, None].expand(2, 3, 4, 5)
    torch.testing.assert_close(normalize_image(image), torch.zeros(2, 3, 4, 5))
    one = normalize_image(torch.ones(3, 1, 1)).flatten()
    torch.testing.assert_close(one, (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    with pytest.raises(ShapeError, match="RGB"):
        normalize_image(torch.zeros(4, 2, 2))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_load_image(tmp_path, mode):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    picture = Image.fromarray(rgb).convert(mode)
    picture.save(tmp_path / "image.png")
    image = load_image(tmp_path / "image.png")
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    expected = np.asarray(picture.convert("RGB")).astype(np.float32) / 255
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-7)


def test_load_image_errors(tmp_path):
    with pytest.raises(InputError, match="no such image file"):
        load_image(tmp_path / "absent.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(FormatError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")


def test_prepare_image(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((600, 800, 3), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    camera = Camera.from_string("PINHOLE 800 600 700 700 400 300")
    image, new_camera = prepare_image(tmp_path / "grey.png", camera)
    assert image.shape == (3, 384, 512)
    assert new_camera.params.tolist() == pytest.approx([448, 448, 256, 192])
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(image[:, 100, 100], expected)


def test_sample_feature_map_checks_shapes():
    with pytest.raises(ShapeError, match=r"uv has shape \(2, 5, 3\), expected \(2, N, 2\)"):
        sample_feature_map(torch.zeros(2, 4, 5, 6), torch.zeros(2, 5, 3), 4)
    with pytest.raises(ShapeError, match="feature_map"):
        sample_feature_map(torch.zeros(4, 5, 6), torch.zeros(1, 5, 2), 4)


# ----------------------------------------------------------------------------- scales
def _ramp_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) whose channels are 1, u / W and v / H at each pixel centre (u, v)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=F64) + 0.5, torch.arange(width, dtype=F64) + 0.5, indexing="ij")
    return torch.stack([torch.ones_like(u), u / width, v / height])[None]


@pytest.mark.parametrize("scale", [2.0, 1.25, 0.8, 0.5])
def test_each_scale_lands_on_the_quarter_grid_of_the_image_itself(scale):
    """Layer 0's hypercolumn is the input pixel (normalised), so on a ramp image each cell's
    ratios of channels decode the position it was read at: at every scale, the 1/4-grid cell
    centre of the image's own size (a half-pixel slip would show as 0.5 px)."""
    net = Hypercolumns(build_backbone("vgg16-slim").double(), layers=(0,))
    height, width = 48, 64
    dense = net.dense_at_scales(_ramp_image(height, width), (scale,))[0]
    decoded = torch.stack([dense[1] / dense[0] * width, dense[2] / dense[0] * height], dim=-1)
    centres = grid_centers(height // 4, width // 4, dtype=F64)
    inner = (slice(2, -2), slice(2, -2))     # off the border, where resizing and sampling clamp
    assert dense.shape == (3, height // 4, width // 4)
    assert (decoded - centres)[inner].abs().max() < 0.15


def test_a_single_plain_scale_is_the_plain_map_and_several_average_unit_maps(slim, images):
    net = Hypercolumns(slim)
    plain = net.dense(images)
    assert torch.equal(net.dense_at_scales(images), plain)
    assert torch.equal(net.dense_at_scales(images, (1.0,), computed={1.0: plain}), plain)
    twice = net.dense_at_scales(images, (1.0, 1.0))
    torch.testing.assert_close(twice, plain)
    several = net.dense_at_scales(images, (0.8, 1.0, 1.25))
    assert several.shape == plain.shape and several.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(several.norm(dim=1), torch.ones_like(several[:, 0]))
    larger = net.dense_at_scales(images, (1.25,))
    torch.testing.assert_close(net.dense_at_scales(images, (1.0, 1.25), computed={1.0: plain}),
                               F.normalize(plain + larger, dim=1))
    _, larger_pass = net.resized_dense(images, 1.25)          # a pass computed elsewhere is reused as it is
    torch.testing.assert_close(net.dense_at_scales(images, (1.25,), computed={1.25: larger_pass}), larger)
    with pytest.raises(InputError, match="hypercolumn scales"):
        net.dense_at_scales(images, (1.0, 0.0))
