"""Weight registry: bundled names, local files, safe torch loading, the download cache."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from locseg.errors import FormatError, InputError, RegistryError
from locseg.models import weights
from locseg.models.weights import (
    ChecksumError,
    assets_dir,
    bundled_names,
    cache_dir,
    file_sha256,
    load_state_dict,
    read_safetensors_metadata,
    register_bundled,
    resolve_weights,
    save_safetensors,
)
from locseg.models.weights_info import summarize_weights

REPO = Path(__file__).resolve().parent.parent


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "head.weight": torch.randn(2, 4, generator=g).half(),
    }


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors stores keys in its own order
    for key, value in a.items():
        assert value.dtype == b[key].dtype, key
        assert torch.equal(value, b[key]), key


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """An empty registry and private assets / cache directories for every test."""
    monkeypatch.setattr(weights, "_BUNDLED", {})
    monkeypatch.setenv("LOCSEG_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("LOCSEG_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- bundled names


def test_bundled_name_resolves_in_assets_dir(tmp_path):
    state = tiny_state()
    path = save_safetensors(state, tmp_path / "assets" / "synth" / "slim.safetensors")
    entry = register_bundled("synthseasons-slim", "synth/slim.safetensors", file_sha256(path),
                             "slim VGG on SynthSeasons train streets", model="vgg16-slim")
    assert bundled_names() == ["synthseasons-slim"]
    assert entry.path == path
    assert resolve_weights("synthseasons-slim") == path
    assert_same_state(load_state_dict("synthseasons-slim"), state)


def test_bundled_file_is_checked_against_its_digest(tmp_path):
    path = save_safetensors(tiny_state(), tmp_path / "assets" / "w.safetensors")
    register_bundled("w", "w.safetensors", "0" * 64, "wrong digest on purpose")
    with pytest.raises(ChecksumError) as err:
        resolve_weights("w")
    assert "0" * 64 in str(err.value) and file_sha256(path) in str(err.value)


def test_missing_bundled_file_says_where_it_looked(tmp_path):
    register_bundled("gone", "gone.safetensors", "a" * 64, "not shipped")
    with pytest.raises(InputError, match="LOCSEG_ASSETS") as err:
        resolve_weights("gone")
    assert str(tmp_path / "assets" / "gone.safetensors") in str(err.value)


def test_unknown_name_lists_the_bundled_ones():
    register_bundled("synthseasons-slim", "a.safetensors", "a" * 64, "")
    register_bundled("synthseasons-vgg", "b.safetensors", "b" * 64, "")
    with pytest.raises(RegistryError) as err:
        resolve_weights("synthseason-slim")
    assert err.value.valid == ["synthseasons-slim", "synthseasons-vgg"]
    assert "synthseasons-slim, synthseasons-vgg" in str(err.value)


def test_missing_path_is_reported_as_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist") as err:
        resolve_weights(str(tmp_path / "nowhere.pth"))
    assert not isinstance(err.value, RegistryError)


def test_register_refuses_bad_entries():
    with pytest.raises(InputError, match="64 hexadecimal"):
        register_bundled("x", "x.safetensors", "abc", "")
    with pytest.raises(InputError, match="relative path"):
        register_bundled("x", "../x.safetensors", "a" * 64, "")
    with pytest.raises(InputError, match="relative path"):
        register_bundled("x", "x.pth", "a" * 64, "")
    register_bundled("x", "x.safetensors", "a" * 64, "")
    with pytest.raises(InputError, match="already registered"):
        register_bundled("x", "y.safetensors", "b" * 64, "")
    assert register_bundled("x", "y.safetensors", "B" * 64, "", replace=True).sha256 == "b" * 64
    for ratio in (0, 1.5):
        with pytest.raises(InputError, match=f"match_ratio must be in \\(0, 1\\], got {ratio}"):
            register_bundled("y", "y.safetensors", "c" * 64, "", match_ratio=ratio)



def test_default_directories(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCSEG_ASSETS")
    assert assets_dir() == REPO / "assets"
    monkeypatch.delenv("LOCSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "locseg" / "weights"


# --------------------------------------------------------------------------- torch files


def test_pth_round_trip_with_weights_only(tmp_path):
    state = tiny_state()
    torch.save(state, tmp_path / "w.pth")
    assert_same_state(load_state_dict(tmp_path / "w.pth"), state)
    assert_same_state(load_state_dict(str(tmp_path / "w.pth")), state)


def test_module_state_dict_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(load_state_dict(tmp_path / "m.pt"))
    assert_same_state(fresh.state_dict(), model.state_dict())


EXECUTED: list[str] = []


def _record(what: str) -> str:
    EXECUTED.append(what)
    return what


class Payload:
    """Unpickling this would call _record: the canonical code-execution payload."""

    def __reduce__(self):
        return (_record, ("unpickled!",))


class Recipe:
    def __init__(self):
        self.lr = 0.1


@pytest.mark.parametrize("intruder", [Payload(), Recipe()], ids=["reduce-payload", "class-instance"])
def test_pth_with_pickled_objects_is_refused(tmp_path, intruder):
    torch.save({"state_dict": tiny_state(), "extra": intruder}, tmp_path / "evil.pth")
    EXECUTED.clear()
    with pytest.raises(FormatError, match="refused") as err:
        load_state_dict(tmp_path / "evil.pth")
    assert EXECUTED == []
    assert err.value.path == tmp_path / "evil.pth"
    assert "weights_only" in str(err.value)
    assert ("_record" if isinstance(intruder, Payload) else "Recipe") in str(err.value)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state"])
def test_nested_checkpoint_is_unwrapped(tmp_path, wrapper):
    state = tiny_state()
    torch.save({"epoch": 3, wrapper: state, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    assert_same_state(load_state_dict(tmp_path / "ckpt.pth"), state)


def test_twice_nested_checkpoint_is_unwrapped(tmp_path):
    state = tiny_state()
    torch.save({"model": {"state_dict": state, "arch": "vgg16"}}, tmp_path / "ckpt.pth")
    assert_same_state(load_state_dict(tmp_path / "ckpt.pth"), state)


def test_file_that_is_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "weights": [torch.zeros(2)]}, tmp_path / "odd.pth")
    with pytest.raises(FormatError, match="not a state dict"):
        load_state_dict(tmp_path / "odd.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(FormatError, match="mapping"):
        load_state_dict(tmp_path / "list.pth")


def test_truncated_or_foreign_files_are_format_errors(tmp_path):
    torch.save(tiny_state(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated") as err:
        load_state_dict(tmp_path / "cut.pth")
    assert str(tmp_path / "cut.pth") in str(err.value)
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(FormatError, match="not a weights file"):
        load_state_dict(tmp_path / "notes.pth")
    save_safetensors(tiny_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(FormatError):
        load_state_dict(tmp_path / "cut.safetensors")


def test_format_is_read_from_content_not_name(tmp_path):
    state = tiny_state()
    save_safetensors(state, tmp_path / "actually_safetensors.pth")
    torch.save(state, tmp_path / "actually_torch.bin")
    assert_same_state(load_state_dict(tmp_path / "actually_safetensors.pth"), state)
    assert_same_state(load_state_dict(tmp_path / "actually_torch.bin"), state)


def test_expected_digest_of_a_local_file(tmp_path):
    path = save_safetensors(tiny_state(), tmp_path / "w.safetensors")
    assert resolve_weights(path, sha256=file_sha256(path).upper()) == path
    with pytest.raises(ChecksumError):
        resolve_weights(path, sha256="f" * 64)


# --------------------------------------------------------------------------- safetensors


def test_safetensors_metadata_round_trip(tmp_path):
    state = tiny_state()
    meta = {"backbone": "vgg16-slim", "recipe": '{"lr": 0.001, "steps": 2000}', "locseg": "0.1.0"}
    path = save_safetensors(state, tmp_path / "out" / "w.safetensors", metadata=meta)
    assert read_safetensors_metadata(path) == meta
    assert_same_state(load_state_dict(path), state)
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temporary left
    save_safetensors(state, tmp_path / "plain.safetensors")
    assert read_safetensors_metadata(tmp_path / "plain.safetensors") == {}


def test_save_safetensors_handles_tied_and_strided_tensors(tmp_path):
    shared = torch.randn(4, 6)
    state = {"embed.weight": shared, "lm_head.weight": shared, "t": shared.t(), "row": shared[1]}
    path = save_safetensors(state, tmp_path / "tied.safetensors")
    assert_same_state(load_state_dict(path), {k: v.contiguous() for k, v in state.items()})


def test_save_safetensors_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="strings"):
        save_safetensors(tiny_state(), tmp_path / "w.safetensors", metadata={"steps": 2000})
    with pytest.raises(InputError, match="not a tensor"):
        save_safetensors({"a": [1, 2]}, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_the_same_tensors_and_metadata_always_give_the_same_bytes(tmp_path):
    """The writer's header order varies between calls; the file written must not."""
    state, meta = tiny_state(), {f"key{i}": f"value {i} at 2° in µm\n" for i in range(12)}
    digests = {file_sha256(save_safetensors(state, tmp_path / f"{i}.safetensors",
                                            metadata=dict(reversed(meta.items())) if i % 2 else meta))
               for i in range(6)}
    assert len(digests) == 1
    assert read_safetensors_metadata(tmp_path / "0.safetensors") == meta
    assert_same_state(load_state_dict(tmp_path / "5.safetensors"), state)


