"""The feature store: round trips, resuming, model ids, configs, versions, locks, SIGKILL."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from locseg.errors import FormatError, InputError, ShapeError
from locseg.store import (
    FORMAT_VERSION,
    SPARSE,
    ConfigMismatchError,
    FeatureStore,
    MissingEntryError,
    StoreLockedError,
    model_id,
)

MID = model_id("vgg16-slim", "992ed5c4" * 8, max_side=512, layers=(14, 17, 21, 24, 28))
CONFIG = {"max_side": 512, "layers": [14, 17, 21, 24, 28], "weights": "synthseasons-slim"}
NAMES = [
    "reference/cam0/000012.png",
    "night/cam3/000004.png",
    "a",
    "a/b",
    "a//b",
    "./a",
    ".hidden/x.jpg",
    "100%/x%2F.png",
    "snow/ü/é.jpg",
]
TESTS = Path(__file__).resolve().parent


def image_name(i: int) -> str:
    return f"reference/cam{i % 3}/{i:06d}.png"


def sparse_entry(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic sparse features of entry ``i``, already in the stored dtypes."""
    rng = np.random.default_rng(i)
    n = 10 + i % 7
    return (rng.uniform(0, 640, (n, 2)).astype(np.float32), rng.integers(0, 10**6, n),
            rng.standard_normal((n, 16)).astype(np.float16))


def write_entries(path, start: int, stop: int, flush_every: int = 0, report: bool = False) -> int:
    """Write the sparse entries start..stop-1 that are missing; the count written.

    With ``report``, print ``committed <k>`` once entries ``start..k-1`` are all
    committed, and ``closing`` before the final merge (the SIGKILL test reads these).
    """
    written = 0
    with FeatureStore(path, mode="a") as store:
        store.set_config(MID, CONFIG)
        for i in range(start, stop):
            if store.has(MID, SPARSE, image_name(i)):
                continue
            store.put_sparse(MID, image_name(i), *sparse_entry(i))
            written += 1
            if flush_every and written % flush_every == 0:
                store.flush()
                if report:
                    print(f"committed {i + 1}", flush=True)
        if report:
            print("closing", flush=True)
    return written


def assert_sparse_equal(store: FeatureStore, i: int) -> None:
    got = store.get_sparse(MID, image_name(i))
    for array, expected, dtype in zip(got, sparse_entry(i), (np.float32, np.int64, np.float16)):
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, expected)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with the sha256 of its content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def crashed_copy(store: FeatureStore, destination: Path) -> Path:
    """Copy a writer's files as they are now: what a killed writer would leave."""
    destination.mkdir()
    shutil.copy(store.path, destination / store.path.name)
    if store.parts_dir.is_dir():
        shutil.copytree(store.parts_dir, destination / store.parts_dir.name)
    return destination / store.path.name


# ---------------------------------------------------------------- model ids
def test_model_id_is_readable_sorted_and_deterministic():
    assert MID == "vgg16-slim.992ed5c4.layers=14-17-21-24-28.max_side=512"
    assert model_id("vgg16-slim", "992ED5C4FFFF", layers=[14, 17, 21, 24, 28], max_side=512) == MID
    assert model_id("net", "0123abcd") == "net.0123abcd"
    assert (model_id("net", "0123abcd", flip=True, mean=None, scale=0.25, mode="bilinear")
            == "net.0123abcd.flip=true.mean=none.mode=bilinear.scale=0.25")
    assert model_id("net", "0123abcd", max_side=512) != model_id("net", "0123abce", max_side=512)


@pytest.mark.parametrize("name, digest, preprocessing", [
    ("vgg/16", "0123abcd", {}),
    ("vgg.16", "0123abcd", {}),
    ("vgg", "0123abc", {}),
    ("vgg", "not-hex!", {}),
    ("vgg", "0123abcd", {"size": "a/b"}),
    ("vgg", "0123abcd", {"size": "a=b"}),
    ("vgg", "0123abcd", {"layers": []}),
    ("vgg", "0123abcd", {"layers": {"a": 1}}),
])
def test_model_id_refuses_what_it_cannot_carry(name, digest, preprocessing):
    with pytest.raises(InputError):
        model_id(name, digest, **preprocessing)


