"""``finetune-features``: a run, its checkpoints, exact resumption and exported weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from locseg_cli.train import finetune

from locseg.errors import InputError
from locseg.models.weights import read_safetensors_metadata
from locseg.train.augment import AugmentConfig, augment_pair
from locseg.train.checkpoint import load_checkpoint
from locseg.train.finetune import (
    FinetuneConfig,
    build_model,
    draw_pair,
    finetune_features,
    pair_weights,
    split_pairs,
)
from locseg.train.pairs import CorrespondencePairs

FAST = FinetuneConfig(max_side=128, positives=64, iterations=3, checkpoint_every=1, validate_every=3,
                      validation_pairs=2, validation_points=50, lr=1e-4)


def _run(street, output, config=FAST, resume=False):
    return finetune_features(street / "correspondences", street / "images", output, config, resume=resume)


@pytest.mark.parametrize("augment, max_side, weights", [
    (AugmentConfig(), 128, ()), (AugmentConfig(scale=1.5, light=0.5), 224, ()), (AugmentConfig(), 128, {"night": 3})],
    ids=["plain", "augmented", "weighted"])
def test_resume_continues_exactly(small_street, tmp_path, augment, max_side, weights):
    """A run stopped after step 2 and resumed ends where an uninterrupted run ends, also
    when its pairs are augmented or drawn by condition weights (the draws come from the
    checkpointed generator; images large enough that a shrunk one leaves negatives outside
    the mining radius)."""
    config = dataclasses.replace(FAST, augment=augment, max_side=max_side, condition_weights=weights)
    straight = load_checkpoint(_run(small_street, tmp_path / "straight.pt", config))
    partial = tmp_path / "partial.pt"
    _run(small_street, partial, dataclasses.replace(config, iterations=2))
    assert load_checkpoint(partial).step == 2
    with pytest.raises(InputError, match="lr"):  # a resumed run keeps its config...
        _run(small_street, partial, dataclasses.replace(config, lr=2e-4), resume=True)
    resumed = load_checkpoint(_run(small_street, partial, config, resume=True))  # ...but may train on
    assert resumed.step == straight.step == 3 and resumed.config["iterations"] == 3
    assert [h["total"] for h in resumed.metrics["history"]] == [h["total"] for h in straight.metrics["history"]]
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)
    assert "all" in straight.metrics["history"][-1]["precision"]


def test_condition_weights_draw_each_condition_in_proportion(small_street):
    """night-rain weighs 3, sun 0, the rest 1: over 20 000 draws each condition's share is
    its weight times its pair count over the weighted total (within 1.5 points)."""
    pairs = CorrespondencePairs(small_street / "correspondences", small_street / "images")
    ids, _ = split_pairs(len(pairs), FAST.validation_pairs)
    weights = pair_weights(pairs, ids, {"night-rain": 3.0, "sun": 0.0})
    conditions = [pairs.condition(i) for i in ids]
    assert conditions == [pairs[i].condition for i in ids]  # read without loading the pair
    expected = {c: conditions.count(c) * {"night-rain": 3.0, "sun": 0.0}.get(c, 1.0) for c in set(conditions)}
    total = sum(expected.values())
    generator = torch.Generator().manual_seed(0)
    condition_of = dict(zip(ids, conditions))
    drawn = [condition_of[draw_pair(ids, weights, generator)] for _ in range(20000)]
    for condition, weight in expected.items():
        assert drawn.count(condition) / len(drawn) == pytest.approx(weight / total, abs=0.015), condition
    assert "sun" not in drawn


def test_a_run_trains_on_the_pairs_its_condition_weights_draw(small_street, tmp_path, monkeypatch):
    """Every condition but night weighted 0: every step of the run trains on a night pair."""
    from locseg.train import finetune

    trained_on = []

    def spy(sample, config, generator):
        trained_on.append(sample.condition)
        return augment_pair(sample, config, generator)
    monkeypatch.setattr(finetune, "augment_pair", spy)
    pairs = CorrespondencePairs(small_street / "correspondences", small_street / "images")
    weights = {pairs.condition(i): 0.0 for i in range(len(pairs))} | {"night": 1.0}
    _run(small_street, tmp_path / "night.pt", dataclasses.replace(FAST, validate_every=0, condition_weights=weights))
    assert trained_on == ["night"] * FAST.iterations


def test_without_condition_weights_pairs_are_drawn_as_before(small_street):
    """No weights: one randint per draw, so every earlier run's pairs are drawn again."""
    pairs = CorrespondencePairs(small_street / "correspondences", small_street / "images")
    ids, _ = split_pairs(len(pairs), FAST.validation_pairs)
    assert pair_weights(pairs, ids, {}) is None
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [draw_pair(ids, None, a) for _ in range(50)] == \
        [ids[int(torch.randint(len(ids), (1,), generator=b))] for _ in range(50)]


