"""Gradient attacks: agreement with torchattacks, budgets, targeting, seeds, and the model left untouched."""
from __future__ import annotations

import copy

import pytest
import torch
import torchattacks
from torch import nn

from trustvision.attacks import ATTACKS, CW, FGSM, PGD, AttackResult, DeepFool, make_attack, perturbation_norms
from trustvision.attacks.gradient import CHECK_EVERY
from trustvision.errors import TrustVisionError
from trustvision.models.classifier import Classifier

N = 32


class _PixelModel(nn.Module):
    """torchattacks wants an nn.Module taking [0, 1] pixels; a Classifier over a *copy* of the weights
    (torchattacks' CW/DeepFool call .backward() and would leave .grad on the user's parameters)."""

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.clf = Classifier(copy.deepcopy(clf.module), num_classes=clf.num_classes, channels=clf.channels)
        self.net = self.clf.module

    def forward(self, x):
        return self.clf(x)


@pytest.fixture(scope="module")
def batch(mnist_batch):
    x, y = mnist_batch
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def peer(mnist_clf):
    return _PixelModel(mnist_clf)


def _fooled(clf, x_adv, y):
    with torch.no_grad():
        return clf(x_adv).argmax(1) != y


# (a) + (b): identical to torchattacks where the algorithms are identical
def test_fgsm_matches_torchattacks(mnist_clf, peer, batch):
    x, y = batch
    ours = FGSM(eps=0.1)(mnist_clf, x, y).x_adv
    theirs = torchattacks.FGSM(peer, eps=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_pgd_linf_matches_torchattacks(mnist_clf, peer, batch):
    x, y = batch
    ours = PGD(eps=0.1, steps=10, alpha=0.01, random_start=False, early_stop=False)(mnist_clf, x, y).x_adv
    theirs = torchattacks.PGD(peer, eps=0.1, alpha=0.01, steps=10, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_pgd_l2_matches_torchattacks(mnist_clf, peer, batch):
    """Same algorithm, but 1e-7 differences (sum vs mean loss, budget correction) can flip a ReLU on
    an image or two over 10 steps, after which trajectories drift apart slightly."""
    x, y = batch
    ours = PGD(eps=1.0, norm="l2", steps=10, alpha=0.2, random_start=False, early_stop=False)(mnist_clf, x, y).x_adv
    theirs = torchattacks.PGDL2(peer, eps=1.0, alpha=0.2, steps=10, random_start=False)(x, y)
    diff = (ours - theirs).abs().flatten(1).amax(1)
    assert float((diff < 1e-5).float().mean()) >= 0.9
    assert float(diff.max()) < 0.02


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.01), ("l2", 1.0, 0.2)])
def test_pgd_early_stop_keeps_the_trajectory_and_never_weakens(mnist_clf, peer, batch, norm, eps, alpha):
    """Early stop (the default) against the final-iterate rule and torchattacks, same start: an image it never
    froze ends where the full run ends; every image the full run fools is fooled; budgets hold; and the
    frozen images spent fewer gradients."""
    x, y = batch
    kw = dict(eps=eps, norm=norm, steps=20, alpha=alpha, random_start=False)
    full, early = PGD(early_stop=False, **kw)(mnist_clf, x, y), PGD(**kw)(mnist_clf, x, y)
    frozen = early.gradients < 20
    assert int(frozen.sum()) >= 4 and bool((early.success[frozen]).all())
    assert bool((early.queries == early.gradients + 1).all())
    same = (early.x_adv[~frozen] - full.x_adv[~frozen]).abs().flatten(1).amax(1) < 1e-5
    assert float(same.float().mean()) >= 0.9
    assert bool((early.success | ~full.success).all())
    assert float((early.norms <= eps).float().mean()) == 1.0
    theirs = (torchattacks.PGD if norm == "linf" else torchattacks.PGDL2)(peer, eps=eps, alpha=alpha, steps=20,
                                                                           random_start=False)(x, y)
    assert int(early.success.sum()) >= int(_fooled(mnist_clf, theirs, y).sum())


# (c): minimal attacks at least as good as torchattacks on the same images
def _compare(clf, x, y, ours: AttackResult, theirs_adv):
    theirs_ok = _fooled(clf, theirs_adv, y)
    theirs_norm = perturbation_norms(theirs_adv - x, "l2")
    ours_rate, theirs_rate = float(ours.success.float().mean()), float(theirs_ok.float().mean())
    assert ours_rate >= theirs_rate - 0.05, (ours_rate, theirs_rate)
    both = ours.success & theirs_ok
    assert int(both.sum()) >= 2
    ratio = float(ours.norms[both].mean() / theirs_norm[both].mean())
    assert ratio <= 1.5, ratio      # on images both fooled, our mean L2 is at most 1.5x theirs