# -------------------------------------------------------------- round trips
def put_every_kind(store: FeatureStore) -> dict:
    rng = np.random.default_rng(0)
    expected = {}
    for k, name in enumerate(NAMES):
        g = rng.standard_normal(64)
        kp, ids, desc = rng.uniform(0, 500, (k + 1, 2)), np.arange(k + 1) * 7, rng.standard_normal((k + 1, 8))
        labels = rng.integers(0, 19, (6, 5))
        labels[0, 0] = 255
        logits = rng.standard_normal((19, 6, 5)) if k % 2 else None
        store.put_global(MID, name, g)
        store.put_sparse(MID, name, kp, ids, desc)
        store.put_labels(MID, name, labels, logits)
        expected[name] = (g, kp, ids, desc, labels, logits)
    store.put_point_labels(MID, np.array([3, 1, 2]), np.array([0, 18, 255]))
    return expected


def check_every_kind(store: FeatureStore, expected: dict) -> None:
    for kind in ("global", "sparse", "labels"):
        assert store.names(MID, kind) == set(NAMES)
    for name, (g, kp, ids, desc, labels, logits) in expected.items():
        assert store.has(MID, "sparse", name)
        got_g = store.get_global(MID, name)
        assert got_g.dtype == np.float32 and got_g.shape == (64,)
        np.testing.assert_array_equal(got_g, g.astype(np.float32))
        sparse = store.get_sparse(MID, name)
        np.testing.assert_array_equal(sparse.keypoints, kp.astype(np.float32))
        np.testing.assert_array_equal(sparse.point3D_ids, ids)
        np.testing.assert_array_equal(sparse.descriptors, desc.astype(np.float16))
        assert (sparse.keypoints.dtype, sparse.point3D_ids.dtype, sparse.descriptors.dtype) == (
            np.float32, np.int64, np.float16)
        seg = store.get_labels(MID, name)
        assert seg.labels.dtype == np.uint8
        np.testing.assert_array_equal(seg.labels, labels)
        if logits is None:
            assert seg.logits is None
        else:
            assert seg.logits.dtype == np.float16
            np.testing.assert_array_equal(seg.logits, logits.astype(np.float16))
    points = store.get_point_labels(MID)
    np.testing.assert_array_equal(points.point3D_ids, [3, 1, 2])
    np.testing.assert_array_equal(points.labels, [0, 18, 255])
    assert points.labels.dtype == np.uint8


