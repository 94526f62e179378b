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
from scipy.stats import fisher_exact

from trustvision.attacks.base import perturbation_norms
from trustvision.attacks.universal import UniversalPerturbation, mean_norm
from trustvision.errors import TrustVisionError
from trustvision.evaluation.fooling import fooling_rates, random_controls, transfer_matrix
from trustvision.evaluation.sections.uap import source_images

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
    # measured: UAP 0.71, pixel-permuted 0.06, uniform random 0.02 at the same L2 norm (0.44 with the old batch average)
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
    # measured: fgsm 0.67, sgd 0.47; clean share of class 3 is 0.15 and the controls reach 0.09-0.11
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
    # A statistical test, not a knife's edge: on this machine the UAP fools 29/300 against 7/300 for the best
    # control (Fisher's exact one-sided p ~ 1e-4).  Fooling counts are whole images, so rounding is exact.
    n = len(xe)
    k_uap = round(r["uap"]["fooling_rate"] * n)
    k_ctrl = round(max(r["permuted"]["fooling_rate"], r["random"]["fooling_rate"]) * n)
    p = fisher_exact([[k_uap, n - k_uap], [k_ctrl, n - k_ctrl]], alternative="greater").pvalue
    assert p < 0.01 and k_uap >= 2 * k_ctrl, (k_uap, k_ctrl, p)


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


@pytest.mark.slow
@pytest.mark.parametrize("norm, zeta", [("l2", 0.3), ("linf", 0.3)])
def test_deepfool_beats_random_controls(mnist_clf, sets, norm, zeta):
    xb, xe, ye = sets
    res = UniversalPerturbation(method="deepfool", norm=norm, zeta=zeta, max_passes=1, batch_size=20, seed=0).generate(
        mnist_clf, xb[:200], reference=xe)
    r = fooling_rates(mnist_clf, xe, res.v, norm=norm, y=ye)
    ctrl = max(r["permuted"]["fooling_rate"], r["random"]["fooling_rate"])
    # measured (200 build images, 1 pass): L2 0.61 vs controls <= 0.06; L-inf 0.49 vs controls <= 0.17
    # (before the sequential scan, the averaged DeepFool steps fooled 0.02-0.07 at L2 zeta 0.3: no better than noise)
    assert r["uap"]["fooling_rate"] > 0.3
    assert r["uap"]["fooling_rate"] > 2.5 * max(ctrl, 0.02)
    assert float(perturbation_norms(res.v, norm)[0]) <= res.eps


