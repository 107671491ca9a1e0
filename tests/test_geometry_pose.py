"""Tests of locseg.geometry.rotation and locseg.geometry.pose.

Ground truth comes from independent implementations where one exists
(pycolmap for rotations and rigid transforms, ``torch.linalg.matrix_exp`` for
the SE(3) exponential, autograd for Jacobians), otherwise from round trips.
"""

from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest
import torch

from locseg.errors import InputError, ShapeError
from locseg.geometry import (
    Pose,
    axis_angle_to_matrix,
    left_perturbation_jacobian,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_angle,
    skew,
)

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def random_quaternions(gen: torch.Generator, *shape: int) -> torch.Tensor:
    q = torch.randn(*shape, 4, generator=gen, dtype=F64)
    return q / q.norm(dim=-1, keepdim=True)


def random_poses(gen: torch.Generator, *shape: int) -> Pose:
    t = torch.randn(*shape, 3, generator=gen, dtype=F64) * 3
    return Pose.from_qt(random_quaternions(gen, *shape), t)


def axis_angles(gen: torch.Generator, n: int, angle: float) -> torch.Tensor:
    axis = torch.randn(n, 3, generator=gen, dtype=F64)
    return axis / axis.norm(dim=-1, keepdim=True) * angle


def twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    """The 4x4 Lie-algebra matrix of xi = (omega, v)."""
    out = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    out[..., :3, :3] = skew(xi[..., :3])
    out[..., :3, 3] = xi[..., 3:]
    return out


def assert_rotation(R: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype))


# ----------------------------------------------------------------------------- rotation.py


def test_skew_is_cross_product(gen):
    a, b = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    torch.testing.assert_close((skew(a) @ b[..., None]).squeeze(-1), torch.linalg.cross(a, b))


def test_quaternion_to_matrix_matches_pycolmap(gen):
    q = random_quaternions(gen, 20)
    R = quaternion_to_matrix(q)
    for qi, Ri in zip(q, R):
        w, x, y, z = qi.tolist()
        expected = pycolmap.Rotation3d(np.array([x, y, z, w])).matrix()
        np.testing.assert_allclose(Ri.numpy(), expected, atol=1e-14)
    assert_rotation(R)


def test_quaternion_matrix_round_trip_batched(gen):
    q = random_quaternions(gen, 2, 3)
    q_back = matrix_to_quaternion(quaternion_to_matrix(q))
    assert q_back.shape == (2, 3, 4)
    assert bool((q_back[..., 0] >= 0).all())
    torch.testing.assert_close(q_back, torch.where(q[..., :1] < 0, -q, q))


@pytest.mark.parametrize("angle", [math.pi, math.pi - 1e-9, math.pi - 1e-5, 1e-9, 0.0])
def test_matrix_to_quaternion_at_extreme_angles(gen, angle):
    aa = torch.cat([torch.eye(3, dtype=F64) * angle, axis_angles(gen, 20, angle)])
    R = axis_angle_to_matrix(aa)
    q = matrix_to_quaternion(R)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q), dtype=F64))
    torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-14, rtol=0)


def test_axis_angle_known_rotation_about_z():
    theta = 0.7
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, theta], dtype=F64))
    c, s = math.cos(theta), math.sin(theta)
    expected = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)
    torch.testing.assert_close(R, expected)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-7, 1e-3, 0.5, 2.0, math.pi - 1e-4, math.pi - 1e-8])
def test_axis_angle_round_trip(gen, angle):
    aa = axis_angles(gen, 16, angle)
    R = axis_angle_to_matrix(aa)
    assert_rotation(R)
    torch.testing.assert_close(R, torch.linalg.matrix_exp(skew(aa)), atol=1e-14, rtol=0)
    torch.testing.assert_close(matrix_to_axis_angle(R), aa, atol=1e-12 if angle > 3 else 1e-14,
                               rtol=1e-12)
    torch.testing.assert_close(rotation_angle(R), torch.full((16,), angle, dtype=F64),
                               atol=1e-12 if angle > 3 else 1e-14, rtol=1e-12)


def test_matrix_to_axis_angle_at_pi_gives_a_valid_logarithm(gen):
    aa = axis_angles(gen, 16, math.pi)
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    torch.testing.assert_close(back.norm(dim=-1), torch.full((16,), math.pi, dtype=F64))
    torch.testing.assert_close(axis_angle_to_matrix(back), axis_angle_to_matrix(aa), atol=1e-14, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-3, 1.0])