def test_bad_condition_weights_are_refused(small_street):
    pairs = CorrespondencePairs(small_street / "correspondences", small_street / "images")
    ids = list(range(len(pairs)))
    with pytest.raises(InputError, match="no training pair is of condition 'nigth'; conditions of the pairs: autumn, dusk"):
        pair_weights(pairs, ids, {"nigth": 2.0})
    with pytest.raises(InputError, match="leave no training pair"):
        pair_weights(pairs, ids, dict.fromkeys({pairs.condition(i) for i in ids}, 0.0))
    with pytest.raises(InputError, match="condition weight of 'night' must be a finite number >= 0, got -1.0"):
        dataclasses.replace(FAST, condition_weights={"night": -1})
    with pytest.raises(InputError, match="name 'night' twice"):
        dataclasses.replace(FAST, condition_weights=(("night", 2), ("night", 3)))


def test_the_cosine_schedule_falls_from_lr_to_zero():
    config = dataclasses.replace(FAST, lr=3e-4, iterations=100, lr_schedule="cosine")
    rates = [config.lr_at(step) for step in range(101)]
    assert rates[0] == 3e-4 and rates[50] == pytest.approx(1.5e-4) and rates[100] == pytest.approx(0, abs=1e-20)
    assert rates[25] == pytest.approx(3e-4 * (2 + 2 ** 0.5) / 4)
    assert all(a > b for a, b in pairwise(rates))
    assert FAST.lr_at(0) == FAST.lr_at(FAST.iterations) == FAST.lr    # constant, as seed 002
    with pytest.raises(InputError, match="constant, cosine"):
        FinetuneConfig(lr_schedule="step")


def test_a_cosine_run_resumes_exactly_but_keeps_its_iterations(small_street, tmp_path):
    """Interrupted after step 2 (its last checkpoint is step 1's), a cosine run resumes to
    the same end as an uninterrupted one, each step at its scheduled rate; it refuses
    another ``iterations``, which would move the schedule under the steps already taken."""
    config = dataclasses.replace(FAST, iterations=3, validate_every=0, lr_schedule="cosine")
    straight = load_checkpoint(_run(small_street, tmp_path / "straight.pt", config))
    assert straight.optimizer_state["param_groups"][0]["lr"] == pytest.approx(config.lr_at(2))

    def interrupt(stage, done, total, losses):
        if done == 2:
            raise KeyboardInterrupt
    partial = tmp_path / "partial.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune_features(small_street / "correspondences", small_street / "images", partial, config,
                          progress=interrupt)
    assert load_checkpoint(partial).step == 1
    with pytest.raises(InputError, match="iterations"):
        _run(small_street, partial, dataclasses.replace(config, iterations=4), resume=True)
    resumed = load_checkpoint(_run(small_street, partial, config, resume=True))
    assert [h["total"] for h in resumed.metrics["history"]] == [h["total"] for h in straight.metrics["history"]]
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)


