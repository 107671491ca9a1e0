"""Cross-Season Correspondence files: the dataset's layout, round trip, bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from locseg.errors import FormatError, InputError, ShapeError
from locseg.io.correspondences import (
    CorrespondencePair,
    iter_correspondence_files,
    read_correspondences,
    write_correspondences,
)

IMAGE_I = "overcast-reference/rear/1417176458999821.jpg"
IMAGE_J = "night/rear/1418235223450115.jpg"


def chars(text: str) -> np.ndarray:
    """A MATLAB 1×L char array as h5py sees it: (L, 1) uint16 codes."""
    return np.array([[ord(c)] for c in text], dtype=np.uint16)


def write_dataset_style(path, n=5, transposed=False, seed=0, skip=None):
    """A file laid out as the released dataset is, written with plain h5py."""
    rng = np.random.default_rng(seed)
    pt_i, pt_j = rng.uniform(0, 1024, (n, 2)), rng.uniform(0, 1024, (n, 2))
    dist = rng.uniform(0, 3, (n, 1))
    data = {
        "im_i_path": chars(IMAGE_I),
        "im_j_path": chars(IMAGE_J),
        "pt_i": pt_i.T if transposed else pt_i,
        "pt_j": pt_j.T if transposed else pt_j,
        "dist_from_center": dist,
    }
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key != skip:
                f.create_dataset(key, data=value)
    return pt_i, pt_j, dist[:, 0]


@pytest.mark.parametrize("transposed", [False, True])
def test_reads_dataset_layout(tmp_path, transposed):
    path = tmp_path / "pair0.mat"
    pt_i, pt_j, dist = write_dataset_style(path, n=7, transposed=transposed)
    pair = read_correspondences(path)
    assert pair.image_i == IMAGE_I and pair.image_j == IMAGE_J
    assert len(pair) == 7
    assert pair.points_i.dtype == np.float64 and pair.points_i.shape == (7, 2)
    # Files put pixel centres on integers; locseg holds COLMAP coordinates (centres at +0.5).
    np.testing.assert_array_equal(pair.points_i, pt_i + 0.5)
    np.testing.assert_array_equal(pair.points_j, pt_j + 0.5)
    np.testing.assert_array_equal(pair.dist_from_center, dist)


def test_two_points_are_read_as_n_by_2(tmp_path):
    path = tmp_path / "pair.mat"
    pt_i, _, _ = write_dataset_style(path, n=2)
    np.testing.assert_array_equal(read_correspondences(path).points_i, pt_i + 0.5)


def test_pixel_convention_on_disk(tmp_path):
    """The centre of the top-left pixel is (0.5, 0.5) in locseg and (0, 0) in the file."""
    pair = CorrespondencePair("a.jpg", "b.jpg", [[0.5, 0.5]], [[10.5, 20.5]], [0.01])
    path = write_correspondences(tmp_path / "pair.mat", pair)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["pt_i"][()], [[0.0, 0.0]])
        np.testing.assert_array_equal(f["pt_j"][()], [[10.0, 20.0]])


@pytest.mark.parametrize("n", [0, 1, 2, 50])
def test_round_trip(tmp_path, n):
    rng = np.random.default_rng(n)
    pair = CorrespondencePair(IMAGE_I, "snow/ü/é.jpg", rng.uniform(0, 500, (n, 2)),
                              rng.uniform(0, 500, (n, 2)), rng.uniform(0, 2, n))
    path = write_correspondences(tmp_path / "out" / "pair.mat", pair)
    read = read_correspondences(path)
    assert (read.image_i, read.image_j) == (pair.image_i, pair.image_j)
    np.testing.assert_array_equal(read.points_i, pair.points_i)
    np.testing.assert_array_equal(read.points_j, pair.points_j)
    np.testing.assert_array_equal(read.dist_from_center, pair.dist_from_center)


def test_round_trip_empty_name(tmp_path):
    pair = CorrespondencePair("", "b.jpg", np.ones((1, 2)), np.zeros((1, 2)), np.ones(1))
    read = read_correspondences(write_correspondences(tmp_path / "pair.mat", pair))
    assert (read.image_i, read.image_j, len(read)) == ("", "b.jpg", 1)


def test_written_file_is_matlab_v73(tmp_path):
    pair = CorrespondencePair("a.jpg", "b.jpg", np.ones((3, 2)), np.zeros((3, 2)), np.ones(3))
    path = write_correspondences(tmp_path / "pair.mat", pair)
    header = path.read_bytes()[:128]
    assert header.startswith(b"MATLAB 7.3 MAT-file")
    assert header[124:128] == b"\x00\x02IM"
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        assert f["im_i_path"].dtype == np.uint16 and f["im_i_path"].shape == (5, 1)
        assert f["im_i_path"].attrs["MATLAB_class"] == b"char"
        assert f["pt_i"].shape == (3, 2) and f["pt_i"].attrs["MATLAB_class"] == b"double"
        assert f["dist_from_center"].shape == (3, 1)


def test_written_bytes_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    pair = CorrespondencePair("a.jpg", "b.jpg", np.ones((3, 2)), np.zeros((3, 2)), np.ones(3))
    first = write_correspondences(tmp_path / "1.mat", pair).read_bytes()
    monkeypatch.setattr("time.time", lambda: 2e9)
    assert write_correspondences(tmp_path / "2.mat", pair).read_bytes() == first


def test_missing_dataset(tmp_path):
    path = tmp_path / "broken.mat"
    write_dataset_style(path, skip="pt_j")
    with pytest.raises(FormatError, match=r"broken\.mat.*missing dataset\(s\) pt_j"):
        read_correspondences(path)


@pytest.mark.parametrize("pt_i, pt_j, message", [
    (np.zeros((4, 3)), np.zeros((4, 2)), r"broken\.mat.*pt_i has shape \(4, 3\)"),
    (np.zeros((4, 2)), np.zeros((5, 2)), "pt_i has 4 points but pt_j has 5"),
])
def test_ill_shaped_points(tmp_path, pt_i, pt_j, message):
    path = tmp_path / "broken.mat"
    with h5py.File(path, "w") as f:
        f["im_i_path"], f["im_j_path"] = chars("a"), chars("b")
        f["pt_i"], f["pt_j"] = pt_i, pt_j
        f["dist_from_center"] = np.zeros(4)
    with pytest.raises(FormatError, match=message):
        read_correspondences(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "old.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(FormatError, match=r"old\.mat.*not an HDF5"):
        read_correspondences(path)


def test_pair_checks_shapes():
    with pytest.raises(ShapeError, match="points_j"):
        CorrespondencePair("a", "b", np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(3))


def test_iter_files_sorted(tmp_path):
    for name in ["b.mat", "a.mat", "c.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.mat").mkdir()
    assert [p.name for p in iter_correspondence_files(tmp_path)] == ["a.mat", "b.mat"]
    with pytest.raises(InputError, match="not a directory"):
        iter_correspondence_files(tmp_path / "a.mat")
