"""Query lists: round trip and the errors a user sees for a bad line."""

from __future__ import annotations

import numpy as np
import pytest

from locseg.errors import FormatError, InputError
from locseg.geometry import Camera
from locseg.io.queries import read_query_list, write_query_list

LIST = """\
# hloc query list
night/cam0/000012.png OPENCV 1024 768 868.99 866.06 525.94 420.04 -0.0239 0.0293 0.0 0.0

dusk/cam1/000001.png SIMPLE_RADIAL 640 480 500.5 320 240 0.01
  snow/cam0/a.png PINHOLE 800 600 700 710 400 300
"""


def test_reads_hloc_list(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text(LIST)
    queries = read_query_list(path)
    assert [name for name, _ in queries] == ["night/cam0/000012.png", "dusk/cam1/000001.png", "snow/cam0/a.png"]
    camera = queries[0][1]
    assert camera.model == "OPENCV"
    assert (int(camera.width), int(camera.height)) == (1024, 768)
    np.testing.assert_allclose(np.asarray(camera.params), [868.99, 866.06, 525.94, 420.04, -0.0239, 0.0293, 0, 0])


def test_round_trip(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text(LIST)
    queries = read_query_list(path)
    out = write_query_list(tmp_path / "copy" / "queries.txt", queries)
    again = read_query_list(out)
    assert [(n, c.to_string()) for n, c in again] == [(n, c.to_string()) for n, c in queries]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("x.png OPENCV 640 480 1 2 3 4", "OPENCV takes 8 parameters (fx, fy, cx, cy, k1, k2, p1, p2), got 4"),
        ("x.png FISHEYE 640 480 1 2 3 4", "unknown camera model 'FISHEYE'; valid models: SIMPLE_PINHOLE"),
        ("x.png PINHOLE 640 480 1 2 3 four", "'four' is not a number"),
        ("x.png PINHOLE 64.5 480 1 2 3 4", "WIDTH '64.5' is not a positive integer"),
        ("x.png PINHOLE 640 0 1 2 3 4", "HEIGHT '0' is not a positive integer"),
        ("x.png PINHOLE 640 4²0 1 2 3 4", "HEIGHT '4²0' is not a positive integer"),
        ("x.png PINHOLE 640 480 0 -5 320 240", "PINHOLE focal lengths must be positive, got [0.0, -5.0]"),
        ("x.png PINHOLE 640", "expected 'name MODEL WIDTH HEIGHT params...', got 3 field(s)"),
        ("night/cam0/000012.png PINHOLE 640 480 1 2 3 4", "duplicate name 'night/cam0/000012.png' (first on line 2)"),
    ],
)
def test_bad_line_names_file_line_and_expectation(tmp_path, bad, words):
    path = tmp_path / "my_queries.txt"
    path.write_text(LIST + bad + "\n" + "y.png PINHOLE 640 480 1 2 3 4\n")
    with pytest.raises(FormatError) as info:
        read_query_list(path)
    assert str(info.value).startswith(f"{path}:6: ")
    assert words in str(info.value)


def test_write_refuses_bad_names(tmp_path):
    camera = Camera.from_string("SIMPLE_PINHOLE 10 10 5 5 5")
    with pytest.raises(InputError):
        write_query_list(tmp_path / "q.txt", [("a b.png", camera)])
    with pytest.raises(InputError, match="twice"):
        write_query_list(tmp_path / "q.txt", [("a.png", camera), ("a.png", camera)])