# --------------------------------------------------------------------------- bundling


def trained_file(path: Path, root: Path, init: str = "synthseasons-slim-dmcgn-v12") -> Path:
    """A file as a run exports it: absolute training folders under ``root``."""
    sources = {"folders": [[str(root / "train-0" / "correspondences"), str(root / "train-0" / "images")]],
               "pairs": 315}
    recipe = {"init": init, "lr": 3e-4, "backbone": "vgg16-slim"}
    return save_safetensors(tiny_state(), path, metadata={"sources": json.dumps(sources),
                                                           "recipe": json.dumps(recipe), "backbone": "vgg16-slim"})


def test_bundling_makes_the_recorded_paths_relative_and_keeps_everything_else(tmp_path):
    from locseg.models.bundle import bundle_weights

    root = tmp_path / "repo"
    source = trained_file(tmp_path / "run.safetensors", root, init=str(root / "runs" / "v1.safetensors"))
    first = bundle_weights(source, tmp_path / "assets" / "a.safetensors", root)
    meta = read_safetensors_metadata(first)
    assert json.loads(meta["sources"]) == {"folders": [["train-0/correspondences", "train-0/images"]], "pairs": 315}
    assert json.loads(meta["recipe"]) == {"init": "runs/v1.safetensors", "lr": 3e-4, "backbone": "vgg16-slim"}
    assert meta["backbone"] == "vgg16-slim"
    assert_same_state(load_state_dict(first), tiny_state())
    again = bundle_weights(first, tmp_path / "again.safetensors", root)   # nothing left to change
    assert file_sha256(again) == file_sha256(first)