def test_round_trip_every_kind_buffered_sharded_and_merged(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        expected = put_every_kind(store)
        check_every_kind(store, expected)          # from the buffer
        store.flush()
        check_every_kind(store, expected)          # from a shard
        store.compact()
        check_every_kind(store, expected)          # from the main file
    with FeatureStore(path) as store:
        check_every_kind(store, expected)          # after reopening
        assert store.model_ids() == {MID}
    assert sorted(os.listdir(tmp_path)) == ["map.h5"]


def test_on_disk_layout(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.set_config(MID, CONFIG)
        store.put_sparse(MID, "night/cam3/000004.png", np.zeros((3, 2)), np.arange(3), np.ones((3, 4)))
        store.put_labels(MID, ".hidden/x.png", np.zeros((100, 100), np.uint8), np.zeros((2, 100, 100)))
    with h5py.File(path, "r") as f:
        assert f.attrs["locseg_format"] == "feature-store" and f.attrs["format_version"] == FORMAT_VERSION
        assert f[MID].attrs["config"] == '{"layers":[14,17,21,24,28],"max_side":512,"weights":"synthseasons-slim"}'
        entry = f[f"{MID}/sparse/night%2Fcam3%2F000004.png"]
        assert entry["descriptors"].dtype == np.float16 and entry["descriptors"].compression is None
        labels = f[f"{MID}/labels/%2Ehidden%2Fx.png"]
        assert labels["labels"].compression == "gzip" and labels["logits"].compression is None


def test_generic_kinds_and_replacement(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.put(MID, "depth", "a/b.png", {"depth": np.arange(6.0).reshape(2, 3), "valid": np.ones(3, bool)})
        store.put(MID, "depth", "a/b.png", {"depth": np.zeros((2, 3))})     # replaces, in the buffer
        store.flush()
        store.put(MID, "depth", "c.png", {"depth": np.ones(1)})
    with FeatureStore(path, mode="a") as store:
        got = store.get(MID, "depth", "a/b.png")
        assert set(got) == {"depth"}
        np.testing.assert_array_equal(got["depth"], np.zeros((2, 3)))
        store.put(MID, "depth", "c.png", {"depth": np.full(2, 5.0)})        # replaces one in the main file
        store.flush()
        np.testing.assert_array_equal(store.get(MID, "depth", "c.png")["depth"], [5.0, 5.0])
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.get(MID, "depth", "c.png")["depth"], [5.0, 5.0])
        assert store.names(MID, "depth") == {"a/b.png", "c.png"}


def test_model_ids_never_mix(tmp_path):
    other = model_id("vgg16", "992ed5c4" * 8, max_side=512, layers=(14, 17, 21, 24, 28))
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "q/1.png", np.ones(4))
        store.flush()
        store.put_global(other, "q/1.png", np.zeros(8))
        store.put_global(other, "q/2.png", np.zeros(8))
        assert store.names(MID, "global") == {"q/1.png"}
    with FeatureStore(path) as store:
        assert store.model_ids() == {MID, other}
        assert store.names(MID, "global") == {"q/1.png"}
        assert store.names(other, "global") == {"q/1.png", "q/2.png"}
        assert not store.has(MID, "global", "q/2.png")
        np.testing.assert_array_equal(store.get_global(MID, "q/1.png"), np.ones(4))
        np.testing.assert_array_equal(store.get_global(other, "q/1.png"), np.zeros(8))
        assert store.names(MID, "sparse") == set()


# ------------------------------------------------------------ input checks
@pytest.mark.parametrize("arrays, error", [
    ({"keypoints": np.zeros((3, 3)), "point3D_ids": np.arange(3), "descriptors": np.zeros((3, 4))}, ShapeError),
    ({"keypoints": np.zeros((3, 2)), "point3D_ids": np.arange(2), "descriptors": np.zeros((3, 4))}, ShapeError),
    ({"keypoints": np.zeros((3, 2)), "point3D_ids": np.zeros(3), "descriptors": np.zeros((3, 4))}, InputError),
    ({"keypoints": np.zeros((3, 2)), "point3D_ids": np.arange(3), "descriptors": np.full((3, 4), 1e6)}, InputError),
    ({"keypoints": np.zeros((3, 2)), "point3D_ids": np.arange(3)}, InputError),
    ({"keypoints": np.zeros((3, 2)), "point3D_ids": np.arange(3), "descriptors": np.zeros((3, 4)),
      "scores": np.zeros(3)}, InputError),
])
def test_sparse_entries_are_checked(tmp_path, arrays, error):
    with FeatureStore(tmp_path / "map.h5", mode="a") as store, pytest.raises(error):
        store.put(MID, "sparse", "a.png", arrays)


def test_bad_keys_labels_and_arrays_are_refused(tmp_path):
    with FeatureStore(tmp_path / "map.h5", mode="a") as store:
        with pytest.raises(InputError, match="300"):
            store.put_labels(MID, "a.png", np.full((2, 2), 300))
        with pytest.raises(ShapeError, match="logits"):
            store.put_labels(MID, "a.png", np.zeros((2, 2), int), np.zeros((19, 2, 3)))
        with pytest.raises(InputError, match="dtype"):
            store.put(MID, "misc", "a.png", {"text": np.array(["x"])})
        with pytest.raises(InputError, match="array name"):
            store.put(MID, "misc", "a.png", {"a/b": np.zeros(1)})
        with pytest.raises(InputError, match="image name"):
            store.put_global(MID, "", np.zeros(1))
        with pytest.raises(InputError, match="model id"):
            store.put_global("a/b", "x.png", np.zeros(1))
        with pytest.raises(InputError, match="kind"):
            store.put("vgg", "Sparse", "x.png", {"a": np.zeros(1)})
        with pytest.raises(MissingEntryError, match="x.png") as err:
            store.get_sparse(MID, "x.png")
        assert isinstance(err.value, KeyError)


def test_read_only_and_closed_stores_refuse_writes(tmp_path):
    path = tmp_path / "map.h5"
    with pytest.raises(InputError, match="no feature store"):
        FeatureStore(path)
    with pytest.raises(InputError, match="mode"):
        FeatureStore(path, mode="w")
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.ones(2))
    with FeatureStore(path) as store, pytest.raises(InputError, match="read-only"):
        store.put_global(MID, "b.png", np.ones(2))
    with pytest.raises(InputError, match="closed"):
        store.has(MID, "global", "a.png")
    store.close()  # closing again is harmless


