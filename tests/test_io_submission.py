"""Submission export: dataset namings, completeness checks, the localizer's log, ``locseg export``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.export import export
from locseg_cli.main import LocsegGroup

from locseg.errors import FormatError, InputError, RegistryError
from locseg.geometry import Pose
from locseg.io.localize_log import read_failed_queries
from locseg.io.poses import read_poses, write_poses
from locseg.io.submission import (
    NAMINGS,
    export_submission,
    get_naming,
    read_query_names,
)

ROBOTCAR = [
    "night/rear/1418235223450115.jpg",
    "night/left/1418235223450115.jpg",
    "dawn/rear/1418721355859925.jpg",
    "overcast-winter/right/1416316966439710.jpg",
    "snow/rear/1418841391639882.jpg",
]
CMU = [
    "slice2/query/img_00122_c1_1303398474779487us.jpg",
    "slice2/query/img_00122_c0_1303398474779487us.jpg",
    "slice21/query/img_01234_c1_1288106311018211us.jpg",
]
AACHEN = [
    "query/night/nexus5x/IMG_20161227_173116.jpg",
    "query/day/milestone/2010-10-30_17-47-25_73.jpg",
    "query/night/nexus5x/IMG_20161227_191238.jpg",
]


def poses_for(names, seed: int = 0) -> dict[str, Pose]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(len(names), 4))
    t = rng.normal(scale=10, size=(len(names), 3))
    return {name: Pose.from_qt(q[i] / np.linalg.norm(q[i]), t[i]) for i, name in enumerate(names)}


def lines_of(path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.parametrize("dataset, query, expected", [
    ("generic", "night/cam0/000012.png", "night/cam0/000012.png"),
    ("robotcar", "night/rear/1418235223450115.jpg", "rear/1418235223450115.jpg"),
    ("robotcar", "overcast-winter/rear/1416316966439710.jpg", "rear/1416316966439710.jpg"),
    ("robotcar", "night/left/1418235223450115.jpg", None),
    ("robotcar", "night/right/1418235223450115.jpg", None),
    ("cmu", "slice2/query/img_00122_c1_1303398474779487us.jpg", "img_00122_c1_1303398474779487us.jpg"),
    ("aachen", "query/night/nexus5x/IMG_20161227_173116.jpg", "IMG_20161227_173116.jpg"),
])
def test_namings(dataset, query, expected):
    assert get_naming(dataset)(query) == expected


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(RegistryError, match="aachen, cmu, generic, robotcar"):
        get_naming("kitti")
    with pytest.raises(RegistryError, match="'kitti'"):
        export_submission({}, ["a.jpg"], "kitti", "unused.txt")


def test_robotcar_name_without_camera_is_refused():
    with pytest.raises(InputError, match="1418235223450115.jpg"):
        NAMINGS["robotcar"]("1418235223450115.jpg")


@pytest.mark.parametrize("dataset, names", [("robotcar", ROBOTCAR), ("cmu", CMU), ("aachen", AACHEN)])
def test_every_submitted_query_gets_its_pose_in_list_order(tmp_path, dataset, names):
    results = poses_for(names)
    summary = export_submission(results, names, dataset, tmp_path / "sub" / "submission.txt")
    naming = NAMINGS[dataset]
    expected = [(naming(n), n) for n in names if naming(n) is not None]
    written = read_poses(summary.output)
    assert list(written) == [s for s, _ in expected]
    for submission, query in expected:
        assert written[submission].q.tolist() == pytest.approx(results[query].q.tolist(), abs=1e-12)
        assert written[submission].t.tolist() == pytest.approx(results[query].t.tolist(), abs=1e-12)
    assert summary.written == len(expected)
    assert summary.skipped == len(names) - len(expected)
    assert summary.fallbacks is None and summary.filled == 0


def test_robotcar_puts_all_conditions_in_one_file_and_skips_left_right(tmp_path):
    summary = export_submission(poses_for(ROBOTCAR), ROBOTCAR, "robotcar", tmp_path / "s.txt")
    assert [fields[0] for fields in lines_of(summary.output)] == [
        "rear/1418235223450115.jpg", "rear/1418721355859925.jpg", "rear/1418841391639882.jpg"]
    assert (summary.written, summary.skipped) == (3, 2)


def test_quaternion_is_normalised_with_non_negative_w(tmp_path):
    # The results file holds a non-unit quaternion with w < 0; the submission holds the unit, w >= 0 one.
    q = np.array([-0.5, 0.5, -0.5, 0.5]) * 3
    path = tmp_path / "pre.txt"
    path.write_text(f"{AACHEN[0]} {' '.join(map(str, q))} 1 2 3\n")
    results = read_poses(path)
    summary = export_submission(results, AACHEN[:1], "aachen", tmp_path / "s.txt")
    ((name, *values),) = lines_of(summary.output)
    values = np.array(values, dtype=float)
    assert name == "IMG_20161227_173116.jpg"
    np.testing.assert_allclose(values[:4], [0.5, -0.5, 0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(values[4:], [1, 2, 3])


def test_missing_queries_are_an_error_naming_them(tmp_path):
    results = poses_for(CMU[:1])
    output = tmp_path / "s.txt"
    with pytest.raises(InputError, match=r"2 of 3 queries .*img_00122_c0.*img_01234_c1.*re-run localize"):
        export_submission(results, CMU, "cmu", output)
    assert not output.exists()


def test_missing_queries_take_the_callers_fallback(tmp_path):
    results = poses_for(CMU[:1])
    fallback = Pose.from_qt([1.0, 0, 0, 0], [0.0, 0, 0])
    summary = export_submission(results, CMU, "cmu", tmp_path / "s.txt", fallback=lambda name: fallback)
    assert (summary.written, summary.filled) == (3, 2)
    assert lines_of(summary.output)[2][1:] == ["1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"]


def test_left_right_images_need_no_pose(tmp_path):
    names = [n for n in ROBOTCAR if "/rear/" in n]
    summary = export_submission(poses_for(names), ROBOTCAR, "robotcar", tmp_path / "s.txt")
    assert (summary.written, summary.skipped) == (3, 2)


def test_two_queries_with_one_submission_name_are_an_error(tmp_path):
    names = ["night/rear/1418235223450115.jpg", "dusk/rear/1418235223450115.jpg"]
    with pytest.raises(InputError, match=r"'night/rear/1418235223450115.jpg' and 'dusk/rear/1418235223450115.jpg'"):
        export_submission(poses_for(names), names, "robotcar", tmp_path / "s.txt")
    with pytest.raises(InputError, match="listed twice"):
        export_submission(poses_for(CMU), [CMU[0], CMU[0]], "generic", tmp_path / "s.txt")


def test_summary_counts_fallbacks_and_ignored_names(tmp_path):
    results = poses_for([*ROBOTCAR, "sun/rear/1.jpg"])
    failed = {ROBOTCAR[0], ROBOTCAR[1], "rain/rear/2.jpg"}  # one rear, one left (skipped), one unlisted
    summary = export_submission(results, ROBOTCAR, "robotcar", tmp_path / "s.txt", failed=failed)
    assert (summary.fallbacks, summary.ignored_results, summary.ignored_failed) == (1, 1, 1)


def test_query_names_with_or_without_intrinsics(tmp_path):
    with_intrinsics = tmp_path / "with.txt"
    with_intrinsics.write_text(
        "# hloc list\nquery/night/nexus5x/IMG_20161227_173116.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.035\n"
        "query/day/milestone/2010-10-30_17-47-25_73.jpg SIMPLE_RADIAL 1024 768 869.1 512 384 0.001\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(ROBOTCAR) + "\n\n")
    assert read_query_names(with_intrinsics) == AACHEN[:2]
    assert read_query_names(plain) == ROBOTCAR
    plain.write_text(f"{ROBOTCAR[0]}\n{ROBOTCAR[1]}\n{ROBOTCAR[0]}\n")
    with pytest.raises(FormatError, match=r"plain.txt:3: duplicate name"):
        read_query_names(plain)
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{AACHEN[0]} SIMPLE_PINHOLE 1600 1200 1469.2 800 600\n{AACHEN[1]}\n")
    with pytest.raises(FormatError, match=r"mixed.txt:2:"):
        read_query_names(mixed)


def write_log(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_log_gives_failed_queries_and_tolerates_a_truncated_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"name": AACHEN[0], "success": True, "inliers": 212},
               {"name": AACHEN[1], "success": False, "inliers": 3},
               {"name": AACHEN[2], "success": False},
               {"name": AACHEN[2], "success": True}]  # a resumed run: the last record wins
    write_log(log, records, tail='{"name": "query/night/nexus5x/IMG_2016')
    assert read_failed_queries(log) == {AACHEN[1]}
    write_log(log, records)
    assert read_failed_queries(log) == {AACHEN[1]}


@pytest.mark.parametrize("bad, message", [
    ('{"name": "a.jpg", "succ', "not valid JSON"),  # cut short, yet followed by a line
    ('["a.jpg", false]', "expected a JSON object"),
    ('{"name": "a.jpg"}', "'success' must be true or false"),
    ('{"name": "a.jpg", "success": 0}', "'success' must be true or false"),
    ('{"success": false}', "'name' must be a non-empty string"),
])
def test_malformed_log_lines_name_file_and_line(tmp_path, bad, message):
    log = tmp_path / "log.jsonl"
    log.write_text(f'{{"name": "b.jpg", "success": true}}\n{bad}\n{{"name": "c.jpg", "success": false}}\n')
    with pytest.raises(FormatError, match=rf"log.jsonl:2: {message}"):
        read_failed_queries(log)


def test_malformed_terminated_last_line_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"name": "b.jpg", "success": true}\n{"name": "c.jpg"\n')
    with pytest.raises(FormatError, match=r"log.jsonl:2: not valid JSON"):
        read_failed_queries(log)


def run(*args):
    group = LocsegGroup()  # the error handling of the locseg command
    group.add_command(export)
    return CliRunner().invoke(group, ["export", *map(str, args)])


def test_cli_end_to_end(tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(ROBOTCAR) + "\n")
    results = write_poses(tmp_path / "results.txt", poses_for(ROBOTCAR))
    log = tmp_path / "log.jsonl"
    write_log(log, [{"name": n, "success": i != 2} for i, n in enumerate(ROBOTCAR)])
    output = tmp_path / "out" / "submission.txt"
    out = run("--results", results, "--queries", queries, "--dataset", "robotcar", "--output", output, "--log", log)
    assert out.exit_code == 0, out.output
    assert out.stdout == (f"wrote 3 poses to {output} (dataset robotcar; 1 fallbacks; "
                          "2 non-rear images skipped)\n")
    assert len(lines_of(output)) == 3
    out = run("--results", results, "--queries", queries, "--dataset", "generic", "--output", output)
    assert out.exit_code == 0, out.output
    assert "(dataset generic; fallbacks unknown (no --log); 0 non-rear images skipped)" in out.stdout
    assert len(lines_of(output)) == 5


def test_cli_errors_are_one_line(tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(CMU) + "\n")
    results = write_poses(tmp_path / "results.txt", poses_for(CMU[:2]))
    output = tmp_path / "submission.txt"
    out = run("--results", results, "--queries", queries, "--dataset", "kitti", "--output", output)
    assert out.exit_code == 2
    errors = [line for line in out.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and "'kitti'" in errors[0] and "robotcar" in errors[0]
    out = run("--results", results, "--queries", queries, "--dataset", "cmu", "--output", output)
    assert out.exit_code == 2 and out.stderr.count("\n") == 1
    assert "1 of 3 queries have no pose" in out.stderr and "img_01234_c1" in out.stderr
    assert not output.exists()