@pytest.mark.slow
def test_cw_same_algorithm_as_torchattacks(mnist_clf, peer, batch):
    """At a fixed c (no binary search), same lr and steps, CW is the same algorithm in both libraries."""
    x, y = batch
    ours = CW(steps=100, binary_search_steps=1, initial_const=1.0, lr=0.01, abort_early=False)(mnist_clf, x, y)
    theirs = torchattacks.CW(peer, c=1, steps=100, lr=0.01)(x, y)
    theirs_ok = _fooled(mnist_clf, theirs, y)
    assert abs(float(ours.success.float().mean()) - float(theirs_ok.float().mean())) <= 0.1
    both = ours.success & theirs_ok
    if bool(both.any()):
        ratio = float(ours.norms[both].mean() / perturbation_norms(theirs - x, "l2")[both].mean())
        assert 0.9 <= ratio <= 1.1, ratio


@pytest.mark.slow
def test_cw_with_binary_search_beats_torchattacks(mnist_clf, peer, batch):
    """torchattacks.CW has a fixed c; ours searches c per image (default lr) and must fool at least as many."""
    x, y = batch
    ours = CW(steps=100, binary_search_steps=5)(mnist_clf, x, y)
    _compare(mnist_clf, x, y, ours, torchattacks.CW(peer, c=1, steps=100, lr=0.01)(x, y))
    assert float(ours.success.float().mean()) >= 0.9


@pytest.mark.slow
def test_deepfool_comparable_to_torchattacks(mnist_clf, peer, batch):
    x, y = batch[0][:16], batch[1][:16]      # torchattacks' DeepFool loops over images: keep it small
    ours = DeepFool(max_iter=50, overshoot=0.02)(mnist_clf, x, y)
    _compare(mnist_clf, x, y, ours, torchattacks.DeepFool(peer, steps=50, overshoot=0.02)(x, y))
    assert bool(ours.success.all())


