"""Device selection (``locseg.device``), and the networks on a GPU against the CPU.

The GPU tests run only where CUDA is present; on a CPU-only machine they skip.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from locseg_cli.main import cli

from locseg.device import module_device, resolve_device
from locseg.errors import InputError
from locseg.models.load import load_hypercolumns
from locseg.train.checkpoint import load_checkpoint
from locseg.train.pairs import PairSample
from locseg.train.segmentation import SegConfig, train_segmentation

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


def test_unknown_and_unavailable_devices_are_refused():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="'cuda:99' is not available"):
        resolve_device("cuda:99")
    with pytest.raises(InputError, match="unsupported device"):
        resolve_device("meta")


def test_module_device_of_parameters_buffers_and_neither():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.BatchNorm1d(2, affine=False)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")


def test_a_pair_already_on_the_device_is_not_copied():
    sample = PairSample(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), torch.zeros(2, 2), torch.zeros(2, 2), "a", "b")
    assert sample.to("cpu") is sample


@pytest.mark.parametrize("arguments", [
    ["localize"],
    ["segment", "--weights", "x", "--images", ".", "--output", "out"],
    ["train-seg", "--dataset", ".", "--output", "x.pt"],
])
def test_the_commands_refuse_an_unavailable_device_in_one_line(arguments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, [*arguments, "--device", "cuda:99"])
    assert out.exit_code == 2, out.output
    assert "locseg: error: device 'cuda:99' is not available" in out.output
    assert not (tmp_path / "outputs").exists()   # nothing was generated or written first


@needs_cuda
def test_hypercolumns_on_the_gpu_match_the_cpu():
    model = load_hypercolumns("vgg16-slim", "synthseasons-slim-dmcgn-v3").eval()
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        on_cpu = model.dense(image)
        on_gpu = model.to("cuda").dense(image.to("cuda")).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-3)


@needs_cuda
def test_segmentation_trains_on_the_gpu_and_resumes_on_the_cpu(small_street, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_step_3(stage, done, total, parts):
        if done == 3:
            raise Stop

    config = SegConfig(max_side=96, iterations=4, warmup=1, checkpoint_every=1, validate_every=2,
                       labels_per_condition=1, max_points=256)
    with pytest.raises(Stop):   # the checkpoint of step 2, written from the GPU, survives
        train_segmentation([small_street], tmp_path / "run.pt", config, progress=stop_at_step_3, device="cuda")
    assert load_checkpoint(tmp_path / "run.pt").step == 2
    output = train_segmentation([small_street], tmp_path / "run.pt", config, resume=True, device="cpu")
    history = load_checkpoint(output).metrics["history"]
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(h["total"])) for h in history)