def test_bundling_finds_paths_by_any_name_of_the_root_and_in_any_absolute_form(tmp_path, monkeypatch):
    """A root reached through a symlink, a home-relative path and a file URL are all the
    same folder; a Windows path is absolute too, and lies outside any POSIX root."""
    from locseg.models.bundle import bundle_weights, relative_record

    real = tmp_path / "real" / "repo"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("HOME", str(tmp_path / "link"))
    record = {"init": f"file://{real}/runs/v%201.safetensors", "folders": ["~/repo/train-0", str(real / "train-1")],
              "lr": "3e-4", "name": "synthseasons-slim-dmcgn-v12", "relative": "train-2"}
    expected = {"init": "runs/v 1.safetensors", "folders": ["train-0", "train-1"], "lr": "3e-4",
                "name": "synthseasons-slim-dmcgn-v12", "relative": "train-2"}
    assert relative_record(record, tmp_path / "link" / "repo") == expected
    assert relative_record(record, real) == expected
    source = save_safetensors(tiny_state(), tmp_path / "run.safetensors", metadata={"recipe": json.dumps(record)})
    bundled = bundle_weights(source, tmp_path / "b.safetensors", tmp_path / "link" / "repo")
    assert json.loads(read_safetensors_metadata(bundled)["recipe"]) == expected
    with pytest.raises(InputError, match=r"folders\[0\] records C:\\data\\train-0, which is outside"):
        relative_record({"folders": ["C:\\data\\train-0"]}, real)


