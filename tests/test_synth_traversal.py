"""A further source traversal added to an existing street (``locseg synth-traversal``)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.main import cli
from PIL import Image

from locseg.errors import InputError, RegistryError
from locseg.io.correspondences import iter_correspondence_files, read_correspondences
from locseg.io.poses import read_poses
from locseg.synth.conditions import QUERY_CONDITIONS, SOURCE_CONDITIONS, get_condition
from locseg.synth.scene import CAR
from locseg.synth.traversal import add_traversal, recorded_traversals
from locseg.synth.validate import correspondence_errors
from locseg.train.segmentation import dataset_images

ADDED = ("synth.json", "correspondences-sunday/", "ground_truth/sunday.txt", "images/sunday/", "labels/sunday/",
         "depth/sunday/")


def _digest(root, skip: tuple[str, ...] = ()) -> str:
    """A digest of the names and bytes of every file under ``root`` but those starting with ``skip``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if not name.startswith(skip):
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def street_with_sunday(small_street, tmp_path_factory):
    """A copy of the small street, its digest before, and the entry of its added traversal."""
    street = tmp_path_factory.mktemp("traversal") / "street"
    shutil.copytree(small_street, street)
    before = _digest(street, ADDED), json.loads((street / "synth.json").read_text())
    entry = add_traversal(street, "sunday", workers=1)
    return street, before, entry


def test_source_conditions_are_not_queries():
    assert "sunday" in SOURCE_CONDITIONS and "sunday" not in QUERY_CONDITIONS
    assert "reference" not in QUERY_CONDITIONS
    sunday, reference = get_condition("sunday"), get_condition("reference")
    assert sunday.parked_cars < 1 and reference.parked_cars == 1
    assert (sunday.sun_intensity, sunday.clouds, sunday.exposure) == (
        reference.sun_intensity, reference.clouds, reference.exposure)


def test_traversal_is_recorded_and_leaves_the_street_alone(street_with_sunday):
    street, before, entry = street_with_sunday
    summary = json.loads((street / "synth.json").read_text())
    assert summary["traversals"]["sunday"] == entry
    assert entry["images"] == summary["reference_images"]
    assert entry["correspondence_pairs"] == len(list(iter_correspondence_files(street / entry["correspondences"])))
    digest, original = before
    assert _digest(street, ADDED) == digest
    assert {k: v for k, v in summary.items() if k != "traversals"} == original
    assert not list(street.parent.glob(".*partial"))


def test_traversal_drives_the_reference_poses(street_with_sunday):
    street, _, _ = street_with_sunday
    reference = read_poses(street / "ground_truth/reference.txt")
    sunday = read_poses(street / "ground_truth/sunday.txt")
    assert len(sunday) == len(reference)
    for name, pose in sunday.items():
        assert name.startswith("sunday/cam0/")
        assert np.allclose(pose.matrix(), reference["reference/" + name.split("/", 1)[1]].matrix())
        assert (street / "images" / name).is_file() and (street / "labels" / name).is_file()


def test_sunday_has_fewer_parked_cars(street_with_sunday):
    street, _, _ = street_with_sunday
    share = {}
    for source in ("reference", "sunday"):
        labels = [np.asarray(Image.open(p)) for p in sorted((street / "labels" / source).rglob("*.png"))]
        share[source] = np.mean([np.mean(label == CAR) for label in labels])
    assert share["sunday"] < 0.6 * share["reference"]


def test_source_pairs_agree_with_depth_and_poses(street_with_sunday):
    street, _, entry = street_with_sunday
    conditions = set()
    for path in iter_correspondence_files(street / entry["correspondences"]):
        pair = read_correspondences(path)
        assert pair.image_i.startswith("sunday/") and pair.image_j.split("/")[0] in QUERY_CONDITIONS
        conditions.add(pair.image_j.split("/")[0])
    assert len(conditions) >= 5
    agreement = correspondence_errors(street, entry["correspondences"])
    assert agreement.items == entry["correspondence_pairs"] and len(agreement.errors) > 10_000
    assert agreement.errors.max() < 1.0


def test_a_recorded_traversal_is_kept(street_with_sunday):
    street, _, entry = street_with_sunday
    image = street / "images/sunday/cam0/000000.png"
    stamp = image.stat().st_mtime_ns
    assert add_traversal(street, "sunday") == entry
    assert image.stat().st_mtime_ns == stamp


def test_segmentation_training_leaves_the_traversal_out(street_with_sunday, small_street):
    street, _, _ = street_with_sunday
    assert recorded_traversals(street) == ["sunday"] and recorded_traversals(small_street) == []
    assert (street / "labels/sunday").is_dir() and "sunday" not in dataset_images(street)
    assert set(dataset_images(street)) == set(dataset_images(small_street))


def test_an_interrupted_overwrite_is_not_taken_for_a_finished_one(small_street, tmp_path, monkeypatch):
    street = tmp_path / "street"
    shutil.copytree(small_street, street)
    first = add_traversal(street, "sunday", workers=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr("locseg.synth.traversal.write_condition_pairs", interrupted)
        with pytest.raises(KeyboardInterrupt):
            add_traversal(street, "sunday", workers=1, overwrite=True)
    assert recorded_traversals(street) == [] and not list(tmp_path.glob(".*partial"))
    again = add_traversal(street, "sunday", workers=1)                  # renders it again
    assert again["correspondence_pairs"] == first["correspondence_pairs"] and recorded_traversals(street) == ["sunday"]


def test_bad_inputs_are_refused(small_street, tmp_path):
    with pytest.raises(RegistryError, match="sunday"):
        add_traversal(small_street, "night")
    with pytest.raises(InputError, match="not a SynthSeasons street"):
        add_traversal(tmp_path, "sunday")
    # A street whose stored labels another scene made.
    street = tmp_path / "street"
    shutil.copytree(small_street, street)
    first = street / "labels/reference/cam0/000000.png"
    labels = np.asarray(Image.open(first))
    Image.fromarray(np.roll(labels, 40, axis=1)).save(first)
    with pytest.raises(InputError, match="another SynthSeasons scene generator"):
        add_traversal(street, "sunday")
    assert not (street / "images/sunday").exists()


def test_cli(small_street, tmp_path):
    street = tmp_path / "street"
    shutil.copytree(small_street, street)
    result = CliRunner().invoke(cli, ["synth-traversal", str(street), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "sunday images" in result.output and (street / "correspondences-sunday").is_dir()
    result = CliRunner().invoke(cli, ["synth-traversal", str(street), "--condition", "night"])
    assert result.exit_code != 0 and "night" in result.output