def test_checkpoints_record_cpu_time_across_resumes(small_street, tmp_path):
    """Each save records the run's cumulative CPU time at its step; a resumed run keeps the
    earlier saves and counts on from the last one."""
    partial = tmp_path / "partial.pt"
    _run(small_street, partial, dataclasses.replace(FAST, iterations=2, validate_every=0))
    first = load_checkpoint(partial).metrics["cpu_seconds"]
    assert [step for step, _ in first] == [1, 2] and 0 < first[0][1] <= first[1][1]
    resumed = load_checkpoint(_run(small_street, partial, dataclasses.replace(FAST, validate_every=0), resume=True))
    saves = resumed.metrics["cpu_seconds"]
    assert saves[:2] == first and saves[2][0] == 3 and saves[2][1] > first[1][1]
    assert "cpu_counted_from" not in resumed.metrics


def test_exported_weights_initialise_a_new_run(small_street, tmp_path):
    output = _run(small_street, tmp_path / "run.pt", dataclasses.replace(FAST, iterations=1, validate_every=0))
    weights = output.with_suffix(".safetensors")
    metadata = read_safetensors_metadata(weights)
    assert metadata["backbone"] == "vgg16-slim"
    assert json.loads(metadata["sources"])["folders"] == [[str((small_street / "correspondences").resolve()),
                                                            str((small_street / "images").resolve())]]
    model = build_model(dataclasses.replace(FAST, init=str(weights)))
    trained = load_checkpoint(output).model_state
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    with pytest.raises(InputError, match="exists"):
        _run(small_street, output)


def test_validation_pairs_are_held_out():
    train, validation = split_pairs(63, 8)
    assert len(validation) == 8 and not set(train) & set(validation) and len(train) + 8 == 63
    with pytest.raises(InputError, match="at least 2"):
        split_pairs(1, 1)


