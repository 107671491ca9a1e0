"""Pose files: round trip, normalisation, malformed lines."""

from __future__ import annotations

import numpy as np
import pytest

from locseg.errors import FormatError, InputError
from locseg.geometry import Pose
from locseg.io.poses import read_poses, write_poses


def random_poses(n: int, seed: int = 0) -> dict[str, Pose]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = rng.normal(scale=10, size=(n, 3))
    return {f"night/cam{i % 2}/{i:06d}.png": Pose.from_qt(q[i], t[i]) for i in range(n)}


def as_arrays(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(pose.q, dtype=np.float64), np.asarray(pose.t, dtype=np.float64)


def test_round_trip(tmp_path):
    poses = random_poses(20)
    path = write_poses(tmp_path / "sub" / "poses.txt", poses)
    read = read_poses(path)
    assert list(read) == list(poses)
    for name, pose in poses.items():
        q0, t0 = as_arrays(pose)
        q1, t1 = as_arrays(read[name])
        np.testing.assert_allclose(q1, q0, atol=1e-12)
        np.testing.assert_allclose(t1, t0, atol=1e-12)


def test_written_quaternions_are_normalised_with_positive_w(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("a/x.png -2 0 0 0 1 2 3\n# comment\n\n  b/y.png 0.5 -0.5 0.5 -0.5 0 0 0\n")
    poses = read_poses(path)
    out = write_poses(tmp_path / "out.txt", poses)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    values = np.array([[float(v) for v in line.split()[1:]] for line in lines])
    np.testing.assert_allclose(np.linalg.norm(values[:, :4], axis=1), 1.0)
    assert (values[:, 0] >= 0).all()
    np.testing.assert_allclose(values[0], [1, 0, 0, 0, 1, 2, 3])


def test_reads_crlf_and_byte_order_mark(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeffa/x.png 1 0 0 0 1 2 3\r\nb/y.png 1 0 0 0 4 5 6\r\n".encode("utf-8"))
    poses = read_poses(path)
    assert list(poses) == ["a/x.png", "b/y.png"]
    np.testing.assert_allclose(as_arrays(poses["b/y.png"])[1], [4, 5, 6])


def test_write_leaves_no_temporary_file(tmp_path):
    write_poses(tmp_path / "poses.txt", random_poses(3))
    write_poses(tmp_path / "poses.txt", random_poses(2, seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["poses.txt"]
    assert len(read_poses(tmp_path / "poses.txt")) == 2


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("a 1 0 0 0 0 0 0\nb 1 0 0 0 0 0\n", 2, "expected 8 fields"),
        ("a 1 0 0 0 0 0 0\n\n# c\nb 1 0 0 zero 0 0 0\n", 4, "'zero' is not a number"),
        ("a 1 0 0 0 0 0 nan\n", 1, "not finite"),
        ("a 0 0 0 0 0 0 0\n", 1, "zero norm"),
        ("a 1 0 0 0 0 0 0\nb 1 0 0 0 0 0 0\na 1 0 0 0 1 1 1\n", 3, "duplicate name 'a' (first on line 1)"),
    ],
)
def test_malformed_lines(tmp_path, content, line, words):
    path = tmp_path / "bad_poses.txt"
    path.write_text(content)
    with pytest.raises(FormatError) as info:
        read_poses(path)
    message = str(info.value)
    assert f"bad_poses.txt:{line}:" in message
    assert words in message
    assert info.value.line == line


def test_binary_file_is_a_format_error(tmp_path):
    path = tmp_path / "poses.bin"
    path.write_bytes(b"a 1 0 0 0 0 0 0\n\xff\xfe\x00")
    with pytest.raises(FormatError, match=r"poses\.bin: not a UTF-8 text file"):
        read_poses(path)


def test_write_refuses_names_with_whitespace(tmp_path):
    with pytest.raises(InputError, match="whitespace"):
        write_poses(tmp_path / "p.txt", {"a b.png": Pose.from_qt(np.array([1.0, 0, 0, 0]), np.zeros(3))})
    assert not (tmp_path / "p.txt").exists()


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_poses(tmp_path / "nope.txt")
