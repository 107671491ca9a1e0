"""``train-seg`` at tiny scale on the small street: the loss falls, resume is exact; and the
commands ``train-seg``, ``segment`` and ``evaluate-seg`` end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from locseg_cli.segment import segment, train_seg
from PIL import Image

from locseg.errors import InputError
from locseg.models.seg_inference import SegmentSettings, store_model_id
from locseg.models.weights import load_state_dict, read_safetensors_metadata
from locseg.store import FeatureStore
from locseg.train.checkpoint import load_checkpoint
from locseg.train.segmentation import (
    SegConfig,
    build_model,
    make_optimizer,
    select_images,
    spread,
    train_segmentation,
)

TINY = SegConfig(max_side=96, iterations=8, warmup=4, lr=0.02, checkpoint_every=1, validate_every=0,
                 labels_per_condition=1, max_points=256)


class Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one thread (conftest.one_thread)."""


def test_labelled_images_are_all_references_and_a_few_per_condition(small_street):
    training, validation = select_images([small_street], dataclasses.replace(TINY, validation_per_condition=1))
    conditions = [item.condition for item in training]
    assert conditions.count("reference") == 24
    assert all(conditions.count(c) == 1 for c in set(conditions) - {"reference"}) and len(set(conditions)) == 8
    assert len(validation) == 7 and not {v.name for v in validation} & {t.name for t in training}
    assert spread(15, 5) == [1, 4, 7, 10, 13] and spread(3, 5) == [0, 1, 2]


def test_loss_falls_and_resume_is_exact(small_street, tmp_path):
    straight = load_checkpoint(train_segmentation([small_street], tmp_path / "straight.pt", TINY))
    history = straight.metrics["history"]
    assert "corr" not in history[3] and history[4]["points"] > 0  # warm-up, then correspondences
    assert np.mean([h["sup"] for h in history[-3:]]) < 0.8 * history[0]["sup"]

    def kill_at_step_6(stage, done, total, parts):
        if done == 6:
            raise Killed
    with pytest.raises(Killed):  # the checkpoint of step 5 survives
        train_segmentation([small_street], tmp_path / "killed.pt", TINY, progress=kill_at_step_6)
    assert load_checkpoint(tmp_path / "killed.pt").step == 5
    with pytest.raises(InputError, match="exists"):
        train_segmentation([small_street], tmp_path / "killed.pt", TINY)
    resumed = load_checkpoint(train_segmentation([small_street], tmp_path / "killed.pt", TINY, resume=True))
    assert resumed.metrics["history"] == history
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)


def test_correspondences_can_come_from_folders_whose_labels_are_never_read(small_street, tmp_path):
    labelled_only = tmp_path / "labelled"          # images and labels, no correspondences/
    pairs_only = tmp_path / "pairs"                # correspondences and images, no labels/
    for root, folders in ((labelled_only, ("images", "labels")), (pairs_only, ("images", "correspondences"))):
        root.mkdir()
        for folder in folders:
            (root / folder).symlink_to(small_street / folder)
    config = dataclasses.replace(TINY, iterations=5, checkpoint_every=4)
    with pytest.raises(InputError, match="no correspondences: no correspondences/ folder in .*labelled"):
        train_segmentation([labelled_only], tmp_path / "none.pt", config)
    extra = [(pairs_only / "correspondences", pairs_only / "images")]
    history = load_checkpoint(train_segmentation([labelled_only], tmp_path / "extra.pt", config,
                                                 extra_correspondences=extra)).metrics["history"]
    assert history[4]["points"] > 0

    def refused(match, datasets, extra, **kwargs):
        with pytest.raises(InputError, match=match):
            train_segmentation(datasets, tmp_path / "refused.pt", config, extra_correspondences=extra, **kwargs)
    refused("no such folder: .*nowhere", [labelled_only], [(tmp_path / "nowhere", pairs_only / "images")])
    refused("given twice", [small_street], [(small_street / "correspondences", small_street / "images")])
    refused("image root .*pairs does not hold", [labelled_only], [(pairs_only / "correspondences", pairs_only)])

    def kill_at_step_5(stage, done, total, parts):
        if done == 5:
            raise Killed
    with pytest.raises(Killed):                    # the checkpoint of step 4 survives
        train_segmentation([labelled_only], tmp_path / "killed.pt", config, extra_correspondences=extra,
                           progress=kill_at_step_5)
    with pytest.raises(InputError, match="trained on other data"):
        train_segmentation([small_street], tmp_path / "killed.pt", config, resume=True)
    resumed = train_segmentation([labelled_only], tmp_path / "killed.pt", config, resume=True,
                                 extra_correspondences=extra)
    assert load_checkpoint(resumed).metrics["history"] == history

    base = ["--dataset", str(labelled_only), "--output", str(tmp_path / "cli.pt")]
    out = CliRunner().invoke(train_seg, [*base, "--correspondences", str(pairs_only / "correspondences")])
    assert out.exit_code == 2 and "one --images root per --correspondences folder" in out.output
    out = CliRunner().invoke(train_seg, [*base, "--lambda", "0.5", "--iterations", "1", "--max-side", "96"])
    assert "labels only (no correspondences/ folder)" in out.output and isinstance(out.exception, InputError)
    out = CliRunner().invoke(train_seg, [*base, "--lambda", "0", "--iterations", "1", "--max-side", "96",
                                         "--correspondences", str(pairs_only / "correspondences"), "--images", str(pairs_only / "images")])
    assert out.exit_code == 0, out.output
    assert "the 1 --correspondences folder(s) are not read" in out.output