def _art_uap(mnist_clf, xb, eps, targeted, seed):
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation as ArtUAP
    from art.estimators.classification import PyTorchClassifier
    est = PyTorchClassifier(mnist_clf.module, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    random.seed(seed)                       # ART shuffles the images with Python's global `random`
    params = {"eps": 0.5 * eps, "norm": 2, "targeted": targeted}
    if targeted:
        peer = TargetedUniversalPerturbation(est, attacker="fgsm", attacker_params=params, eps=eps, norm=2, max_iter=1)
        peer.generate(xb.numpy(), y=np.eye(10, dtype=np.float32)[np.full(len(xb), 3)])
        return torch.from_numpy(np.asarray(peer.noise, dtype=np.float32))
    peer = ArtUAP(est, attacker="fgsm", attacker_params=params, eps=eps, norm=2, max_iter=1, verbose=False)
    peer.generate(xb.numpy())
    return torch.from_numpy(np.asarray(peer.noise, dtype=np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("targeted", [False, True])
def test_vs_art(mnist_clf, sets, targeted):
    """Ours (batched fgsm) vs ART (Universal/TargetedUniversalPerturbation, attacker fgsm): same model, same 300
    build images, same zeta, one pass each, mean over two shuffles each (seeds 0, 1; chosen before measuring).

    One pass over 100 images is a poor yardstick: the result of either library swings 0.24-0.65 with the
    image order alone (6 shuffles, untargeted: ART mean 0.49, ours 0.46; targeted: ART 0.55, ours 0.55), so
    300 images are used here, where the shuffle moves the rate by a few points only.
    """
    xb, xe, _ = sets
    zeta, norm = 0.3, "l2"
    eps = zeta * mean_norm(xe, norm)
    key, tgt = ("targeted_success", 3) if targeted else ("fooling_rate", None)
    r_ours, r_peer = [], []
    for seed in (0, 1):
        # ART: 300 sequential per-image updates per pass; ours: 30 mini-batches of 10 (one gradient each)
        ours = UniversalPerturbation(method="fgsm", norm=norm, zeta=zeta, max_passes=1, batch_size=10,
                                     seed=seed).generate(mnist_clf, xb, target=tgt, reference=xe)
        r_ours.append(fooling_rates(mnist_clf, xe, ours.v, norm=norm, target=tgt)["uap"][key])
        r_peer.append(fooling_rates(mnist_clf, xe, _art_uap(mnist_clf, xb, eps, targeted, seed), norm=norm,
                                    target=tgt)["uap"][key])
    # measured: untargeted ours 0.69/0.71 vs ART 0.67/0.70; targeted ours 0.60/0.54 vs ART 0.58/0.52
    assert np.mean(r_ours) >= np.mean(r_peer) - 0.05, (r_ours, r_peer)


def test_hirano2020_preset_and_step_rule(mnist_clf, sets):
    xb, xe, _ = sets
    u = UniversalPerturbation.preset("hirano2020", norm="l2", zeta=0.3)
    assert (u.method, u.step_rule, u.stop_rate, u.max_passes) == ("fgsm", "art", 1.0, 10)
    with pytest.raises(TrustVisionError, match="preset"):
        UniversalPerturbation.preset("nope", eps=1.0)
    with pytest.raises(TrustVisionError, match="step_rule"):
        UniversalPerturbation(method="sgd", eps=1.0, step_rule="art")
    # the ART rule is a fixed L-inf sign step even for an L2 UAP: one image, v = clip(x + s sign(g)) - x if it flips
    from trustvision.attacks.base import input_gradient
    x1 = xe[:1]
    lab = mnist_clf(x1).argmax(1)
    g, _ = input_gradient(mnist_clf, x1, lambda z: torch.nn.functional.cross_entropy(z, lab, reduction="none"))
    want = (x1 + 0.3 * g.sign()).clamp(0, 1) - x1
    assert mnist_clf((x1 + want).clamp(0, 1)).argmax(1) != lab                   # the step flips this digit
    res = UniversalPerturbation(method="fgsm", norm="l2", eps=100.0, step_rule="art", step=0.3, max_passes=1,
                                batch_size=1, stop_rate=1.0).generate(mnist_clf, x1)
    torch.testing.assert_close(res.v, want, atol=1e-6, rtol=0)
    batched = UniversalPerturbation(method="fgsm", norm="l2", eps=100.0, step=0.3, max_passes=1,
                                    batch_size=1, stop_rate=1.0).generate(mnist_clf, x1)
    assert not torch.allclose(batched.v, want, atol=1e-3)                         # the default L2 step differs


def test_python_shuffle_replays_art_order():
    import random as pyrandom
    u = UniversalPerturbation(eps=1.0, shuffle="python", seed=5)
    pyrandom.seed(5)
    first, second = pyrandom.sample(range(30), 30), pyrandom.sample(range(30), 30)
    assert u._order(30, 0).tolist() == first and u._order(30, 1).tolist() == second


@pytest.mark.slow
def test_art_step_rule_matches_art(mnist_clf, sets):
    """Ours with step_rule="art", batch_size=1 and ART's shuffles vs ART's UniversalPerturbation (attacker fgsm with
    only eps set, delta 1e-6): same model, same 200 build images, L2 budget zeta 0.3, step 0.1, two passes, seeds 0, 1.
    ART predicts on unclipped x + v while building (ours clips), so the two are close, not identical.
    Measured fooling on 300 evaluation images: ours 0.123/0.193, ART 0.117/0.197; margin 0.05 on the mean."""
    from art.attacks.evasion import UniversalPerturbation as ArtUAP
    from art.estimators.classification import PyTorchClassifier
    xb, xe, _ = sets
    xb = xb[:200]
    eps, step = 0.3 * mean_norm(xe, "l2"), 0.1
    est = PyTorchClassifier(mnist_clf.module, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    ours, peer = [], []
    for seed in (0, 1):
        u = UniversalPerturbation(method="fgsm", norm="l2", eps=eps, step_rule="art", step=step, stop_rate=1.0,
                                  max_passes=2, batch_size=1, shuffle="python", seed=seed).generate(mnist_clf, xb)
        ours.append(fooling_rates(mnist_clf, xe, u.v, norm="l2")["uap"]["fooling_rate"])
        random.seed(seed)
        art = ArtUAP(est, attacker="fgsm", attacker_params={"eps": step}, delta=1e-6, eps=eps, norm=2, max_iter=2,
                     verbose=False)
        art.generate(xb.numpy())
        v = torch.from_numpy(np.asarray(art.noise, dtype=np.float32))
        peer.append(fooling_rates(mnist_clf, xe, v, norm="l2")["uap"]["fooling_rate"])
    assert abs(np.mean(ours) - np.mean(peer)) <= 0.05, (ours, peer)
    assert min(ours) > 0.05



@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_replay_equals_sequential_loop(norm, eps):
    """The batched replay (L∞: the B clamp maps folded in log2 B vectorised steps) gives the papers' B sequential
    updates, including odd B, rejected images and a starting v, to float rounding."""
    from trustvision.attacks.universal_steps import Split, replay, replay_sequential
    from trustvision.scale.dist import SINGLE
    g = torch.Generator().manual_seed(0)
    for b in (1, 2, 7, 33):
        x = torch.rand(b, 1, 8, 8, generator=g)
        r = (torch.rand(b, 1, 8, 8, generator=g) - 0.5) * 0.3
        ok = torch.rand(b, generator=g) < 0.6
        v = (torch.rand(1, 1, 8, 8, generator=g) - 0.5) * 0.2
        want = replay_sequential(x, v, r, ok, eps, norm)
        got = replay(Split(SINGLE, b), x, v, r, ok, eps, norm)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        assert float(perturbation_norms(got, norm)[0]) <= eps
        if b > 1:
            assert not torch.allclose(want, v)            # the updates moved v (the test can fail)


def test_first_curve_point_is_the_clean_rate(mnist_clf, sets):
    """curve[0] (v = 0) comes from the clean predictions: 0 untargeted, the clean share of the target class."""
    xb, _, _ = sets
    res = UniversalPerturbation(method="sgd", norm="linf", eps=0.1, max_passes=1, batch_size=64).generate(
        mnist_clf, xb[:128], target=3)
    share = float((mnist_clf(xb[:128]).argmax(1) == 3).float().mean())
    assert res.curve[0] == pytest.approx(share) and 0 < share < 0.5