def test_a_step_on_images_the_strides_do_not_divide():
    """200x150 images: the 1/16 levels have 12x9 cells covering 192x144 pixels; points
    beyond them are left out rather than read past the map."""
    from locseg.train.finetune import _covered, training_step
    from locseg.train.pairs import PairSample

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 150, 200, generator=generator)
    points = torch.rand(200, 2, generator=generator) * torch.tensor([200.0, 150.0])
    covered = _covered(points, (200, 150), [4, 8, 8, 16, 16])
    assert covered.tolist() == ((points[:, 0] <= 192) & (points[:, 1] <= 144)).tolist()
    sample = PairSample(images[0], images[1], points, points + 0.0, "reference/a.png", "night/b.png")
    config = dataclasses.replace(FAST, positives=32)
    model = build_model(config)
    loss, breakdown = training_step(model, sample, 0, config, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and breakdown["total"] > 0
    # the whole-map term on the same draws: the per-level terms stay, its own term adds on
    combined = dataclasses.replace(config, loss=dataclasses.replace(config.loss, combined_weight=0.5))
    loss_c, breakdown_c = training_step(model, sample, 0, combined, torch.Generator().manual_seed(1))
    assert breakdown_c["dmc"] == pytest.approx(breakdown["dmc"]) and breakdown_c["dmc_combined"] > 0
    assert loss_c.detach().item() == pytest.approx(loss.detach().item() + 0.5 * breakdown_c["dmc_combined"], rel=1e-5)
    dense = dataclasses.replace(config, loss=dataclasses.replace(config.loss, dense_weight=0.5))
    loss_d, breakdown_d = training_step(model, sample, 0, dense, torch.Generator().manual_seed(1))
    assert breakdown_d["dmc"] == pytest.approx(breakdown["dmc"]) and breakdown_d["dense"] > 0
    assert loss_d.detach().item() == pytest.approx(loss.detach().item() + 0.5 * breakdown_d["dense"], rel=1e-5)


@pytest.mark.parametrize("name", ["synthseasons-slim-dmcgn-interim", "synthseasons-slim-dmcgn-v4",
                                  "synthseasons-slim-dmcgn-v5", "synthseasons-slim-dmcgn-v6",
                                  "synthseasons-slim-dmcgn-v7", "synthseasons-slim-dmcgn-v8",
                                  "synthseasons-slim-dmcgn-v9", "synthseasons-slim-dmcgn-v10",
                                  "synthseasons-slim-dmcgn-v11", "synthseasons-slim-dmcgn-v12",
                                  "synthseasons-slim-dmcgn-v13", "synthseasons-slim-dmcgn-v14"])
def test_the_bundled_hypercolumn_weights_load_by_name(name):
    from locseg.models.weights import (
        bundled_names,
        read_safetensors_metadata,
        resolve_weights,
    )

    assert name in bundled_names()
    path = resolve_weights(name)  # checks the sha256
    assert read_safetensors_metadata(path)["backbone"] == "vgg16-slim"
    model = build_model(FinetuneConfig(init=name))
    assert model.channels == 512 and model.backbone.name == "vgg16-slim"


@pytest.mark.parametrize("name, init, seed, temperature", [
    ("synthseasons-slim-dmcgn-v4", "synthseasons-slim-dmcgn-v3", 2, 0.05),
    ("synthseasons-slim-dmcgn-v5", "synthseasons-slim-dmcgn-v4", 3, 0.05),
    ("synthseasons-slim-dmcgn-v6", "synthseasons-slim-dmcgn-v4", 3, 0.025),
    ("synthseasons-slim-dmcgn-v7", "synthseasons-slim-dmcgn-v6", 4, 0.025),
    ("synthseasons-slim-dmcgn-v8", "synthseasons-slim-dmcgn-v7", 5, 0.0125),
    ("synthseasons-slim-dmcgn-v9", "synthseasons-slim-dmcgn-v8", 6, 0.0125),
    ("synthseasons-slim-dmcgn-v10", "synthseasons-slim-dmcgn-v9", 7, 0.00625),
    ("synthseasons-slim-dmcgn-v11", "synthseasons-slim-dmcgn-v10", 8, 0.003125),
    ("synthseasons-slim-dmcgn-v12", "synthseasons-slim-dmcgn-v11", 10, 0.003125),
    ("synthseasons-slim-dmcgn-v13", "synthseasons-slim-dmcgn-v12", 11, 0.003125),
    ("synthseasons-slim-dmcgn-v14", "synthseasons-slim-dmcgn-v13", 12, 0.003125),
])
def test_the_bundled_cosine_weights_record_their_recipe(name, init, seed, temperature):
    """The recorded recipe is the one benchmarks/RESULTS.md lists, continued from the exact bytes of ``init``
    (v10's run named v9 by the path of its run's export, before v9 was bundled: the digest is what ties them)."""
    from locseg.models.weights import (
        file_sha256,
        read_safetensors_metadata,
        resolve_weights,
    )

    metadata = read_safetensors_metadata(resolve_weights(name))
    recipe = json.loads(metadata["recipe"])
    assert metadata["init_digest"] == file_sha256(resolve_weights(init))
    recorded = {"synthseasons-slim-dmcgn-v10": "outputs/runs/v8-c5-13.safetensors"}.get(name, init)
    assert recipe["init"] == recorded and recipe["seed"] == seed
    assert (recipe["lr"], recipe["lr_schedule"], recipe["iterations"]) == (3e-4, "cosine", 2000)
    assert recipe["loss"]["dense_weight"] == 1 and recipe["loss"]["gn_weight"] == 0.5
    assert recipe["loss"]["dense_temperature"] == temperature


def test_no_bundled_file_records_a_path_of_the_machine_it_was_trained_on():
    """Every folder a bundled file names as its training data (its ``sources``: the
    correspondence and image folders of ``finetune-features``, the streets of
    ``train-retrieval``, the datasets of ``train-seg``) is relative to the repository, so the
    header says which data without leaking a home directory."""
    from locseg.models.weights import bundled_names, resolve_weights

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict | list):
            for item in value.values() if isinstance(value, dict) else value:
                yield from strings(item)

    recorded = {}
    for name in bundled_names():
        path = resolve_weights(name)
        metadata = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
        if "sources" in metadata:
            recorded[name] = list(strings(json.loads(metadata["sources"])))
    assert all(recorded.get(f"synthseasons-slim-dmcgn-v{k}") for k in (12, 13, 14))
    for name, paths in recorded.items():
        assert not [p for p in paths if Path(p).is_absolute()], name


