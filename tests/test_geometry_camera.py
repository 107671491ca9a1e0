"""Tests of locseg.geometry.camera against pycolmap (projection, unprojection,
rescaling) and autograd (Jacobians), for every supported COLMAP model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locseg.errors import InputError, RegistryError, ShapeError
from locseg.geometry import MODELS, Camera

F64 = torch.float64
WIDTH, HEIGHT = 640, 480
ALL_MODELS = sorted(MODELS)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=gen, dtype=F64)


def random_camera(gen: torch.Generator, model: str, *shape: int) -> Camera:
    """Cameras of a 640x480 image with realistic distortion, invertible over the
    whole image (the image corners lie within a normalised radius of 0.86, where
    r (1 + k1 r^2 + k2 r^4) is still increasing for these coefficients)."""
    values = {
        "f": uniform(gen, shape, 500, 800), "fx": uniform(gen, shape, 500, 800),
        "fy": uniform(gen, shape, 500, 800),
        "cx": uniform(gen, shape, 300, 340), "cy": uniform(gen, shape, 220, 260),
        "k": uniform(gen, shape, -0.1, 0.1), "k1": uniform(gen, shape, -0.1, 0.1),
        "k2": uniform(gen, shape, -0.02, 0.02),
        "p1": uniform(gen, shape, -0.01, 0.01), "p2": uniform(gen, shape, -0.01, 0.01),
    }
    params = torch.stack([values[name] for name in MODELS[model].param_names], dim=-1)
    return Camera.from_params(model, WIDTH, HEIGHT, params)


def random_points(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Points in front of the camera whose normalised coordinates lie in [-0.5, 0.5]^2."""
    xy = uniform(gen, (*shape, 2), -0.5, 0.5)
    z = uniform(gen, (*shape, 1), 1.0, 10.0)
    return torch.cat([xy * z, z], dim=-1)