# ------------------------------------------------------------------ resuming
def test_second_run_skips_stored_names(tmp_path):
    path = tmp_path / "map.h5"
    assert write_entries(path, 0, 10, flush_every=3) == 10
    assert write_entries(path, 0, 25, flush_every=3) == 15
    assert write_entries(path, 0, 25) == 0
    with FeatureStore(path) as store:
        assert store.names(MID, SPARSE) == {image_name(i) for i in range(25)}
        for i in range(25):
            assert_sparse_equal(store, i)


def test_put_writes_a_shard_when_the_buffer_is_full(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a", flush_bytes=1000) as store:
        for i in range(6):
            store.put_sparse(MID, image_name(i), *sparse_entry(i))   # ~ 200-300 bytes each
        shards = sorted(p.name for p in store.parts_dir.iterdir())
        assert 1 <= len(shards) < 6 and shards[0] == "000001.h5"
    assert not store.parts_dir.exists()


# ------------------------------------------------------------------- configs
def test_configs_are_recorded_and_must_not_change(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        with pytest.raises(MissingEntryError, match="no config"):
            store.config(MID)
        store.set_config(MID, CONFIG)
        store.set_config(MID, dict(reversed(list(CONFIG.items()))))   # same config, other key order
        assert store.config(MID) == CONFIG
        with pytest.raises(InputError, match="JSON"):
            store.set_config("other", {"x": object()})
    with FeatureStore(path, mode="a") as store:
        store.set_config(MID, {**CONFIG, "layers": (14, 17, 21, 24, 28)})  # tuples are JSON lists
        with pytest.raises(ConfigMismatchError, match="max_side: stored 512, given 1024") as err:
            store.set_config(MID, {**CONFIG, "max_side": 1024})
        assert MID in str(err.value)
        with pytest.raises(ConfigMismatchError, match="extra: stored .absent., given 1"):
            store.set_config(MID, {**CONFIG, "extra": 1})
    with FeatureStore(path) as store:
        assert store.config(MID) == CONFIG


# ------------------------------------------------------ versions and formats
def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.ones(2))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    for mode in ("r", "a"):
        with pytest.raises(FormatError, match=f"format version {FORMAT_VERSION + 1} is newer"):
            FeatureStore(path, mode=mode)
    assert not path.with_name("map.h5.lock").exists()


def test_a_newer_shard_is_refused(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.ones(2))
        store.flush()
        crashed = crashed_copy(store, tmp_path / "crashed")
    shard = crashed.with_name("map.h5.parts") / "000001.h5"
    with h5py.File(shard, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatError, match="000001.h5.*newer"):
        FeatureStore(crashed)


def test_files_that_are_not_stores_are_refused_and_left_alone(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n")
    before = snapshot(tmp_path)
    for path, message in ((plain, "not a locseg feature store"), (text, "not a readable HDF5 file")):
        for mode in ("r", "a"):
            with pytest.raises(FormatError, match=message):
                FeatureStore(path, mode=mode)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------ crash recovery
def test_leftovers_of_a_killed_writer_are_read_and_merged(tmp_path):
    """Shards and temporaries as a killed writer leaves them (copied while it runs)."""
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.set_config(MID, CONFIG)
        for i in range(6):
            store.put_sparse(MID, image_name(i), *sparse_entry(i))
            if i % 2:
                store.flush()
        store.put_sparse(MID, image_name(6), *sparse_entry(6))      # buffered: lost by the crash
        crashed = crashed_copy(store, tmp_path / "crashed")
    (crashed.parent / ".map.h5.x1y2.tmp").write_bytes(b"half a main file")
    (crashed.parent / "map.h5.parts" / ".000004.h5.a1b2.tmp").write_bytes(b"half a shard")
    before = snapshot(crashed.parent)
    with FeatureStore(crashed) as store:
        assert store.names(MID, SPARSE) == {image_name(i) for i in range(6)}
        for i in range(6):
            assert_sparse_equal(store, i)
        assert store.config(MID) == CONFIG
    assert snapshot(crashed.parent) == before                       # reading changed nothing
    assert write_entries(crashed, 0, 8) == 2
    assert sorted(os.listdir(crashed.parent)) == ["map.h5"]
    with FeatureStore(crashed) as store:
        for i in range(8):
            assert_sparse_equal(store, i)


def test_a_kill_after_merging_but_before_deleting_shards_is_harmless(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.ones(2))
        store.flush()
        parts = tmp_path / "saved-parts"
        shutil.copytree(store.parts_dir, parts)
    shutil.copytree(parts, path.with_name("map.h5.parts"))          # the shards the kill left behind
    with FeatureStore(path) as store:
        assert store.names(MID, "global") == {"a.png"}
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.full(2, 3.0))
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.get_global(MID, "a.png"), [3.0, 3.0])
    assert sorted(os.listdir(tmp_path)) == ["map.h5", "saved-parts"]


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_store import write_entries
write_entries({path!r}, 0, {total}, flush_every=3, report=True)
"""


@pytest.mark.parametrize("moment, delay", [("writing", 0.003), ("closing", 0.01)])
def test_sigkill_leaves_a_store_that_the_next_run_completes(tmp_path, moment, delay):
    path, total = tmp_path / "map.h5", 60
    code = CHILD.format(tests=str(TESTS), path=str(path), total=total)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        for line in child.stdout:
            if line.startswith("committed"):
                committed = int(line.split()[1])
            if (moment == "writing" and committed >= 12) or line.startswith(moment):
                break
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    if moment == "writing":
        assert child.returncode == -signal.SIGKILL and committed < total
    before = snapshot(tmp_path)
    with FeatureStore(path) as store:
        stored = store.names(MID, SPARSE)
        assert {image_name(i) for i in range(committed)} <= stored   # every committed entry survived
        for i in range(total):
            if image_name(i) in stored:
                assert_sparse_equal(store, i)                      # and is intact
        assert store.config(MID) == CONFIG
    assert snapshot(tmp_path) == before
    assert write_entries(path, 0, total) == total - len(stored)
    assert sorted(os.listdir(tmp_path)) == ["map.h5"]
    with FeatureStore(path) as store:
        assert store.names(MID, SPARSE) == {image_name(i) for i in range(total)}
        for i in range(total):
            assert_sparse_equal(store, i)


# --------------------------------------------------------------------- locks
def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "map.h5"
    with FeatureStore(path, mode="a") as writer:
        writer.put_global(MID, "a.png", np.ones(2))
        writer.flush()
        with pytest.raises(StoreLockedError, match=f"process {os.getpid()}"):
            FeatureStore(path, mode="a")
        with FeatureStore(path) as reader:                        # readers take no lock
            assert reader.has(MID, "global", "a.png")
    assert not path.with_name("map.h5.lock").exists()
    with FeatureStore(path, mode="a") as writer:                  # released on close
        assert writer.has(MID, "global", "a.png")


def test_a_lock_file_left_by_a_dead_writer_is_taken_over(tmp_path):
    path = tmp_path / "map.h5"
    path.with_name("map.h5.lock").write_text("999999999 elsewhere\n")
    with FeatureStore(path, mode="a") as store:
        store.put_global(MID, "a.png", np.ones(2))
        assert path.with_name("map.h5.lock").read_text().split()[0] == str(os.getpid())
    assert sorted(os.listdir(tmp_path)) == ["map.h5"]