def test_a_continued_run_mines_where_the_earlier_runs_stopped(monkeypatch):
    """With ``mining_offset`` k0, step k draws negatives from the M(k0 + k) hardest."""
    from locseg.train import finetune
    from locseg.train.mining import mining_pool_size
    from locseg.train.pairs import PairSample

    pools = []

    def record(*args, **kwargs):
        pools.append(args[6])
        return torch.zeros(()), {}
    monkeypatch.setattr(finetune, "total_finetune_loss", record)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    points = torch.rand(50, 2, generator=generator) * 60
    sample = PairSample(images[0], images[1], points, points, "reference/a.png", "night/b.png")
    model = build_model(FAST)
    finetune.training_step(model, sample, 7, dataclasses.replace(FAST, mining_offset=40000), generator)
    finetune.training_step(model, sample, 7, FAST, generator)
    assert pools == [mining_pool_size(40007), mining_pool_size(7)] and pools[0] < pools[1]
    with pytest.raises(InputError, match="mining_offset"):
        dataclasses.replace(FAST, mining_offset=-1)


def test_the_command_passes_its_options_to_the_run(small_street, tmp_path):
    output = tmp_path / "cli.pt"
    result = CliRunner().invoke(finetune, [
        "--correspondences", str(small_street / "correspondences"), "--images", str(small_street / "images"),
        "--output", str(output), "--iterations", "1", "--max-side", "128", "--validate-every", "0",
        "--hypercolumn-norm", "joint", "--combined-weight", "0.5", "--dense-weight", "0.25",
        "--dense-temperature", "0.1", "--scale-augment", "1.4", "--light-augment", "0.3", "--lr-schedule", "cosine"])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(output).config
    assert config["hypercolumn_norm"] == "joint" and config["loss"]["combined_weight"] == 0.5
    assert config["loss"]["dense_weight"] == 0.25 and config["loss"]["dense_temperature"] == 0.1
    assert config["augment"] == {"scale": 1.4, "light": 0.3} and config["lr_schedule"] == "cosine"
    assert config["max_side"] == 128 and output.with_suffix(".safetensors").is_file()