def random_pixels(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return uniform(gen, (*shape, 2), 0, 1) * torch.tensor([WIDTH, HEIGHT], dtype=F64)


def blockwise_jacobian(fn, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Per-row Jacobian of ``fn`` (..., n_in) -> (..., n_out) by autograd.functional.jacobian."""
    batch, n_in = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, n_in)
    J = torch.autograd.functional.jacobian(lambda y: fn(y.reshape(x.shape)).reshape(-1, n_out), flat)
    return J.diagonal(dim1=0, dim2=2).permute(2, 0, 1).reshape(*batch, n_out, n_in)


# ----------------------------------------------------------------------------- agreement with pycolmap


@pytest.mark.parametrize("model", ALL_MODELS)
def test_project_matches_pycolmap(gen, model):
    cams = random_camera(gen, model, 4)
    p = random_points(gen, 4, 50)
    uv, valid = cams.project(p)
    assert uv.shape == (4, 50, 2) and valid.shape == (4, 50) and bool(valid.all())
    for i in range(4):
        expected = cams[i].to_colmap().img_from_cam(p[i].numpy())
        np.testing.assert_allclose(uv[i].numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_unproject_matches_pycolmap(gen, model):
    cams = random_camera(gen, model, 4)
    uv = random_pixels(gen, 4, 50)
    rays = cams.unproject(uv)
    assert rays.shape == (4, 50, 3)
    torch.testing.assert_close(rays[..., 2], torch.ones(4, 50, dtype=F64))
    for i in range(4):
        expected = torch.from_numpy(cams[i].to_colmap().cam_from_img(uv[i].numpy()))
        error_px = ((rays[i, :, :2] - expected) * cams[i].f).abs().max()
        assert float(error_px) < 1e-6
    uv_back, valid = cams.project(rays)
    assert bool(valid.all())
    torch.testing.assert_close(uv_back, uv, atol=1e-9, rtol=0)


@pytest.mark.parametrize("model", ALL_MODELS)
@pytest.mark.parametrize("factor", [0.5, 0.37, 2.0, 1 / 3])
def test_scale_matches_pycolmap_rescale(gen, model, factor):
    cam = Camera.from_params(model, 101, 81, random_camera(gen, model).params)  # odd sizes: rounding
    expected = cam.to_colmap()
    expected.rescale(factor)
    scaled = cam.scale(factor)
    assert (int(scaled.width), int(scaled.height)) == (expected.width, expected.height)
    np.testing.assert_allclose(scaled.params.numpy(), expected.params, rtol=1e-14)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_resize_matches_pycolmap_rescale(gen, model):
    cam = random_camera(gen, model)
    expected = cam.to_colmap()
    expected.rescale(320, 200)  # anisotropic
    resized = cam.resize(320, 200)
    assert resized.to_colmap().width == 320 and resized.to_colmap().height == 200
    np.testing.assert_allclose(resized.params.numpy(), expected.params, rtol=1e-14)


def test_scale_per_axis_maps_pixels(gen):
    cam = random_camera(gen, "PINHOLE")
    p = random_points(gen, 10)
    scaled = cam.scale((0.5, 0.25))  # 640x480 -> 320x120 exactly
    uv, _ = cam.project(p)
    uv_scaled, _ = scaled.project(p)
    torch.testing.assert_close(uv_scaled, uv * torch.tensor([0.5, 0.25], dtype=F64))
    torch.testing.assert_close(scaled.size, torch.tensor([320.0, 120.0], dtype=F64))


@pytest.mark.parametrize("model", ALL_MODELS)
def test_colmap_and_string_round_trips(gen, model):
    cam = random_camera(gen, model)
    colmap_cam = cam.to_colmap(camera_id=7)
    assert colmap_cam.camera_id == 7 and colmap_cam.model_name == model
    torch.testing.assert_close(Camera.from_colmap(colmap_cam).data, cam.data)
    line = cam.to_string()
    assert line.split()[:3] == [model, "640", "480"]
    back = Camera.from_string(line)
    assert back.model == model
    torch.testing.assert_close(back.data, cam.data, rtol=0, atol=0)
    stacked = Camera.from_colmap([colmap_cam, colmap_cam])
    assert stacked.shape == (2,) and stacked.model == model


# ----------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("model", ALL_MODELS)
def test_J_project_matches_autograd(gen, model):
    cams = random_camera(gen, model, 2, 3)
    p = random_points(gen, 2, 3, 5)
    J = cams.J_project(p)
    assert J.shape == (2, 3, 5, 2, 3)
    J_auto = blockwise_jacobian(lambda x: cams.project(x)[0], p, 2)
    torch.testing.assert_close(J, J_auto, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_J_distort_matches_autograd_and_undistort_inverts(gen, model):
    cams = random_camera(gen, model, 3)
    xy = uniform(gen, (3, 20, 2), -0.6, 0.6)
    J = cams.J_distort(xy)
    assert J.shape == (3, 20, 2, 2)
    torch.testing.assert_close(J, blockwise_jacobian(cams.distort, xy, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cams.undistort(cams.distort(xy)), xy, atol=1e-13, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_unproject_whole_image_grid_round_trips(seed):
    gen = torch.Generator().manual_seed(seed)
    cams = random_camera(gen, "OPENCV", 8)
    u, v = torch.meshgrid(torch.linspace(0, WIDTH, 33, dtype=F64), torch.linspace(0, HEIGHT, 25, dtype=F64),
                          indexing="xy")
    uv = torch.stack([u, v], dim=-1).reshape(-1, 2)
    uv_back, _ = cams.project(cams.unproject(uv))
    torch.testing.assert_close(uv_back, uv.expand_as(uv_back), atol=1e-9, rtol=0)


def test_unproject_beyond_the_distortion_fold_is_nan():
    # r (1 - 0.5 r^2) peaks at 0.544 (r = 0.816): distorted radii above it have no preimage
    cam = Camera.from_string("SIMPLE_RADIAL 640 480 500 320 240 -0.5")
    uv = torch.tensor([[320.0 + 0.3 * 500, 240.0], [320.0 + 0.6 * 500, 240.0]], dtype=F64)
    rays = cam.unproject(uv)
    assert bool(torch.isfinite(rays[0]).all()) and bool(torch.isnan(rays[1, :2]).all())
    torch.testing.assert_close(cam.project(rays[:1])[0], uv[:1])
    assert np.isnan(cam.to_colmap().cam_from_img(uv.numpy())[1]).all()


def test_undistort_is_differentiable(gen):
    cam = random_camera(gen, "OPENCV")
    xy = uniform(gen, (4, 2), -0.4, 0.4).requires_grad_(True)
    J_undistort = blockwise_jacobian(cam.undistort, xy.detach(), 2)
    J_distort = cam.J_distort(cam.undistort(xy.detach()))
    torch.testing.assert_close(J_undistort @ J_distort, torch.eye(2, dtype=F64).expand(4, 2, 2),
                               atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- behaviour


def test_accessors_of_one_focal_model():
    cam = Camera.from_string("SIMPLE_RADIAL 640 480 500 320 240 0.1")
    torch.testing.assert_close(cam.f, torch.tensor([500.0, 500.0], dtype=F64))
    torch.testing.assert_close(cam.c, torch.tensor([320.0, 240.0], dtype=F64))
    expected_K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=F64)
    torch.testing.assert_close(cam.K(), expected_K)
    torch.testing.assert_close(cam.size, torch.tensor([640.0, 480.0], dtype=F64))
    assert float(cam.width) == 640 and float(cam.height) == 480
    assert "SIMPLE_RADIAL" in repr(cam) and "640x480" in repr(cam)


def test_pixel_convention_principal_ray_and_image_bounds():
    cam = Camera.from_params("PINHOLE", 4, 2, torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=F64))
    uv, _ = cam.project(torch.tensor([[0.0, 0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(uv, torch.tensor([[2.0, 1.0]], dtype=F64))
    corners = torch.tensor([[0.0, 0.0], [0.5, 0.5], [3.999, 1.999], [4.0, 1.0], [1.0, 2.0],
                            [-1e-9, 1.0]], dtype=F64)
    assert cam.in_image(corners).tolist() == [True, True, True, False, False, False]
    assert cam.in_image(corners, margin=0.5).tolist() == [False, True, False, False, False, False]


def test_points_behind_the_camera_are_invalid_and_finite(gen):
    cam = random_camera(gen, "OPENCV")
    p = torch.tensor([[0.1, 0.2, 2.0], [0.1, 0.2, -2.0], [0.1, 0.2, 0.0]], dtype=F64)
    uv, valid = cam.project(p)
    assert valid.tolist() == [True, False, False]
    assert bool(torch.isfinite(uv).all()) and bool(torch.isfinite(cam.J_project(p)).all())
    pycolmap_uv = cam.to_colmap().img_from_cam(p.numpy())
    assert np.isnan(pycolmap_uv[1:]).all()  # pycolmap agrees these are not projections


def test_batched_camera_with_shared_points_and_broadcasting(gen):
    cams = random_camera(gen, "RADIAL", 2, 3)
    p = random_points(gen, 7)
    uv, valid = cams.project(p)
    assert uv.shape == (2, 3, 7, 2) and valid.shape == (2, 3, 7)
    torch.testing.assert_close(uv[1, 2], cams[1, 2].project(p)[0])
    assert cams.unproject(uv).shape == (2, 3, 7, 3)
    assert cams.J_project(p).shape == (2, 3, 7, 2, 3)
    assert cams.K().shape == (2, 3, 3, 3) and cams.f.shape == (2, 3, 2)
    assert cams.scale(0.5).shape == (2, 3)
    assert len(cams) == 2 and cams[0].shape == (3,) and cams[..., 1].shape == (2,)


def test_dtype_and_numpy_inputs(gen):
    cam64 = random_camera(gen, "OPENCV")
    cam32 = Camera.from_params("OPENCV", 640, 480, cam64.params.numpy().astype(np.float32))
    assert cam32.dtype == torch.float32
    p = random_points(gen, 20)
    uv32, _ = cam32.project(p.numpy().astype(np.float32))
    assert uv32.dtype == torch.float32
    assert cam32.project(p)[0].dtype == torch.float32  # inputs take the camera's dtype
    torch.testing.assert_close(uv32.double(), cam64.project(p)[0], atol=1e-3, rtol=0)
    rays32 = cam32.unproject(uv32)
    torch.testing.assert_close(rays32.double(), cam64.unproject(uv32.double()), atol=1e-5, rtol=0)
    assert cam32.double().dtype == F64 and cam64.float().dtype == torch.float32


def test_stack_requires_one_model(gen):
    a, b = random_camera(gen, "PINHOLE"), random_camera(gen, "PINHOLE")
    assert Camera.stack([a, b]).shape == (2,)
    with pytest.raises(InputError, match="models PINHOLE and OPENCV"):
        Camera.stack([a, random_camera(gen, "OPENCV")])


def test_bad_inputs_raise_named_errors():
    with pytest.raises(RegistryError, match="valid names: OPENCV, PINHOLE, RADIAL"):
        Camera.from_string("FISHEYE 640 480 500 320 240")
    with pytest.raises(InputError, match=r"PINHOLE expects 4 params \(fx, fy, cx, cy\), got 3"):
        Camera.from_string("PINHOLE 640 480 500 320 240")
    with pytest.raises(InputError, match="integers"):
        Camera.from_string("PINHOLE 640.5 480 500 500 320 240")
    with pytest.raises(InputError, match="MODEL WIDTH HEIGHT"):
        Camera.from_string("PINHOLE")
    with pytest.raises(InputError, match="non-numeric"):
        Camera.from_string("SIMPLE_PINHOLE 640 480 500 x 240")
    with pytest.raises(ShapeError, match="OPENCV expects 8 params"):
        Camera.from_params("OPENCV", 640, 480, torch.zeros(4))
    with pytest.raises(InputError, match="positive"):
        Camera.from_params("PINHOLE", 0, 480, [1.0, 1, 1, 1])
    with pytest.raises(ShapeError, match="data has shape"):
        Camera("PINHOLE", torch.zeros(5))
    cam = Camera.from_params("PINHOLE", 640, 480, torch.ones(2, 4))
    with pytest.raises(ShapeError, match="p_cam has shape"):
        cam.project(torch.zeros(5, 2))
    with pytest.raises(ShapeError, match="p_cam has shape"):
        cam.project(torch.zeros(3))
    with pytest.raises(ShapeError, match="does not broadcast against the camera batch shape"):
        cam.project(torch.zeros(3, 5, 3))
    with pytest.raises(ShapeError, match="uv has shape"):
        cam.unproject(torch.zeros(5, 3))
    with pytest.raises(InputError, match="unbatched"):
        cam.to_string()
    with pytest.raises(InputError, match="unbatched"):
        cam.to_colmap()
    with pytest.raises(InputError, match="positive"):
        cam.scale(-1.0)
    with pytest.raises(ShapeError, match="factors has shape"):
        cam.scale((0.5, 0.5, 0.5))
