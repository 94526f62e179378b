"""Adversarial training (training/trainer.py): methods, resume, checkpoints, DDP under torchrun, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from trustvision.data import bundled
from trustvision.models import zoo
from trustvision.training import checkpoint
from trustvision.training.trainer import TrainConfig, evaluate, train
from trustvision.errors import TrustVisionError
from torchrun import torchrun
from trustvision.models.classifier import Classifier


@pytest.fixture(scope="module")
def digits():
    return bundled.load("digits").split(0.2, seed=0)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=32, eps=0.1, attack_steps=3, eval_images=300, eval_steps=10, trades_beta=3.0)
    return TrainConfig(**{**base, **kw})


def _fit(data, **kw):
    torch.manual_seed(0)
    return train(zoo.smallcnn(10, 1), data[0], data[1], _cfg(**kw))


@pytest.fixture(scope="module")
def trained(digits):
    """method -> TrainResult on the 8x8 digits (6 epochs, eps = 0.1, PGD-10 evaluation)."""
    return {m: _fit(digits, method=m) for m in ("standard", "pgd", "fast", "trades")}


@pytest.mark.slow
def test_adversarial_training_buys_robustness(trained):
    last = {m: r.history[-1] for m, r in trained.items()}
    # measured: standard 0.95 clean / 0.43 PGD; pgd 0.93 / 0.69; fast 0.94 / 0.68; trades 0.94 / 0.73
    for m in ("pgd", "fast", "trades"):
        assert last[m]["robust_accuracy"] > last["standard"]["robust_accuracy"] + 0.15, (m, last)
        assert last[m]["clean_accuracy"] > 0.85
    assert last["standard"]["clean_accuracy"] > 0.9
    for r in trained.values():
        assert len(r.history) == 6 and all(h["robust_accuracy"] <= h["clean_accuracy"] for h in r.history)
        assert r.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)          # cosine ends at 0


@pytest.mark.slow
def test_evaluate_agrees_with_the_pgd_attack(trained, digits):
    """The per-epoch PGD number matches the library PGD attack on the same images and budget (within noise)."""
    from trustvision.attacks import PGD
    clf = Classifier(trained["pgd"].module, num_classes=10, channels=1)
    test = digits[1].subset(range(300))
    ours = evaluate(clf, test, eps=0.1, steps=10, batch_size=64, seed=0)["robust_accuracy"]
    res = PGD(eps=0.1, steps=10, seed=1)(clf, test.x, test.y)
    ok = clf.predict(test.x).argmax(1) == test.y
    ref = float((ok & ~res.success).float().mean())
    assert abs(ours - ref) < 0.04, (ours, ref)


@pytest.mark.slow
def test_resume_gives_the_same_weights(digits, tmp_path):
    """Interrupt after epoch 1 of 2, resume: bit-identical to an uninterrupted run."""
    cfg = dict(method="pgd", epochs=2, eval_images=64)
    full = _fit(digits, **cfg)

    class Stop:                      # a progress sink that interrupts the second epoch
        def task(self, desc, total):
            def advance(n=1):
                if desc.endswith("2/2"):
                    raise KeyboardInterrupt
            return advance

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(zoo.smallcnn(10, 1), digits[0], digits[1], _cfg(**cfg), out_dir=tmp_path, progress=Stop())
    assert checkpoint.load(tmp_path / "checkpoint.safetensors", zoo.smallcnn(10, 1),
                           torch.optim.Adam(zoo.smallcnn(10, 1).parameters())).epoch == 1
    torch.manual_seed(123)           # a different init: resume must overwrite it from the checkpoint
    again = train(zoo.smallcnn(10, 1), digits[0], digits[1], _cfg(**cfg), out_dir=tmp_path)
    assert again.resumed_from == 1 and [h["epoch"] for h in again.history] == [1, 2]
    for (k, a), b in zip(full.module.state_dict().items(), again.module.state_dict().values()):
        assert torch.equal(a, b), k
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(saved["0.weight"], full.module.state_dict()["0.weight"])
    assert json.loads((tmp_path / "history.json").read_text())["history"][-1]["epoch"] == 2


def test_checkpoint_errors(digits, tmp_path):
    train(zoo.smallcnn(10, 1), digits[0].subset(range(64)), None, _cfg(epochs=1), out_dir=tmp_path)
    with pytest.raises(TrustVisionError, match="other training settings"):
        train(zoo.smallcnn(10, 1), digits[0].subset(range(64)), None, _cfg(epochs=2, lr=1e-3), out_dir=tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(TrustVisionError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "checkpoint.safetensors", zoo.smallcnn(10, 1),
                        torch.optim.Adam(zoo.smallcnn(10, 1).parameters()))


@pytest.mark.slow
def test_catastrophic_overfitting_warning(trained):
    from trustvision.training.trainer import overfitting_warning
    # the fast-AT MNIST run of docs/training.md at eps 0.3, epoch 8: 67 % on its FGSM examples, 9 % under PGD
    row = {"train_accuracy": 0.67, "robust_accuracy": 0.09, "eval_eps": 0.3}
    assert "catastrophic overfitting" in overfitting_warning("fast", row)
    assert overfitting_warning("pgd", {**row, "robust_accuracy": 0.58}) is None      # the PGD-AT run: 62 % vs 58 %
    assert overfitting_warning("trades", row) is None                                # its train accuracy is clean
    for r in trained.values():                                                        # the digits runs are healthy
        assert all("warning" not in h for h in r.history)


@pytest.mark.parametrize("kw, match", [({"method": "madry"}, "method"), ({"method": "pgd", "eps": 0}, "eps"),
                                       ({"epochs": 0}, "epochs"), ({"amp": "fp8"}, "amp"), ({"lr": -1}, "lr")])
def test_bad_config(kw, match):
    with pytest.raises(TrustVisionError, match=match):
        TrainConfig(**kw)


@pytest.mark.slow
def test_amp_and_sgd_step_schedule_run(digits):
    r = _fit((digits[0].subset(range(256)), digits[1]), method="fast", epochs=2, amp="bf16", optimizer="sgd",
             lr=0.05, schedule="step", eval_images=64)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r.history)
    assert r.history[-1]["lr"] == pytest.approx(0.05 * 0.01)


def _torchrun(nproc: int, out, extra=()):
    return torchrun(nproc, ["train", "--arch", "trustvision:smallcnn", "--data", "digits", "--method", "pgd",
                            "--steps", "2", "--eps", "0.1", "--epochs", "2", "--batch-size", "64",
                            "--eval-images", "200", "--out", str(out), *extra])


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """2 gloo processes (DDP, DistributedSampler, all-reduced metrics) follow the 1-process run."""
    runs = {}
    for n in (1, 2):
        p = _torchrun(n, tmp_path / f"p{n}")
        assert p.returncode == 0, p.stderr[-2000:]
        runs[n] = json.loads((tmp_path / f"p{n}" / "history.json").read_text())["history"]
    # measured: final train loss 2.06453 vs 2.06488, clean 0.555 vs 0.55, PGD 0.355 vs 0.355
    for a, b in zip(runs[1], runs[2]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=5e-3)
        assert abs(a["clean_accuracy"] - b["clean_accuracy"]) <= 0.03
        assert abs(a["robust_accuracy"] - b["robust_accuracy"]) <= 0.03
        assert a["eval_images"] == b["eval_images"] == 200
    w1, w2 = (load_file(str(tmp_path / f"p{n}" / "model.safetensors")) for n in (1, 2))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 0.05


@pytest.mark.slow
def test_cli_train_and_errors(tmp_path):
    from typer.testing import CliRunner
    from trustvision.cli.app import app
    r = CliRunner().invoke(app, ["train", "--arch", "trustvision:smallcnn", "--data", "digits", "--method", "fast",
                                 "--eps", "0.1", "--epochs", "1", "--batch-size", "64", "--eval-images", "50",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model.safetensors").exists() and "per-epoch metrics" in r.output
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"
    from trustvision.models.loading import load_model
    clf = load_model(str(tmp_path / "model.safetensors"), arch="trustvision:smallcnn", num_classes=10, channels=1)
    assert clf(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    rgb = CliRunner().invoke(app, ["train", "--arch", "torchvision:resnet18", "--data", "digits", "--epochs", "1",
                                   "--eval-fraction", "0.9", "--eval-images", "32", "--out", str(tmp_path / "rgb")])
    assert rgb.exit_code == 0, rgb.output                 # grey digits replicated to the 3 channels it takes
    assert "3 channels" not in rgb.output and (tmp_path / "rgb" / "model.safetensors").exists()
    for args, word in ((["--arch", "trustvision:smallcnn", "--method", "magic"], "method"),
                       (["--arch", "trustvision:smallcnn", "--num-classes", "3"], "classes"),
                       (["--arch", "trustvision:nope"], "nope"),
                       (["--arch", "trustvision:smallcnn", "--batch-size", "3", "--eval-fraction", "1.5"], "eval")):
        r = CliRunner().invoke(app, ["train", "--data", "digits", "--out", str(tmp_path / "e"), *args])
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and word in lines[0], r.output
