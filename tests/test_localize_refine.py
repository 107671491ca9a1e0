"""Feature-metric PnP refinement: Jacobians against autograd, gradient operators, robust
losses, convergence on synthetic scenes with known poses, fallbacks, batching."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from locseg.errors import InputError, RegistryError, ShapeError
from locseg.geometry import Camera, Pose
from locseg.localize.feature_gradients import FeatureField, feature_map_gradients
from locseg.localize.refine import (
    RefineConfig,
    feature_residuals,
    level_slices,
    refine_pose,
    refine_poses,
)
from locseg.localize.robust import ROBUST_LOSSES, get_robust_loss, robust_cost
from locseg.models.hypercolumn import sample_feature_map

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small problems: threads only add overhead (and the CPU may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
WIDTH, HEIGHT = 512, 384  # a 128 x 96 map of stride 4
CAMERAS = {
    "SIMPLE_PINHOLE": [300.0, 256.0, 192.0],
    "PINHOLE": [300.0, 310.0, 250.0, 190.0],
    "SIMPLE_RADIAL": [300.0, 256.0, 192.0, 0.05],
    "RADIAL": [300.0, 256.0, 192.0, 0.05, -0.01],
    "OPENCV": [300.0, 310.0, 250.0, 190.0, 0.05, -0.01, 0.002, -0.001],
}


def make_camera(model: str) -> Camera:
    return Camera.from_params(model, torch.tensor(WIDTH, dtype=D), torch.tensor(HEIGHT, dtype=D),
                              torch.tensor(CAMERAS[model], dtype=D))


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, h, w) with reflected borders."""
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def perturb(T: Pose, meters: float, degrees: float, gen: torch.Generator) -> Pose:
    """``T`` turned by ``degrees`` about a random axis (camera frame) and with its
    centre moved by ``meters`` in a random direction."""
    axis, direction = torch.randn(2, 3, generator=gen, dtype=D)
    R = Pose.from_aa(axis / axis.norm() * math.radians(degrees), torch.zeros(3, dtype=D)).R @ T.R
    center = T.center + meters * direction / direction.norm()
    return Pose.from_Rt(R, -(R @ center))