def test_init_from_a_segmentation_model_continues_it(small_street, tmp_path):
    first = train_segmentation([small_street], tmp_path / "first.pt", dataclasses.replace(TINY, iterations=2))
    weights = first.with_suffix(".safetensors")
    model = build_model(dataclasses.replace(TINY, init=str(weights)))
    saved = load_state_dict(weights)
    for name, value in model.state_dict().items():          # heads included, not only the backbone
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    with pytest.raises(InputError, match="do not fit this model"):
        build_model(dataclasses.replace(TINY, backbone="vgg16", init=str(weights)))


def test_the_backbone_learns_at_its_own_scale_of_the_rate():
    def rates(config):
        groups = make_optimizer(build_model(config), config).param_groups
        return [group["lr"] for group in groups]
    assert rates(SegConfig(lr=0.02)) == [0.02, pytest.approx(0.002)]           # finetune: 0.1x by default
    assert rates(SegConfig(lr=0.02, backbone_lr_scale=1.0)) == [0.02, 0.02]
    frozen = SegConfig(lr=0.02, backbone_mode="frozen")
    model = build_model(frozen)
    assert [group["lr"] for group in make_optimizer(model, frozen).param_groups] == [0.02]
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(InputError, match="'frozen' trains no backbone.*1.0"):
        SegConfig(backbone_mode="frozen", backbone_lr_scale=1.0)
    with pytest.raises(InputError, match="backbone_lr_scale must be >= 0"):
        SegConfig(backbone_lr_scale=-0.1)


def test_the_confidence_threshold_is_a_probability_below_one():
    assert SegConfig(min_confidence=0.9).min_confidence == 0.9
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match=r"min_confidence must be in \[0, 1\)"):
            SegConfig(min_confidence=bad)


def test_kept_classes_leave_the_filtered_ones():
    assert SegConfig().filtered_classes == tuple(range(11, 19))
    assert SegConfig(keep_classes=["car", "bus"]).filtered_classes == (11, 12, 14, 16, 17, 18)
    assert SegConfig(keep_classes=["car", "bus", "car"]).keep_classes == ("car", "bus")   # as NON_STATIONARY orders them
    with pytest.raises(InputError, match="'road' is not a non-stationary class; valid: person, rider, car"):
        SegConfig(keep_classes=("road",))
    with pytest.raises(InputError, match="sequence of class names, got the string 'car'"):
        SegConfig(keep_classes="car")


def test_commands_end_to_end(small_street, tmp_path):
    weights = tmp_path / "seg.safetensors"
    out = CliRunner().invoke(train_seg, ["--dataset", str(small_street), "--output", str(weights.with_suffix(".pt")),
                                         "--iterations", "2", "--warmup", "1", "--max-side", "96",
                                         "--backbone-mode", "frozen", "--loss", "hinge-f", "--validate-every", "2",
                                         "--labels-per-condition", "1", "--keep-class", "car"])
    assert out.exit_code == 0, out.output
    config = load_checkpoint(weights.with_suffix(".pt")).config
    assert config["correspondence_loss"] == "hinge-f" and config["backbone_mode"] == "frozen"
    assert config["keep_classes"] == ["car"]
    assert weights.is_file() and weights.with_suffix(".best.safetensors").is_file()
    assert re.search(r"validation\s+\S*\s*2/2.*mIoU [\d.]+ \(all conditions\)", out.output), out.output
    names = tmp_path / "names.txt"
    names.write_text("reference/cam0/000003.png\nnight/cam1/000001.png\n")
    args = ["--weights", str(weights), "--images", str(small_street / "images"), "--output", str(tmp_path / "seg"),
            "--list", str(names)]
    out = CliRunner().invoke(segment, [*args, "--store", str(tmp_path / "street.h5")])
    assert out.exit_code == 0, out.output
    labels = np.asarray(Image.open(tmp_path / "seg" / "labels" / "night" / "cam1" / "000001.png"))
    colour = np.asarray(Image.open(tmp_path / "seg" / "colour" / "night" / "cam1" / "000001.png"))
    assert labels.shape == (192, 256) and labels.max() < 19 and colour.shape == (192, 256, 3)
    settings = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert settings["max_side"] == 96 and settings["window"] == [67, 45, 22]  # from the training recipe
    key = store_model_id(SegmentSettings(**settings), "vgg16-slim")
    assert key.startswith("seg-vgg16-slim.") and key.endswith(".max_side=96.window=67-45-22")
    with FeatureStore(tmp_path / "street.h5") as store:
        np.testing.assert_array_equal(store.get_labels(key, "night/cam1/000001.png").labels, labels)
        assert store.names(key, "labels") == {"reference/cam0/000003.png", "night/cam1/000001.png"}
    out = CliRunner().invoke(segment, [*args, "--whole-image"])  # other settings, same folder
    assert out.exit_code != 0 and "other settings" in str(out.exception)