def test_bundling_refuses_a_path_outside_the_root_and_files_that_are_not_safetensors(tmp_path):
    from locseg.models.bundle import bundle_weights

    source = trained_file(tmp_path / "run.safetensors", tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"sources.folders\[0\]\[0\] records .*elsewhere.* outside"):
        bundle_weights(source, tmp_path / "out.safetensors", tmp_path / "repo")
    torch.save(tiny_state(), tmp_path / "w.pt")
    with pytest.raises(FormatError, match="not a safetensors file"):
        bundle_weights(tmp_path / "w.pt", tmp_path / "out.safetensors", tmp_path)
    assert not (tmp_path / "out.safetensors").exists()


# --------------------------------------------------------------------------- downloads


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on 127.0.0.1 (free port); count requests; stop at teardown.

    A watchdog shuts the server down after 60 s even if teardown never runs.
    """
    for name in ("no_proxy", "NO_PROXY"):  # a user's http_proxy must not see these requests
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(_Handler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    server.root, server.requests = root, requests
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_download_checks_digest_then_uses_the_cache(http_server, tmp_path):
    state = tiny_state()
    source = save_safetensors(state, http_server.root / "model.safetensors", {"backbone": "vgg16"})
    digest = file_sha256(source)
    url = f"{http_server.url}/model.safetensors"
    seen = []

    path = resolve_weights(url, sha256=digest, progress=lambda done, total: seen.append((done, total)))
    assert path.parent == tmp_path / "cache" and path.name.endswith(".safetensors")
    assert file_sha256(path) == digest
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert_same_state(load_state_dict(url, sha256=digest), state)
    assert http_server.requests == ["/model.safetensors"]  # the second use did not download

    http_server.shutdown()
    http_server.server_close()
    assert_same_state(load_state_dict(url), state)
    assert read_safetensors_metadata(url) == {"backbone": "vgg16"}
    assert len(http_server.requests) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]


def test_url_download_with_wrong_digest_leaves_nothing(http_server, tmp_path):
    source = http_server.root / "model.pth"
    torch.save(tiny_state(), source)
    url = f"{http_server.url}/model.pth"
    wrong = "0123456789abcdef" * 4
    with pytest.raises(ChecksumError) as err:
        load_state_dict(url, sha256=wrong)
    assert wrong in str(err.value) and file_sha256(source) in str(err.value)
    assert err.value.source == url
    assert list((tmp_path / "cache").iterdir()) == []
    # the right digest then downloads, and a wrong one does not pass on the cached copy
    assert_same_state(load_state_dict(url, sha256=file_sha256(source)), tiny_state())
    with pytest.raises(ChecksumError, match="cached copy"):
        resolve_weights(url, sha256=wrong)


def test_same_file_name_from_two_urls_does_not_collide(http_server):
    for folder, seed in (("v1", 1), ("v2", 2)):
        (http_server.root / folder).mkdir()
        torch.save(tiny_state(seed), http_server.root / folder / "model.pth")
    a = load_state_dict(f"{http_server.url}/v1/model.pth")
    b = load_state_dict(f"{http_server.url}/v2/model.pth")
    assert_same_state(a, tiny_state(1))
    assert_same_state(b, tiny_state(2))


def test_http_error_leaves_nothing_in_cache(http_server, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        resolve_weights(f"{http_server.url}/missing.pth")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_file_url(tmp_path):
    state = tiny_state()
    source = tmp_path / "my weights.pth"
    torch.save({"state_dict": state}, source)
    url = source.as_uri()
    assert "%20" in url
    assert_same_state(load_state_dict(url, sha256=file_sha256(source)), state)
    source.unlink()
    assert_same_state(load_state_dict(url), state)  # from the cache now
    with pytest.raises(InputError, match="cannot download"):
        resolve_weights((tmp_path / "absent.pth").as_uri())


def test_unsupported_url_scheme():
    with pytest.raises(InputError, match="http, https, file"):
        resolve_weights("s3://bucket/model.pth")


# --------------------------------------------------------------------------- describing a file


def test_a_summary_names_the_bundled_weights_a_file_was_trained_from(tmp_path):
    base = save_safetensors(tiny_state(0), tmp_path / "assets" / "base.safetensors")
    register_bundled("base", "base.safetensors", file_sha256(base), "the start", model="vgg16-slim")
    trained = save_safetensors(tiny_state(1), tmp_path / "trained.safetensors", metadata={
        "backbone": "vgg16-slim", "init_digest": file_sha256(base), "recipe": json.dumps({"lr": 3e-4, "seed": 7}),
        "sources": json.dumps({"folders": [["/data/a/correspondences", "/data/a/images"]], "pairs": 12})})
    summary = summarize_weights(trained)
    assert (summary.tensors, summary.parameters) == (4, 4 * 3 * 3 * 3 + 4 + 1 + 2 * 4)
    assert (summary.format, summary.bundled, summary.init) == ("safetensors", None, "base")
    assert summary.sha256 == file_sha256(trained)
    assert summary.trained_on == ["/data/a/correspondences"]
    assert summary.metadata["recipe"] == {"lr": 3e-4, "seed": 7}
    assert json.loads(json.dumps(summary.to_dict()))["init"] == "base"
    assert summarize_weights("base").bundled == "base"


def test_a_summary_of_a_torch_file_or_of_weights_without_a_record(tmp_path):
    torch.save(tiny_state(), tmp_path / "plain.pth")
    summary = summarize_weights(tmp_path / "plain.pth")
    assert (summary.format, summary.tensors, summary.metadata, summary.init, summary.trained_on) == (
        "torch", 4, {}, None, [])
    unknown = save_safetensors(tiny_state(), tmp_path / "other.safetensors", metadata={"init_digest": "ab" * 32})
    assert summarize_weights(unknown).init == "ab" * 32   # a digest no bundled file has stays a digest


@pytest.mark.parametrize("sources, folders", [
    ({"streets": ["/s/0", "/s/1"], "images": 90}, ["/s/0", "/s/1"]),                       # train-retrieval
    ({"datasets": ["/s/0"], "pairs": 40, "correspondences": ["/s/0/correspondences", "/s/6/correspondences"]},
     ["/s/0", "/s/0/correspondences", "/s/6/correspondences"]),                             # train-seg
], ids=["retrieval", "segmentation"])
def test_a_summary_lists_what_each_trainer_records_as_its_data(tmp_path, sources, folders):
    path = save_safetensors(tiny_state(), tmp_path / "w.safetensors", metadata={
        "sources": json.dumps(sources), "model": json.dumps({"classes": 19}), "classes": json.dumps(["road"])})
    summary = summarize_weights(path)
    assert summary.trained_on == folders
    assert (summary.metadata["model"], summary.metadata["classes"]) == ({"classes": 19}, ["road"])