@functools.cache
def scene(model: str, seed: int = 0, channels: int = 16, num_points: int = 300):
    """A smooth random query map, a true pose, points in view and exact descriptors."""
    gen = torch.Generator().manual_seed(seed)
    camera = make_camera(model)
    fmap = blur(torch.randn(1, channels, HEIGHT // 4, WIDTH // 4, generator=gen, dtype=D), 4.0)
    fmap = fmap / fmap.std()
    uv = torch.rand(num_points, 2, generator=gen, dtype=D) * torch.tensor([WIDTH - 32.0, HEIGHT - 32.0]) + 16
    depth = 4 + 16 * torch.rand(num_points, generator=gen, dtype=D)
    p_cam = camera.unproject(uv[None])[0] * depth[:, None]
    T_true = Pose.from_aa(torch.tensor([0.05, -0.2, 0.03], dtype=D), torch.tensor([1.0, -0.5, 2.0], dtype=D))
    points = T_true.inv().transform(p_cam[None])[0]
    uv_true, _ = camera.project(T_true.transform(points[None]))
    descriptors = sample_feature_map(fmap, uv_true, 4)[0]
    return camera, fmap[0], points, descriptors, T_true


# ----------------------------------------------------------------------------- Jacobians
class AnalyticField:
    """``F_c(u, v) = sin(a_c u + b_c v + c_c)``, with its exact gradient."""

    def __init__(self, channels: int, gen: torch.Generator):
        self.abc = torch.randn(channels, 3, generator=gen, dtype=D) * torch.tensor([0.03, 0.03, 1.0], dtype=D)

    def values(self, uv: torch.Tensor) -> torch.Tensor:
        return torch.sin(uv @ self.abc[:, :2].T + self.abc[:, 2])

    def sample(self, uv):
        phase = uv @ self.abc[:, :2].T + self.abc[:, 2]
        gradient = torch.cos(phase)[..., None] * self.abc[:, :2]
        return torch.sin(phase), gradient, torch.ones(uv.shape[:-1], dtype=torch.bool)


def _points_in_view(camera: Camera, T: Pose, n: int, gen: torch.Generator) -> torch.Tensor:
    uv = torch.rand(n, 2, generator=gen, dtype=D) * torch.tensor([WIDTH - 40.0, HEIGHT - 40.0]) + 20
    p_cam = camera.unproject(uv[None])[0] * (3 + 10 * torch.rand(n, 1, generator=gen, dtype=D))
    return T.inv().transform(p_cam[None])[0]


def _autograd_jacobian(T: Pose, camera: Camera, points: torch.Tensor, descriptors: torch.Tensor,
                       features) -> torch.Tensor:
    def residuals(xi: torch.Tensor) -> torch.Tensor:
        uv, _ = camera.project((Pose.exp(xi) @ T).transform(points[None]))
        return features(uv) - descriptors
    return torch.autograd.functional.jacobian(residuals, torch.zeros(6, dtype=D), vectorize=True)


@pytest.mark.parametrize("model", list(CAMERAS))
def test_jacobian_matches_autograd_on_an_analytic_field(model):
    gen = torch.Generator().manual_seed(1)
    camera = make_camera(model)
    T = Pose.from_aa(torch.tensor([0.1, -0.3, 0.05], dtype=D), torch.tensor([0.4, 0.2, -1.0], dtype=D))
    points = _points_in_view(camera, T, 40, gen)
    field = AnalyticField(5, gen)
    descriptors = torch.randn(1, 40, 5, generator=gen, dtype=D)
    res = feature_residuals(T[None], camera, points[None], descriptors, field)
    expected = _autograd_jacobian(T, camera, points, descriptors, field.values)
    assert res.valid.all()
    torch.testing.assert_close(res.residuals, field.values(camera.project(T.transform(points[None]))[0])
                               - descriptors)
    torch.testing.assert_close(res.jacobian, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("model", list(CAMERAS))
def test_jacobian_matches_autograd_through_the_sampled_map(model):
    """On a map affine in the cell coordinates, central differences and bilinear
    interpolation are exact, so the chain through ``FeatureField`` must equal autograd
    through ``sample_feature_map`` (checks stride, x/y order and the pixel convention)."""
    gen = torch.Generator().manual_seed(2)
    camera = make_camera(model)
    T = Pose.from_aa(torch.tensor([-0.05, 0.2, 0.1], dtype=D), torch.tensor([-0.3, 0.1, 0.5], dtype=D))
    points = _points_in_view(camera, T, 40, gen)
    coefficients = torch.randn(3, 6, generator=gen, dtype=D)
    y, x = torch.meshgrid(torch.arange(HEIGHT // 4, dtype=D), torch.arange(WIDTH // 4, dtype=D), indexing="ij")
    fmap = (coefficients[0, :, None, None] + coefficients[1, :, None, None] * x
            + coefficients[2, :, None, None] * y)[None]
    descriptors = torch.randn(1, 40, 6, generator=gen, dtype=D)
    res = feature_residuals(T[None], camera, points[None], descriptors, FeatureField.from_map(fmap))
    expected = _autograd_jacobian(T, camera, points, descriptors, lambda uv: sample_feature_map(fmap, uv, 4))
    assert res.valid.all()
    torch.testing.assert_close(res.jacobian, expected, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- feature gradients
def _smooth_map(frequency: float, h: int = 24, w: int = 32) -> tuple[torch.Tensor, callable]:
    def f(x, y):  # x, y in cells
        return torch.stack([torch.sin(frequency * (x + 0.5 * y)), torch.cos(frequency * (0.7 * y - 0.3 * x))])
    y, x = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    return f(x, y)[None], f


@pytest.mark.parametrize("operator, tolerance", [("central", 3e-3), ("sobel", 6e-3)])
def test_gradient_operator_matches_a_finite_difference(operator, tolerance):
    stride, eps = 4.0, 1e-5
    fmap, f = _smooth_map(0.3)
    grads = feature_map_gradients(fmap, operator, stride)                     # (1, 2, 2, h, w)
    y, x = torch.meshgrid(torch.arange(fmap.shape[-2], dtype=D), torch.arange(fmap.shape[-1], dtype=D),
                          indexing="ij")
    d_du = (f(x + eps / stride, y) - f(x - eps / stride, y)) / (2 * eps)  # per pixel
    d_dv = (f(x, y + eps / stride) - f(x, y - eps / stride)) / (2 * eps)
    expected = torch.stack([d_du, d_dv], dim=1)[None]
    inner = (slice(None),) * 3 + (slice(1, -1), slice(1, -1))
    assert (grads[inner] - expected[inner]).abs().max() < tolerance
    assert grads.shape == (1, 2, 2, *fmap.shape[-2:])


def test_central_differences_are_second_order_and_exact_on_quadratics():
    errors = []
    for frequency in (0.2, 0.1):
        fmap, f = _smooth_map(frequency)
        y, x = torch.meshgrid(torch.arange(24, dtype=D), torch.arange(32, dtype=D), indexing="ij")
        exact = (f(x + 1e-6, y) - f(x - 1e-6, y)) / 2e-6
        errors.append((feature_map_gradients(fmap, "central", 1.0)[0, :, 0] - exact).abs().max())
    assert 7 < errors[0] / errors[1] < 9  # error ~ h^2 f''' / 6: halving the frequency divides it by 8
    quadratic = (2.0 + 0.5 * x - 0.25 * y + 0.1 * x * x - 0.2 * x * y + 0.05 * y * y)[None, None]
    grads = feature_map_gradients(quadratic, "central", 1.0)[0, 0]
    torch.testing.assert_close(grads[0], 0.5 + 0.2 * x - 0.2 * y)  # borders included
    torch.testing.assert_close(grads[1], -0.25 - 0.2 * x + 0.1 * y)


def test_feature_field_samples_cells_at_their_centres_and_masks_the_outside():
    fmap, _ = _smooth_map(0.3)
    field = FeatureField.from_map(fmap)
    uv = torch.tensor([[[4 * 5 + 2, 4 * 7 + 2], [2.0, 2.0], [1.9, 10.0], [4 * 31 + 2, 4 * 23 + 2],
                        [4 * 31 + 2.1, 50.0]]], dtype=D)
    features, jacobian, inside = field.sample(uv)
    torch.testing.assert_close(features[0, 0], fmap[0, :, 7, 5])
    torch.testing.assert_close(jacobian[0, 0], feature_map_gradients(fmap)[0, :, :, 7, 5])
    assert inside.tolist() == [[True, True, False, True, False]]
    sub = field.select_channels(1, 2)
    torch.testing.assert_close(sub.sample(uv)[1], jacobian[:, :, 1:2])
    with pytest.raises(ShapeError):
        field.select_channels(1, 3)
    with pytest.raises(RegistryError, match="central, sobel"):
        feature_map_gradients(fmap, "scharr")


# ----------------------------------------------------------------------------- robust losses
@pytest.mark.parametrize("name, scale, s, rho, weight", [
    ("squared", 1.0, [0.0, 2.0], [0.0, 2.0], [1.0, 1.0]),
    ("huber", 1.0, [0.25, 4.0], [0.25, 3.0], [1.0, 0.5]),
    ("huber", 2.0, [4.0, 16.0], [4.0, 12.0], [1.0, 0.5]),
    ("cauchy", 2.0, [0.0, 4.0], [0.0, 4 * math.log(2)], [1.0, 0.5]),
    ("geman_mcclure", 1.0, [1.0, 3.0], [0.5, 0.75], [0.25, 1 / 16]),
])
def test_robust_loss_values_and_weights(name, scale, s, rho, weight):
    got_rho, got_weight = robust_cost(name, torch.tensor(s, dtype=D), scale)
    torch.testing.assert_close(got_rho, torch.tensor(rho, dtype=D))
    torch.testing.assert_close(got_weight, torch.tensor(weight, dtype=D))


@pytest.mark.parametrize("name", list(ROBUST_LOSSES))
def test_robust_weight_is_the_derivative_of_the_loss(name):
    s = torch.tensor([1e-3, 0.3, 0.8, 2.0, 5.0], dtype=D, requires_grad=True)
    rho, weight = get_robust_loss(name)(s, 0.7)
    (derivative,) = torch.autograd.grad(rho.sum(), s)
    torch.testing.assert_close(weight, derivative)


def test_robust_loss_registry_lists_valid_names():
    with pytest.raises(RegistryError, match="cauchy, geman_mcclure, huber, squared"):
        get_robust_loss("tukey")
    with pytest.raises(RegistryError):
        RefineConfig(loss="tukey")
    with pytest.raises(InputError):
        robust_cost("huber", torch.zeros(1), 0.0)


# ----------------------------------------------------------------------------- config
def test_config_validation_and_round_trip():
    config = RefineConfig(loss="huber", levels=[[8, 16], [0, 8]])
    assert config.levels == ((8, 16), (0, 8))
    assert RefineConfig(**config.to_dict()) == config
    for bad in [{"gradient_operator": "scharr"}, {"lambda_init": 1e3}, {"lambda_factor": 1.0},
                {"max_iterations": 0}, {"max_rotation_deg": 200.0}, {"levels": [(4, 2)]},
                {"loss_scale": -1.0}, {"min_points": 0}]:
        with pytest.raises(InputError):
            RefineConfig(**bad)
    assert level_slices([256, 256, 512]) == ((512, 1024), (256, 512), (0, 256))
    assert level_slices([2, 3], coarsest_first=False) == ((0, 2), (2, 5))


# ----------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("model", ["PINHOLE", "OPENCV"])
def test_converges_from_a_perturbed_start(model):
    camera, fmap, points, descriptors, T_true = scene(model)
    gen = torch.Generator().manual_seed(3)
    T_init = perturb(T_true, 0.3, 3.0, gen)
    result = refine_pose(T_init, camera, points, descriptors, fmap)
    dt, dR = result.pose.error(T_true)
    assert dt < 0.01 and dR < 0.05, (float(dt), float(dR), result.reason)
    assert result.converged and not result.fellback, result.reason
    assert result.cost_final < 1e-6 * result.cost_initial
    assert result.num_points > 0.95 * points.shape[0]  # a few start outside the map
    assert result.covariance.shape == (6, 6)
    torch.testing.assert_close(result.pose_initial.data, T_init.data)


@pytest.mark.parametrize("loss", list(ROBUST_LOSSES))
@pytest.mark.parametrize("operator", ["central", "sobel"])
def test_every_loss_and_gradient_operator_converges(loss, operator):
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    T_init = perturb(T_true, 0.2, 2.0, torch.Generator().manual_seed(12))
    config = RefineConfig(loss=loss, loss_scale=0.5, gradient_operator=operator)
    result = refine_pose(T_init, camera, points, descriptors, fmap, config=config)
    dt, dR = result.pose.error(T_true)
    assert dt < 0.01 and dR < 0.05 and result.converged and not result.fellback, result.reason


def test_coarse_to_fine_levels_converge():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    T_init = perturb(T_true, 0.3, 3.0, torch.Generator().manual_seed(4))
    config = RefineConfig(levels=level_slices([8, 8]))
    result = refine_pose(T_init, camera, points, descriptors, fmap, config=config)
    dt, dR = result.pose.error(T_true)
    assert dt < 0.01 and dR < 0.05 and not result.fellback, result.reason
    with pytest.raises(ShapeError, match="levels"):
        refine_pose(T_init, camera, points, descriptors, fmap, config=RefineConfig(levels=[(0, 32)]))


def test_covariance_is_symmetric_positive_definite_with_noisy_features():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    noisy = descriptors + 0.05 * torch.randn(descriptors.shape, generator=torch.Generator().manual_seed(5),
                                             dtype=D)
    T_init = perturb(T_true, 0.1, 1.0, torch.Generator().manual_seed(6))
    result = refine_pose(T_init, camera, points, noisy, fmap, config=RefineConfig(loss="cauchy"))
    assert result.converged and not result.fellback, result.reason
    cov = result.covariance
    torch.testing.assert_close(cov, cov.T)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    dt, _ = result.pose.error(T_true)
    sigma_center = cov[3:, 3:].diagonal().sum().sqrt()  # camera-frame translation ~ centre here
    assert dt < 10 * sigma_center + 0.01


# ----------------------------------------------------------------------------- fallback
def test_far_start_falls_back_to_the_initial_pose():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    T_init = perturb(T_true, 10.0, 60.0, torch.Generator().manual_seed(7))
    result = refine_pose(T_init, camera, points, descriptors, fmap)
    assert result.fellback and result.reason.startswith("fallback: "), result.reason
    assert torch.equal(result.pose.data, T_init.data)
    assert result.cost_final == result.cost_initial


def test_scrambled_descriptors_fall_back():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    scrambled = descriptors[torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(8))]
    T_init = perturb(T_true, 0.3, 3.0, torch.Generator().manual_seed(9))
    result = refine_pose(T_init, camera, points, scrambled, fmap, config=RefineConfig(max_translation=0.5))
    assert result.fellback, result.reason
    assert torch.equal(result.pose.data, T_init.data)


@pytest.mark.parametrize("config, start, expected", [
    (RefineConfig(max_translation=0.1), (0.3, 1.0), "fallback: moved"),
    (RefineConfig(max_rotation_deg=1.0), (0.05, 3.0), "fallback: rotated"),
    (RefineConfig(), (0.0, 0.0), "fallback: cost did not decrease"),
    (RefineConfig(min_points=301), (0.0, 0.0), "fallback: 300 points in view at the initial pose"),
])
def test_fallback_reasons(config, start, expected):
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    T_init = perturb(T_true, *start, torch.Generator().manual_seed(10))
    result = refine_pose(T_init, camera, points, descriptors, fmap, config=config)
    assert result.fellback and result.reason.startswith(expected), result.reason
    assert torch.equal(result.pose.data, T_init.data)
    assert result.cost_final == result.cost_initial


# ----------------------------------------------------------------------------- batching
def test_batch_equals_each_problem_alone():
    _camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    gen = torch.Generator().manual_seed(11)
    starts = [perturb(T_true, 0.3, 3.0, gen), perturb(T_true, 0.1, 2.0, gen), perturb(T_true, 10.0, 60.0, gen)]
    params = torch.tensor([CAMERAS["PINHOLE"], [290.0, 300.0, 256.0, 192.0], CAMERAS["PINHOLE"]], dtype=D)
    cameras = Camera.from_params("PINHOLE", torch.tensor(WIDTH, dtype=D), torch.tensor(HEIGHT, dtype=D), params)
    counts = [300, 200, 250]
    mask = torch.arange(300)[None] < torch.tensor(counts)[:, None]
    weights = 0.5 + torch.rand(3, 300, generator=gen, dtype=D)
    batch = refine_poses(Pose.stack(starts), cameras, points.expand(3, -1, -1), descriptors.expand(3, -1, -1),
                         fmap.expand(3, -1, -1, -1), mask=mask, weights=weights)
    for i, (T_init, n) in enumerate(zip(starts, counts)):
        alone = refine_pose(T_init, cameras[i], points[:n], descriptors[:n], fmap, weights=weights[i, :n])
        one = batch[i]
        torch.testing.assert_close(one.pose.data, alone.pose.data, rtol=0, atol=1e-9)
        torch.testing.assert_close(one.cost_final, alone.cost_final, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(one.covariance, alone.covariance, rtol=1e-6, atol=1e-12, equal_nan=True)
        assert one.reason == alone.reason
        assert int(one.iterations) == int(alone.iterations) and int(one.num_points) == int(alone.num_points)
        assert bool(one.fellback) == bool(alone.fellback)


def test_input_shapes_are_checked():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    with pytest.raises(ShapeError, match="camera image sizes"):
        refine_pose(T_true, camera.resize(640, 480), points, descriptors, fmap)
    with pytest.raises(ShapeError, match="descriptors"):
        refine_pose(T_true, camera, points, descriptors[:, :8], fmap)
    with pytest.raises(InputError, match="non-negative"):
        refine_pose(T_true, camera, points, descriptors, fmap, weights=-torch.ones(points.shape[0], dtype=D))
    with pytest.raises(ShapeError, match="T_init"):
        refine_poses(T_true, camera, points[None], descriptors[None], fmap[None])


def test_central_differences_at_the_points_equal_the_interpolated_gradient_maps_inside():
    from locseg.localize.feature_gradients import CentralDifferenceField

    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 6, 20, 24, generator=g, dtype=torch.float64)
    # points at least one cell (4 px) inside the hull of the cell centres
    uv = torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * torch.tensor([4 * 20.0, 4 * 16.0]) + 6.5
    lazy = CentralDifferenceField.from_map(fmap).sample(uv)
    full = FeatureField.from_map(fmap, "central").sample(uv)
    for a, b in zip(lazy, full):
        assert torch.allclose(a, b, atol=1e-12)
    sub = CentralDifferenceField.from_map(fmap).select_channels(2, 4).sample(uv)
    assert torch.allclose(sub[0], full[0][..., 2:4], atol=1e-12)


def test_cost_tolerance_stops_early_at_the_same_pose():
    camera, fmap, points, descriptors, T_true = scene("PINHOLE")
    noisy = descriptors + 0.02 * torch.randn(descriptors.shape, generator=torch.Generator().manual_seed(12), dtype=D)
    T_init = perturb(T_true, 0.3, 3.0, torch.Generator().manual_seed(13))
    full = refine_pose(T_init, camera, points, noisy, fmap, config=RefineConfig(cost_tolerance=0.0))
    early = refine_pose(T_init, camera, points, noisy, fmap, config=RefineConfig(cost_tolerance=1e-4))
    assert early.converged and not early.fellback, early.reason
    assert int(early.iterations) < int(full.iterations)
    dt, dR = early.pose.error(full.pose)
    assert float(dt) < 1e-3 and float(dR) < 1e-2
    with pytest.raises(InputError, match="cost_tolerance"):
        RefineConfig(cost_tolerance=-1.0)