# (d): one test over every attack
CASES = {
    "fgsm": FGSM(eps=0.2),
    "fgsm-l2": FGSM(eps=2.0, norm="l2"),
    "pgd-linf": PGD(eps=0.15, steps=10, seed=0),
    "pgd-l2": PGD(eps=2.0, norm="l2", steps=10, seed=0),
    "pgd-margin-restarts": PGD(eps=0.1, steps=5, restarts=2, loss="margin", seed=0),
    "cw": CW(steps=30, binary_search_steps=4, lr=0.1),
    "deepfool": DeepFool(),
    "deepfool-linf": DeepFool(norm="linf"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attack_contract(name, mnist_clf, batch):
    attack = CASES[name]
    x, y = batch
    res = attack(mnist_clf, x, y)
    n = len(x)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == torch.float32
    assert res.success.shape == (n,) and res.success.dtype == torch.bool
    assert res.norms.shape == (n,) and res.queries.dtype == torch.int64 and res.gradients.dtype == torch.int64
    assert bool((res.queries >= 1).all()) and bool((res.gradients >= 1).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert res.extras["logits"].shape == (n, mnist_clf.num_classes)
    # success and norms describe x_adv exactly
    assert torch.equal(res.success, _fooled(mnist_clf, res.x_adv, y))
    torch.testing.assert_close(res.norms, perturbation_norms(res.x_adv - x, attack.norm))
    clean_acc = 1.0                                    # mnist_batch holds correctly classified images
    assert float((~res.success).float().mean()) < clean_acc
    if attack.minimal:
        assert torch.equal(res.x_adv[~res.success], x[~res.success])
    else:
        assert float(res.norms.max()) <= attack.eps + 1e-5
        assert float(perturbation_norms(res.x_adv - x, attack.norm).max()) <= attack.eps   # exact in fp32


def test_fixed_budgets_respected_exactly_and_eps_zero(mnist_clf, batch):
    x, y = batch
    for eps in (1 / 255, 0.0123, 0.3):
        res = PGD(eps=eps, steps=3, seed=1)(mnist_clf, x, y)
        assert float(perturbation_norms(res.x_adv - x, "linf").max()) <= eps
    res = PGD(eps=0.7, norm="l2", steps=3, seed=1)(mnist_clf, x, y)
    assert float(perturbation_norms(res.x_adv - x, "l2").max()) <= 0.7
    zero = PGD(eps=0.0, steps=2)(mnist_clf, x, y)
    assert torch.equal(zero.x_adv, x) and not bool(zero.success.any())


def test_stronger_settings_do_not_hurt(mnist_clf, batch):
    x, y = batch
    one = PGD(eps=0.1, steps=10, seed=0)(mnist_clf, x, y)
    more = PGD(eps=0.1, steps=10, restarts=3, seed=0)(mnist_clf, x, y)
    assert bool(more.success[one.success].all())       # restart 1 is identical, later ones only add
    assert int(more.queries.max()) == 3 * 11
    assert int(more.queries.min()) >= CHECK_EVERY + 2    # early stop: frozen at the first check at the soonest


# (e): targeted
def test_targeted_pgd_reaches_target(mnist_clf, batch):
    x, y = batch
    target = (y + 1) % 10
    res = PGD(eps=0.3, steps=40, alpha=0.01, seed=0)(mnist_clf, x, y, target=target)
    with torch.no_grad():
        pred = mnist_clf(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) >= 0.8
    cw = CW(steps=30, binary_search_steps=4, lr=0.1, initial_const=1.0)(mnist_clf, x[:8], y[:8], target=target[:8])
    assert float(cw.success.float().mean()) >= 0.5


# (f): seeds
def test_same_seed_same_result(mnist_clf, batch):
    x, y = batch
    for attack in (PGD(eps=0.1, seed=3), PGD(eps=1.0, norm="l2", restarts=2, seed=3)):
        a, b = attack(mnist_clf, x, y), attack(mnist_clf, x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    c = PGD(eps=0.1, seed=4)(mnist_clf, x, y)
    assert not torch.equal(c.x_adv, PGD(eps=0.1, seed=3)(mnist_clf, x, y).x_adv)
    d1, d2 = DeepFool()(mnist_clf, x, y), DeepFool()(mnist_clf, x, y)
    assert torch.equal(d1.x_adv, d2.x_adv)


# (g): the user's model is untouched
def test_model_not_modified_and_no_parameter_grads(mnist_clf, batch):
    x, y = batch
    params = list(mnist_clf.module.parameters())
    for p in params:
        p.grad = None
    before = mnist_clf.weights_hash()
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=2), CW(steps=3, binary_search_steps=2), DeepFool(max_iter=3)):
        attack(mnist_clf, x[:8], y[:8])
    assert mnist_clf.weights_hash() == before
    assert all(p.grad is None for p in params)


def test_inference_mode_inputs_are_accepted(mnist_clf, batch):
    x, y = batch
    with torch.inference_mode():
        xi = x[:4].clone()
    assert PGD(eps=0.1, steps=2)(mnist_clf, xi, y[:4]).x_adv.shape == xi.shape


# (h): bad input -> one-line TrustVisionError
@pytest.mark.parametrize("target", [10, -1, [0, 1]])
def test_bad_target_raises(mnist_clf, batch, target):
    x, y = batch
    with pytest.raises(TrustVisionError, match="target"):
        PGD(eps=0.1, steps=1)(mnist_clf, x[:4], y[:4], target=target)


def test_deepfool_rejects_target(mnist_clf, batch):
    x, y = batch
    with pytest.raises(TrustVisionError, match="untargeted"):
        DeepFool()(mnist_clf, x[:4], y[:4], target=torch.zeros(4, dtype=torch.long))


def test_registry_and_bad_arguments():
    assert {"fgsm", "pgd", "cw", "deepfool", "pixel", "threshold", "apgd", "fab", "fab-minimal", "square",
            "autoattack"} <= set(ATTACKS)
    for name in ATTACKS:                    # every registered attack declares what it is
        cls = ATTACKS.get(name)
        assert cls.family in {"gradient", "minimal", "black-box", "ensemble"} and isinstance(cls.uses_gradients, bool), name
    pgd = make_attack("pgd", eps=0.3, norm="l2", steps=5)
    assert isinstance(pgd, PGD) and pgd.with_eps(0.5).eps == 0.5 and pgd.step_size == 2.5 * 0.3 / 5
    assert make_attack("fgsm").eps == pytest.approx(8 / 255) and make_attack("fgsm", norm="l2").eps == 0.5
    assert pgd.describe()["attack"] == "pgd"
    with pytest.raises(TrustVisionError, match="unknown attack 'nope'"):
        make_attack("nope")
    with pytest.raises(TrustVisionError, match="no argument 'epsilon'"):
        make_attack("pgd", epsilon=0.3)
    for name, kwargs in [("pgd", {"norm": "l1"}), ("pgd", {"eps": -1}), ("pgd", {"steps": 0}), ("fgsm", {"loss": "x"}),
                         ("cw", {"norm": "linf"}), ("cw", {"lr": 0}), ("deepfool", {"candidates": 1})]:
        with pytest.raises(TrustVisionError, match=name):
            make_attack(name, **kwargs)


# (i): capabilities, norm strategies, presets and the runner
def test_capabilities_are_what_callers_read():
    from trustvision.attacks import PRESETS
    fam = {name: (cls.family, cls.uses_gradients, cls.single_step, cls.minimal) for name, cls in ATTACKS.items()}
    expected = {"fgsm": ("gradient", True, True, False), "pgd": ("gradient", True, False, False),
                "cw": ("minimal", True, False, True), "deepfool": ("minimal", True, False, True),
                "pixel": ("black-box", False, False, False), "threshold": ("black-box", False, False, False),
                "apgd": ("gradient", True, False, False), "square": ("black-box", False, False, False)}
    assert {k: fam[k] for k in expected} == expected
    assert PRESETS.names()[:9] == ["fgsm", "pgd", "fgsm-l2", "pgd-l2", "cw", "deepfool", "deepfool-linf", "pixel",
                                   "threshold"]
    norms = {name: PRESETS.get(name).norm for name in PRESETS.names()[:9]}
    assert norms == {"fgsm": "linf", "pgd": "linf", "fgsm-l2": "l2", "pgd-l2": "l2", "cw": "l2", "deepfool": "l2",
                     "deepfool-linf": "linf", "pixel": "l0", "threshold": "linf"}
    assert all(PRESETS.get(n).build().norm == PRESETS.get(n).norm for n in PRESETS)    # every preset, new ones too
    with pytest.raises(TrustVisionError, match="unknown attack preset 'nope'"):
        PRESETS.get("nope")


def test_norm_strategies():
    from trustvision.attacks.norms import BALL_NORMS, NORMS
    assert NORMS.names() == ["linf", "l2", "l0"] and BALL_NORMS == ("linf", "l2")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 6, 6, generator=g)
    for name in BALL_NORMS:
        n = NORMS.get(name)
        d = n.random_start(x, 0.3, g)
        assert float(n.distance(d).max()) <= 0.3 + 1e-6
        big = torch.randn(8, 1, 6, 6, generator=g)
        assert float(n.distance(n.project(big, 0.2)).max()) <= 0.2 + 1e-6
        assert torch.allclose(n.distance(n.normalize(big)), torch.ones(8))      # unit steepest-ascent step
        assert float(n.distance(n.fit(big, 0.25)).max()) <= 0.25
    with pytest.raises(NotImplementedError, match="l0"):
        NORMS.get("l0").project(x, 1.0)
    with pytest.raises(TrustVisionError, match="unknown norm 'l3'"):
        perturbation_norms(x, "l3")


def test_sweep_budgets_fixed_and_minimal(mnist_clf, batch):
    from trustvision.attacks import run_batched, sweep_budgets
    x, y = batch[0][:12].cpu(), batch[1][:12].cpu()
    attacked = torch.ones(12, dtype=torch.bool)
    attacked[3] = False                                   # e.g. a misclassified image: never robust
    sw = sweep_budgets(FGSM(), mnist_clf, x, y, [0.0, 0.05, 0.2], attacked=attacked, batch_size=5, n_examples=4)
    assert list(sw.robust) == [0.0, 0.05, 0.2] and torch.equal(sw.robust[0.0], attacked)
    for e in (0.05, 0.2):
        ref = ~run_batched(FGSM(eps=e), mnist_clf, x[attacked], y[attacked], 5).success
        assert torch.equal(sw.robust[e][attacked], ref) and not bool(sw.robust[e][3])
    assert sw.example_eps == 0.2 and torch.equal(sw.example.extras["index"], attacked.nonzero()[:4, 0])
    assert sw.gradients == 2 * 11                         # one gradient per attacked image per budget
    dm = sweep_budgets(DeepFool(), mnist_clf, x, y, [0.0, 0.5, 2.0], attacked=attacked, batch_size=5)
    full = run_batched(DeepFool(), mnist_clf, x[attacked], y[attacked], 5)
    for e in (0.5, 2.0):
        assert torch.equal(dm.robust[e][attacked], full.robust_at(e, torch.ones(11, dtype=torch.bool)))
    assert dm.example_eps is None and dm.norm == "l2"