def test_the_command_reads_condition_weights(small_street, tmp_path):
    street = ["--correspondences", str(small_street / "correspondences"), "--images", str(small_street / "images"),
              "--iterations", "1", "--max-side", "128", "--validate-every", "0"]
    output = tmp_path / "cli.pt"
    result = CliRunner().invoke(finetune, [*street, "--output", str(output), "--condition-weight", "night-rain=2",
                                           "--condition-weight", "night=1.5"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(output).config["condition_weights"] == [["night-rain", 2.0], ["night", 1.5]]
    refused = tmp_path / "refused.pt"
    result = CliRunner().invoke(finetune, [*street, "--output", str(refused), "--condition-weight", "night-rain:2"])
    assert result.exit_code == 2 and "'night-rain:2' is not CONDITION=WEIGHT" in result.output
    assert not refused.exists()


def test_the_command_shows_each_held_out_check(small_street, tmp_path):
    output = tmp_path / "cli.pt"
    result = CliRunner().invoke(finetune, [
        "--correspondences", str(small_street / "correspondences"), "--images", str(small_street / "images"),
        "--output", str(output), "--iterations", "2", "--max-side", "128", "--validate-every", "1"])
    assert result.exit_code == 0, result.output
    checks = [entry["precision"]["all"] for entry in load_checkpoint(output).metrics["history"]]
    shown = re.findall(r"held-out\s+\S*\s*(\d+)/2.*?matching precision ([\d.]+) %", result.output)
    assert [float(value) for _, value in shown] == [round(value, 1) for value in checks]


def test_resume_on_other_correspondences_is_refused(small_street, tmp_path):
    import shutil

    one_step = dataclasses.replace(FAST, iterations=1)
    partial = tmp_path / "partial.pt"
    _run(small_street, partial, one_step)
    sources = load_checkpoint(partial).metrics["sources"]
    assert sources["folders"] == [[str((small_street / "correspondences").resolve()),
                                   str((small_street / "images").resolve())]]
    other = shutil.copytree(small_street / "correspondences", tmp_path / "other")
    with pytest.raises(InputError, match=r"trained on other data \(sources.folders\[0\]\[0\]: .*other"):
        finetune_features(other, small_street / "images", partial, one_step, resume=True)
    assert load_checkpoint(_run(small_street, partial, one_step, resume=True)).step == 1


def test_folders_in_another_order_are_other_data(small_street, tmp_path):
    """The held-out pairs are every k-th of the concatenated folders: another order would leak them."""
    import shutil

    other = shutil.copytree(small_street / "correspondences", tmp_path / "other")
    folders, roots = [small_street / "correspondences", other], [small_street / "images"] * 2
    one_step = dataclasses.replace(FAST, iterations=1)
    finetune_features(folders, roots, tmp_path / "run.pt", one_step)
    with pytest.raises(InputError, match="same order"):
        finetune_features(folders[::-1], roots, tmp_path / "run.pt", one_step, resume=True)


def test_checkpoint_without_a_source_record_still_resumes(small_street, tmp_path):
    """Checkpoints written before runs recorded their data (and before augmentation existed)
    resume on whatever data they are given."""
    partial = tmp_path / "partial.pt"
    _run(small_street, partial, dataclasses.replace(FAST, iterations=2))
    checkpoint = torch.load(partial, weights_only=True)
    del checkpoint["metrics"]["sources"]
    del checkpoint["metrics"]["cpu_seconds"]
    del checkpoint["config"]["augment"]
    checkpoint["config"]["iterations"] = 3
    torch.save(checkpoint, partial)
    resumed = load_checkpoint(_run(small_street, partial, resume=True))
    assert resumed.step == 3 and resumed.metrics["sources"]["pairs"] > 0
    assert resumed.metrics["cpu_counted_from"] == 2 and [s for s, _ in resumed.metrics["cpu_seconds"]] == [3]


def test_a_run_resumes_after_its_init_weights_have_moved(small_street, tmp_path):
    """--init is not read again on --resume (the checkpoint sets every weight), so a run
    started from a relative path resumes from another directory, or after the file moved."""
    first = _run(small_street, tmp_path / "first.pt", dataclasses.replace(FAST, iterations=1, validate_every=0))
    init = first.with_suffix(".safetensors")
    config = dataclasses.replace(FAST, init=str(init))
    straight = load_checkpoint(_run(small_street, tmp_path / "straight.pt", config))
    partial = tmp_path / "partial.pt"
    _run(small_street, partial, dataclasses.replace(config, iterations=2))
    checkpoint = torch.load(partial, weights_only=True)
    checkpoint["config"]["iterations"] = 3  # a run of 3 steps killed after step 2
    torch.save(checkpoint, partial)
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    init.rename(tmp_path / "moved.safetensors")
    resumed = load_checkpoint(_run(small_street, partial, config, resume=True))
    assert read_safetensors_metadata(partial.with_suffix(".safetensors"))["init_digest"] == digest
    assert [h["total"] for h in resumed.metrics["history"]] == [h["total"] for h in straight.metrics["history"]]
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)