def test_rotation_conversions_have_exact_gradients_near_zero(gen, angle):
    aa = axis_angles(gen, 1, angle)[0].requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    # the logarithm undoes the exponential, so its chained Jacobian is identity
    J = torch.autograd.functional.jacobian(lambda x: matrix_to_axis_angle(axis_angle_to_matrix(x)),
                                           aa.detach())
    torch.testing.assert_close(J, torch.eye(3, dtype=F64), atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- constructors


def test_from_qt_and_accessors_match_pycolmap(gen):
    T = random_poses(gen, 8)
    for i in range(8):
        rigid = T[i].to_colmap()
        top = torch.from_numpy(rigid.matrix())
        torch.testing.assert_close(T[i].matrix()[:3], top)
        w, x, y, z = T[i].q.tolist()
        np.testing.assert_allclose(rigid.rotation.quat, [x, y, z, w], atol=1e-15)
        torch.testing.assert_close(T[i].center, torch.from_numpy(rigid.tgt_origin_in_src()))


def test_pycolmap_round_trip_and_composition(gen):
    T1, T2 = random_poses(gen, 2)
    r1, r2 = T1.to_colmap(), T2.to_colmap()
    assert isinstance(r1, pycolmap.Rigid3d)
    torch.testing.assert_close(Pose.from_colmap(r1).data, T1.data)
    torch.testing.assert_close((T1 @ T2).matrix()[:3], torch.from_numpy((r1 * r2).matrix()))
    torch.testing.assert_close(T1.inv().matrix()[:3], torch.from_numpy(r1.inverse().matrix()))
    p = torch.randn(6, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(T1.transform(p), torch.from_numpy(r1 * p.numpy()))
    stacked = Pose.from_colmap([r1, r2])
    assert stacked.shape == (2,)
    torch.testing.assert_close(stacked.data, Pose.stack([T1, T2]).data)


def test_quaternion_output_is_standardised(gen):
    q = random_quaternions(gen, 10)
    t = torch.zeros(10, 3, dtype=F64)
    T_neg = Pose.from_qt(-q * 3.0, t)
    torch.testing.assert_close(T_neg.data, Pose.from_qt(q, t).data)
    assert bool((T_neg.q[:, 0] >= 0).all())
    torch.testing.assert_close(T_neg.q.norm(dim=-1), torch.ones(10, dtype=F64))


def test_matrix_round_trip(gen):
    T = random_poses(gen, 2, 3)
    M = T.matrix()
    assert M.shape == (2, 3, 4, 4)
    torch.testing.assert_close(M[..., 3, :], torch.tensor([0, 0, 0, 1.0], dtype=F64).expand(2, 3, 4))
    torch.testing.assert_close(Pose.from_matrix(M).data, T.data)
    torch.testing.assert_close(Pose.from_matrix(M[..., :3, :]).data, T.data)


def test_from_aa_and_identity():
    T = Pose.from_aa([0.0, 0.0, math.pi / 2], [1.0, 0.0, 0.0])
    torch.testing.assert_close(T.transform(torch.tensor([1.0, 0.0, 0.0])), torch.tensor([1.0, 1.0, 0.0]))
    eye = Pose.identity((2, 3), dtype=F64)
    assert eye.shape == (2, 3) and eye.dtype == F64
    torch.testing.assert_close(eye.matrix(), torch.eye(4, dtype=F64).expand(2, 3, 4, 4))


def test_from_Rt_broadcasts_batch_shapes(gen):
    R = random_poses(gen, 3).R  # (3, 3, 3)
    t = torch.randn(2, 1, 3, generator=gen, dtype=F64)
    T = Pose.from_Rt(R, t)
    assert T.shape == (2, 3)
    torch.testing.assert_close(T.R[1, 2], R[2])
    torch.testing.assert_close(T.t[1, 2], t[1, 0])


def test_numpy_inputs_and_dtype_preservation():
    T64 = Pose.from_qt(np.array([1.0, 0, 0, 0]), np.array([1.0, 2, 3]))
    assert T64.dtype == F64 and isinstance(T64.R, torch.Tensor)
    T32 = Pose.from_qt(np.array([1.0, 0, 0, 0], np.float32), torch.tensor([1.0, 2, 3]))
    assert T32.dtype == torch.float32
    mixed = Pose.from_qt(np.array([1.0, 0, 0, 0]), [1, 2, 3])  # float64 and int list
    assert mixed.dtype == F64
    assert T64.float().dtype == torch.float32 and T32.double().dtype == F64
    assert T64.to(torch.float32).dtype == torch.float32
    assert Pose.exp(np.zeros(6)).log().dtype == F64


# ----------------------------------------------------------------------------- group operations


def test_inverse_and_composition(gen):
    T_b_from_a, T_c_from_b = random_poses(gen, 2, 2, 3)
    eye = torch.eye(4, dtype=F64).expand(2, 3, 4, 4)
    torch.testing.assert_close((T_b_from_a @ T_b_from_a.inv()).matrix(), eye)
    torch.testing.assert_close((T_b_from_a.inv() @ T_b_from_a).matrix(), eye)
    T_c_from_a = T_c_from_b @ T_b_from_a
    torch.testing.assert_close(T_c_from_a.matrix(), T_c_from_b.matrix() @ T_b_from_a.matrix())
    p_a = torch.randn(2, 3, 7, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(T_c_from_a.transform(p_a), T_c_from_b.transform(T_b_from_a.transform(p_a)))
    torch.testing.assert_close(T_c_from_b.compose(T_b_from_a).data, T_c_from_a.data)


def test_composition_broadcasts(gen):
    T = random_poses(gen, 4)
    T0 = random_poses(gen)
    assert (T0 @ T).shape == (4,)
    assert (T[:, None] @ T[None, :]).shape == (4, 4)
    torch.testing.assert_close((T[:, None] @ T[None, :])[1, 2].data, (T[1] @ T[2]).data)


def test_transform_point_shapes(gen):
    T = random_poses(gen, 2, 3)
    M = T.matrix()
    sets = torch.randn(2, 3, 5, 3, generator=gen, dtype=F64)
    expected = (M[..., None, :3, :3] @ sets[..., None]).squeeze(-1) + M[..., None, :3, 3]
    torch.testing.assert_close(T.transform(sets), expected)
    # one point per pose
    torch.testing.assert_close(T.transform(sets[..., 0, :]), expected[..., 0, :])
    # a set shared by all poses
    shared = T.transform(sets[0, 0][None, None])
    assert shared.shape == (2, 3, 5, 3)
    torch.testing.assert_close(shared[1, 2], T[1, 2].transform(sets[0, 0]))
    # one point moved by every pose, and an unbatched pose on a set
    assert T.transform(torch.zeros(3, dtype=F64)).shape == (2, 3, 3)
    torch.testing.assert_close(T.transform(torch.zeros(3, dtype=F64)), T.t)
    assert T[0, 0].transform(sets[0, 0]).shape == (5, 3)


def test_center_is_mapped_to_origin(gen):
    T = random_poses(gen, 5)
    torch.testing.assert_close(T.transform(T.center), torch.zeros(5, 3, dtype=F64), atol=1e-14, rtol=0)


# ----------------------------------------------------------------------------- exp / log


def test_exp_matches_matrix_exponential(gen):
    xi = torch.randn(2, 3, 6, generator=gen, dtype=F64)
    T = Pose.exp(xi)
    assert T.shape == (2, 3)
    torch.testing.assert_close(T.matrix(), torch.linalg.matrix_exp(twist_matrix(xi)))


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 5e-3, 0.011, 1.0, 3.0, math.pi - 1e-6, math.pi - 1e-12,
                                   math.pi])
def test_exp_log_round_trip(gen, angle):
    omega = axis_angles(gen, 10, angle)
    v = torch.randn(10, 3, generator=gen, dtype=F64)
    xi = torch.cat([omega, v], dim=-1)
    T = Pose.exp(xi)
    torch.testing.assert_close(T.matrix(), torch.linalg.matrix_exp(twist_matrix(xi)), atol=1e-14, rtol=1e-12)
    if angle < math.pi:  # at exactly pi, omega and -omega are both logarithms
        torch.testing.assert_close(T.log(), xi, atol=1e-12, rtol=0)
    torch.testing.assert_close(Pose.exp(T.log()).data, T.data, atol=1e-12, rtol=0)


def test_log_exp_round_trip_for_random_poses(gen):
    T = random_poses(gen, 2, 3)
    xi = T.log()
    assert xi.shape == (2, 3, 6)
    assert bool((xi[..., :3].norm(dim=-1) <= math.pi + 1e-12).all())
    torch.testing.assert_close(Pose.exp(xi).data, T.data)


@pytest.mark.parametrize("scale", [0.0, 1e-10, 1e-4, 0.3])
def test_exp_and_log_gradients(gen, scale):
    xi = (torch.randn(6, generator=gen, dtype=F64) * scale).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: Pose.exp(x).data, (xi,))
    J = torch.autograd.functional.jacobian(lambda x: Pose.exp(x).log(), xi.detach())
    assert bool(torch.isfinite(J).all())
    torch.testing.assert_close(J, torch.eye(6, dtype=F64), atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- Jacobians


def test_transform_jacobian_matches_autograd(gen):
    T = random_poses(gen, 2, 3)
    p = torch.randn(2, 3, 4, 3, generator=gen, dtype=F64)
    J = T.transform_jacobian(p)
    assert J.shape == (2, 3, 4, 3, 6)

    def perturbed(delta: torch.Tensor) -> torch.Tensor:  # left update, one delta per pose
        return (Pose.exp(delta) @ T).transform(p)

    J_auto = torch.autograd.functional.jacobian(perturbed, torch.zeros(2, 3, 6, dtype=F64))
    # (2, 3, 4, 3, 2, 3, 6): keep the blocks where the point's pose is the perturbed one
    J_auto = J_auto.diagonal(dim1=0, dim2=4).diagonal(dim1=0, dim2=3).permute(3, 4, 0, 1, 2)
    torch.testing.assert_close(J, J_auto)
    torch.testing.assert_close(left_perturbation_jacobian(T.transform(p)), J)


def test_left_perturbation_jacobian_structure():
    p = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    J = left_perturbation_jacobian(p)
    torch.testing.assert_close(J[0, :, :3], -skew(p[0]))
    torch.testing.assert_close(J[0, :, 3:], torch.eye(3, dtype=F64))


# ----------------------------------------------------------------------------- metrics


def test_error_and_magnitude_known_values():
    T_gt = Pose.from_aa([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    T_est = Pose.from_aa([0.0, math.radians(10.0), 0.0], [0.0, 0.0, 2.0])
    dt, dR = T_est.error(T_gt)
    # centre of T_est is -R^T t = -2 * (third row of R)
    torch.testing.assert_close(dt, torch.tensor(2.0))
    torch.testing.assert_close(dR, torch.tensor(10.0))
    mt, mR = T_est.magnitude()
    torch.testing.assert_close(mt, torch.tensor(2.0))
    torch.testing.assert_close(mR, torch.tensor(10.0))


def test_error_matches_centres_and_relative_rotation(gen):
    T_est, T_gt = random_poses(gen, 2, 6)
    dt, dR = T_est.error(T_gt)
    torch.testing.assert_close(dt, (T_est.center - T_gt.center).norm(dim=-1))
    for i in range(6):
        rel = T_est[i].to_colmap().rotation * T_gt[i].to_colmap().rotation.inverse()
        assert float(dR[i]) == pytest.approx(math.degrees(rel.angle()), abs=1e-9)
    dt0, dR0 = T_gt.error(T_gt)
    torch.testing.assert_close(dt0, torch.zeros(6, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(dR0, torch.zeros(6, dtype=F64), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- container behaviour


def test_indexing_len_stack_and_repr(gen):
    T = random_poses(gen, 2, 3)
    assert len(T) == 2 and T[1].shape == (3,) and T[:, 0].shape == (2,)
    assert T[..., 1].shape == (2,) and T[1, ..., 2].shape == ()
    assert T[torch.tensor([True, False])].shape == (1, 3)
    torch.testing.assert_close(T[1, 2].data, T.data[1, 2])
    assert Pose.stack([T, T], dim=1).shape == (2, 2, 3)
    assert T.reshape(6).shape == (6,)
    assert "shape=(2, 3)" in repr(T) and "q_wxyz" in repr(T[0, 0])
    with pytest.raises(TypeError):
        len(T[0, 0])


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ShapeError, match="R has shape"):
        Pose.from_Rt(torch.eye(4), torch.zeros(3))
    with pytest.raises(ShapeError, match="t has shape"):
        Pose.from_Rt(torch.eye(3), torch.zeros(4))
    with pytest.raises(ShapeError, match="batch shapes of R"):
        Pose.from_Rt(torch.eye(3).expand(2, 3, 3), torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="q has shape"):
        Pose.from_qt(torch.ones(3), torch.zeros(3))
    with pytest.raises(InputError, match="zero norm"):
        Pose.from_qt(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ShapeError, match="xi has shape"):
        Pose.exp(torch.zeros(5))
    with pytest.raises(ShapeError, match="T has shape"):
        Pose.from_matrix(torch.eye(3))
    with pytest.raises(ShapeError, match="data has shape"):
        Pose(torch.zeros(2, 11))
    with pytest.raises(InputError, match="numeric"):
        Pose.from_qt("not a quaternion", [0, 0, 0])
    T = Pose.identity((2,))
    with pytest.raises(ShapeError, match="points has shape"):
        T.transform(torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="do not broadcast"):
        T.transform(torch.zeros(3, 4, 3))
    with pytest.raises(InputError, match="unbatched"):
        T.to_colmap()
    with pytest.raises(InputError, match="compose"):
        T.compose(torch.eye(4))
    with pytest.raises(InputError, match="Rigid3d"):
        Pose.from_colmap(np.eye(4))