def test_a_stride_8_head_trains_and_reloads_from_its_weights(small_street, tmp_path):
    """``head_layer``/``aux_layer`` choose the heads' inputs; the weights carry them."""
    from locseg.models.segmentation import load_segmentation_model

    config = dataclasses.replace(TINY, iterations=1, head_layer=23, aux_layer=16)
    output = train_segmentation([small_street], tmp_path / "s8.pt", config)
    model = load_segmentation_model(output.with_suffix(".safetensors"))
    assert (model.stride, model.aux_stride) == (8, 4)
    assert model(torch.zeros(1, 3, 64, 96)).logits.shape == (1, 19, 8, 12)


def test_class_balance_weighs_the_rare_classes_of_the_labelled_images(small_street, tmp_path):
    from locseg.train.segmentation import ResizedImages, labelled_class_weights

    training, _ = select_images([small_street], TINY)
    weight = labelled_class_weights(training, ResizedImages(TINY.max_side), 0.5)
    road, traffic_light, truck = 0, 6, 14   # truck: no pixel in the street
    assert weight.shape == (19,) and weight[traffic_light] > 1 > weight[road] and weight[truck] == 1
    config = dataclasses.replace(TINY, iterations=2, warmup=2, class_balance=0.5)
    history = load_checkpoint(train_segmentation([small_street], tmp_path / "cb.pt", config)).metrics["history"]
    assert len(history) == 2 and all(np.isfinite(h["sup"]) for h in history)
    balanced = dataclasses.replace(TINY, iterations=2, warmup=1, balance_correspondences=True)
    history = load_checkpoint(train_segmentation([small_street], tmp_path / "bc.pt", balanced)).metrics["history"]
    assert "corr" in history[1] and np.isfinite(history[1]["corr"])
    with pytest.raises(InputError, match="class_balance"):
        dataclasses.replace(TINY, class_balance=0, balance_correspondences=True)


@pytest.mark.parametrize("name", ["synthseasons-slim-pspnet-v1", "synthseasons-slim-pspnet-v2",
                                  "synthseasons-slim-pspnet-v3"])
def test_the_bundled_segmentation_models_load_by_name_and_segment(name):
    from locseg.models.segmentation import load_segmentation_model

    model = load_segmentation_model(name)   # checks the sha256
    assert (model.stride, model.config.head_layer) == (8, 23)
    with torch.no_grad():
        assert model.predict(torch.zeros(1, 3, 64, 96)).shape == (1, 19, 64, 96)


def test_a_run_resumes_after_its_init_weights_have_moved(small_street, tmp_path):
    """The checkpoint sets every weight, so --init is not read again on --resume: a run
    started from a relative path resumes from another directory, or after the file moved."""
    first = train_segmentation([small_street], tmp_path / "first.pt", dataclasses.replace(TINY, iterations=2))
    init = first.with_suffix(".safetensors")
    config = dataclasses.replace(TINY, iterations=6, init=str(init))
    straight = load_checkpoint(train_segmentation([small_street], tmp_path / "straight.pt", config))

    def kill_at_step_4(stage, done, total, parts):
        if done == 4:
            raise Killed
    with pytest.raises(Killed):
        train_segmentation([small_street], tmp_path / "killed.pt", config, progress=kill_at_step_4)
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    init.rename(tmp_path / "moved.safetensors")
    resumed = load_checkpoint(train_segmentation([small_street], tmp_path / "killed.pt", config, resume=True))
    assert resumed.metrics["history"] == straight.metrics["history"]
    # The weights name what they started from by content, not by the path as typed.
    metadata = read_safetensors_metadata(tmp_path / "killed.safetensors")
    assert metadata["init_digest"] == digest
    assert json.loads(metadata["sources"])["datasets"] == [str(small_street.resolve())]
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)
