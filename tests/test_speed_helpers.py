"""The speed helpers of issue 19: forward batch sizes (batching.py), CPU threads (threads.py), and results
that do not depend on either (randomized-smoothing counts, faithfulness curves).  No timing here: speed is
measured by bench/floor.py, bench/smoothing.py and bench/demo.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from trustvision import batching, threads
from trustvision.batching import forward_batch
from trustvision.defenses import Smoothed
from trustvision.errors import TrustVisionError
from trustvision.explain import deletion_insertion
from trustvision.models.classifier import Classifier


class _Stub:
    """Just what forward_batch reads from a classifier."""

    def __init__(self, device="cpu", input_size=None, precision="fp32"):
        self.device, self.input_size, self.precision = torch.device(device), input_size, precision


def _tiny(channels: int = 1, classes: int = 4, linear_inputs: int | None = None) -> Classifier:
    """A small random CNN, or (``linear_inputs``) a random linear model whose votes vary under noise."""
    torch.manual_seed(0)
    if linear_inputs:
        net = nn.Sequential(nn.Flatten(), nn.Linear(linear_inputs, classes))
    else:
        net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(16, classes))
    return Classifier(net, num_classes=classes, channels=channels)


# ---------------------------------------------------------------- batching
def test_override_is_honoured_and_checked():
    assert forward_batch(_Stub(), "cpu", sample_shape=(1, 28, 28), override=3) == 3
    assert forward_batch(_Stub(), "cuda", sample_shape=(3, 224, 224), override=100_000) == 100_000
    for bad in (0, -5, 2.5, True, "64"):
        with pytest.raises(TrustVisionError, match="batch size"):
            forward_batch(_Stub(), "cpu", sample_shape=(1, 28, 28), override=bad)
    with pytest.raises(TrustVisionError, match="sample_shape"):
        forward_batch(_Stub(), "cpu", sample_shape=(0, 28, 28))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 224, 224), (3, 1024, 1024)])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_rule_gives_bounded_powers_of_two_smaller_for_bigger_images(shape, device):
    lo, hi = (batching.CPU_MIN, batching.CPU_MAX) if device == "cpu" else (batching.GPU_MIN, batching.GPU_MAX)
    b = forward_batch(_Stub(device), device, sample_shape=shape)
    assert lo <= b <= hi and b & (b - 1) == 0
    bigger = forward_batch(_Stub(device), device, sample_shape=(shape[0], shape[1] * 2, shape[2] * 2))
    assert bigger <= b


def test_rule_on_the_documented_examples_and_the_model_input():
    cpu = _Stub()
    assert forward_batch(cpu, sample_shape=(1, 28, 28)) == 64           # MNIST on a CPU, tiny weights
    assert forward_batch(cpu, sample_shape=(3, 32, 32)) == 16           # CIFAR
    assert forward_batch(cpu, sample_shape=(3, 224, 224)) == batching.CPU_MIN
    assert forward_batch(_Stub(), "cuda", sample_shape=(1, 28, 28)) == batching.GPU_MAX
    # the classifier resizes to its input_size: that is what the batch must hold
    assert forward_batch(_Stub(input_size=(224, 224)), sample_shape=(3, 32, 32)) == batching.CPU_MIN
    # bf16 halves the bytes per image
    assert forward_batch(_Stub(precision="bf16"), sample_shape=(3, 32, 32)) == 32
    # large weights: larger batches (one image per CPU_WEIGHT_SHARE bytes), input still capped
    heavy = _Stub()
    heavy.module = nn.Linear(4096, 2048)                                 # 32 MiB of fp32 weights
    assert forward_batch(heavy, sample_shape=(3, 32, 32)) == 256
    assert forward_batch(heavy, sample_shape=(3, 1024, 1024)) == batching.CPU_MIN
    # the classifier's device is the default
    assert forward_batch(_Stub("cuda"), sample_shape=(1, 28, 28)) == batching.GPU_MAX


# ---------------------------------------------------------------- threads
@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_torch_and_respects_the_env_var(restore_threads, monkeypatch):
    assert threads.configure_threads(1).threads == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(threads.ENV, "3")
    choice = threads.configure_threads()
    assert (choice.threads, choice.reason) == (3, threads.ENV) and torch.get_num_threads() == 3
    assert threads.configure_threads(2).reason == "--threads" and torch.get_num_threads() == 2   # the option wins
    for bad in ("0", "two", "1.5"):
        monkeypatch.setenv(threads.ENV, bad)
        with pytest.raises(TrustVisionError, match=threads.ENV):
            threads.configure_threads()
    with pytest.raises(TrustVisionError, match="--threads"):
        threads.configure_threads(0)


def test_a_plain_omp_num_threads_is_obeyed_after_the_own_settings(restore_threads, monkeypatch):
    """torchrun sets OMP_NUM_THREADS=1 per process: N ranks must not each take every core."""
    monkeypatch.setattr(threads, "idle_cores", lambda sample_s=0.0: 4.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = threads.configure_threads()
    assert (choice.threads, choice.reason) == (1, "OMP_NUM_THREADS") and torch.get_num_threads() == 1
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.configure_threads().threads == 2                     # trustvision's own setting wins
    monkeypatch.delenv(threads.ENV)
    for other in ("4,2", "", "0"):                                      # nested OpenMP lists etc.: the default
        monkeypatch.setenv("OMP_NUM_THREADS", other)
        assert threads.configure_threads().reason == "cores"


def test_default_is_the_available_cores_and_fewer_when_busy(restore_threads, monkeypatch):
    cores = threads.available_cores()
    assert 1 <= cores <= (torch.multiprocessing.cpu_count() or 1)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    for idle, want, reason in ((3.9, 4, "cores"), (3.6, 4, "cores"), (2.2, 2, "busy"), (0.1, 1, "busy")):
        monkeypatch.setattr(threads, "idle_cores", lambda sample_s=0.0, v=idle: v)
        choice = threads.configure_threads()
        assert (choice.threads, choice.reason, choice.cores) == (want, reason, 4)
        assert torch.get_num_threads() == want
    monkeypatch.setattr(threads, "idle_cores", lambda sample_s=0.0: None)     # nothing measurable: all cores
    assert threads.configure_threads().threads == 4
    idle = threads.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= len(threads._cpus())


def test_cli_threads_option(restore_threads):
    from trustvision.cli.app import app
    result = CliRunner().invoke(app, ["certify", "--help"])
    assert "--threads" in result.output
    bad = CliRunner().invoke(app, ["demo", "--threads", "0"])
    assert bad.exit_code == 2 and "--threads must be an integer >= 1" in bad.output


# ---------------------------------------------------------------- results independent of the batch size
@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 8, 8)])              # 35 values per image: not a multiple of 16
def test_smoothing_counts_do_not_depend_on_the_batch_size(shape):
    clf = _tiny(shape[0], linear_inputs=shape[0] * shape[1] * shape[2])
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    runs = [Smoothed(clf, 0.5, n0=30, n=150, batch_size=bs, seed=4) for bs in (1, 7, 64, 100, 1000, None)]
    ref = runs[0].certify(x)
    assert ref.counts.sum(1).tolist() == [150] * 3 and int((ref.counts > 0).sum()) > 3    # the votes vary
    for sm in runs[1:]:
        res = sm.certify(x)
        assert torch.equal(res.selection_counts, ref.selection_counts) and torch.equal(res.counts, ref.counts)
        assert torch.equal(res.prediction, ref.prediction) and torch.equal(res.radius, ref.radius)
        assert torch.equal(sm.predict(x).counts, runs[0].predict(x).counts)
    other_seed = Smoothed(clf, 0.5, n0=30, n=150, seed=5).certify(x)
    assert not torch.equal(other_seed.counts, ref.counts)


def test_smoothing_default_batch_comes_from_the_helper():
    clf = _tiny()
    sm = Smoothed(clf, 0.25)
    assert sm.batch_size is None and sm.describe()["batch_size"] == "auto"
    assert sm.forward_batch((1, 28, 28)) == forward_batch(clf, clf.device, sample_shape=(1, 28, 28)) == 64
    assert sm.batches(2, 1000, (1, 28, 28)) == 32
    assert Smoothed(clf, 0.25, batch_size=1000).batches(2, 1000) == 2
    with pytest.raises(TrustVisionError, match="batch_size"):
        Smoothed(clf, 0.25, batch_size=0)


def test_faithfulness_curves_do_not_depend_on_the_forward_batch():
    clf = _tiny(classes=3)
    g = torch.Generator().manual_seed(0)
    x, sal = torch.rand(5, 1, 6, 6, generator=g), torch.rand(5, 6, 6, generator=g)
    target = torch.tensor([0, 1, 2, 0, 1])
    runs = [deletion_insertion(clf, x, sal, target, steps=6, batch_size=2, max_images=m) for m in (1, 5, 13, None)]
    for r in runs[1:]:
        assert torch.allclose(r.deletion, runs[0].deletion, atol=1e-5)
        assert torch.allclose(r.insertion, runs[0].insertion, atol=1e-5)


def test_helper_reads_a_bare_module_and_commands_default_to_it():
    """A bare nn.Module (an anomaly detector's network) counts its own weights; certify, corruptions and
    anomaly leave --batch-size to forward_batch unless given."""
    from trustvision.cli import app
    big = nn.Linear(4096, 1024)                           # 16 MiB of weights: the weight term decides
    assert forward_batch(big, "cpu", sample_shape=(3, 64, 64)) == 128
    assert forward_batch(nn.Identity(), "cpu", sample_shape=(3, 64, 64)) == batching.CPU_MIN     # cache term: 5
    for cmd in ("certify", "corruptions", "anomaly"):
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
        line = next(ln for ln in r.output.splitlines() if "--batch-size" in ln)
        assert "default: " in line and "chosen by device (trustvision.batching.forward_batch)" in line, cmd
