"""APGD (CE, DLR, targeted DLR) and the AutoAttack ensemble: cross-checks against torchattacks and against
formulas written here, exact budgets, seeds, few-class models, the soundness checks and the robustness section.

Sizes: the peer cross-checks use the first 48 correctly classified MNIST test digits of the cached demo CNN,
20 APGD iterations (torchattacks' APGD/APGDT defaults are 10; at 20 both converge to the same points on this
model), budgets L∞ 0.15 / L2 1.5 on both sides.  Ours must be at least as strong: robust accuracy <=
torchattacks' + 0.02 (or one image, whichever is larger: on 48 images 0.02 is less than one image, and a
single image may flip with the thread count).
"""
from __future__ import annotations

import math

import pytest
import torch
import torchattacks
from torch import nn

from helpers import error
from trustvision.attacks import APGD, PRESETS, AutoAttack, make_attack, perturbation_norms
from trustvision.attacks.apgd import checkpoints, dlr_loss
from trustvision.attacks.runner import BudgetSweep
from trustvision.defenses.transforms import BitDepth, DefendedClassifier, defend
from trustvision.evaluation import soundness
from trustvision.evaluation.sections.robustness import RobustnessConfig, robustness_section
from trustvision.evaluation.sections.robustness_units import _decode, _encode
from trustvision.models.classifier import Classifier

PEER_NORM = {"linf": "Linf", "l2": "L2"}
EPS = {"linf": 0.15, "l2": 1.5}


def margin(n: int) -> float:
    """How much weaker than the peer ours may look: 0.02 or one image of ``n``, whichever is larger."""
    return max(0.02, 1.01 / n)


@pytest.fixture(scope="module")
def digits(mnist_clf, mnist_test):
    """The first 48 correctly classified test digits: (x (48, 1, 28, 28), y (48,))."""
    pred = mnist_clf.predict(mnist_test.x).argmax(1).cpu()
    idx = (pred == mnist_test.y).nonzero()[:48, 0]
    return mnist_test.x[idx].clone(), mnist_test.y[idx].clone()


def _robust(clf, x_adv, y) -> float:
    with torch.no_grad():
        return float((clf(x_adv).argmax(1) == y).float().mean())


# --- formulas, written independently ---
def test_dlr_losses_match_the_paper_and_torchattacks():
    g = torch.Generator().manual_seed(0)
    z, y, t = torch.randn(20, 10, generator=g), torch.randint(0, 10, (20,), generator=g), torch.randint(0, 10, (20,), generator=g)
    for i in range(20):                     # the paper's eq. 5 / 6, row by row
        s = sorted(z[i].tolist(), reverse=True)
        other = max(v for j, v in enumerate(z[i].tolist()) if j != int(y[i]))
        assert float(dlr_loss(z, y)[i]) == pytest.approx(-(float(z[i, y[i]]) - other) / (s[0] - s[2]), rel=1e-5)
        want_t = -(float(z[i, y[i]]) - float(z[i, t[i]])) / (s[0] - (s[2] + s[3]) / 2)
        assert float(dlr_loss(z, y, t)[i]) == pytest.approx(want_t, rel=1e-5, abs=1e-6)
    peer = torchattacks.APGD(nn.Identity())
    assert torch.allclose(dlr_loss(z, y), peer.dlr_loss(z, y), atol=1e-5)
    peer_t = torchattacks.APGDT(nn.Identity())
    assert torch.allclose(dlr_loss(z, y, t), peer_t.dlr_loss_targeted(z, y, t), atol=1e-5)


def test_checkpoints_are_the_papers():
    p = [0.0, 0.22]                         # p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N)
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = [round(v * 100) for v in p[1:]]
    assert [i + 1 for i, _ in checkpoints(100)] == marks == [22, 41, 57, 70, 80, 87, 93, 99]
    assert [k for _, k in checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


# --- cross-checks against torchattacks ---
@pytest.mark.slow
@pytest.mark.parametrize("kind,norm", [("ce", "linf"), ("dlr", "l2"), ("t", "linf"), ("t", "l2")])
def test_apgd_at_least_as_strong_as_torchattacks(mnist_clf, digits, kind, norm):
    x, y = digits
    eps, module = EPS[norm], mnist_clf.as_module()
    if kind == "t":
        ours = APGD(eps=eps, norm=norm, loss="dlr", targets=9, steps=20)(mnist_clf, x, y)
        peer = torchattacks.APGDT(module, norm=PEER_NORM[norm], eps=eps, steps=20, n_classes=10, seed=0)
    else:
        ours = APGD(eps=eps, norm=norm, loss=kind, steps=20)(mnist_clf, x, y)
        peer = torchattacks.APGD(module, norm=PEER_NORM[norm], eps=eps, steps=20, loss=kind, seed=0)
    mine, theirs = 1 - float(ours.success.float().mean()), _robust(mnist_clf, peer(x, y), y)
    assert mine <= theirs + margin(len(y)), (mine, theirs)
    assert 0.0 < mine < 0.9                 # the budget is neither trivial nor hopeless on this model


def _peer_autoattack(module, norm, eps, fab_steps, queries, targets):
    peer = torchattacks.AutoAttack(module, norm=PEER_NORM[norm], eps=eps, n_classes=10, seed=0)
    apgd, apgdt, fab, square = peer._autoattack.attacks
    apgd.steps = apgdt.steps = 20
    fab.steps, square.n_queries = fab_steps, queries
    apgdt.n_target_classes = fab.n_target_classes = targets
    return peer


@pytest.mark.slow
def test_ensemble_at_or_below_torchattacks_and_every_member(mnist_clf, digits):
    x, y = digits
    x, y = x[:32], y[:32]                   # 3 targets for APGD-T and FAB-T on both sides: a quick ensemble
    opts = {"eps": EPS["linf"], "steps": 20, "fab_steps": 10, "n_queries": 300, "targets": 3}
    res = AutoAttack(**opts)(mnist_clf, x, y)
    ens = 1 - float(res.success.float().mean())
    theirs = _robust(mnist_clf, _peer_autoattack(mnist_clf.as_module(), "linf", opts["eps"], 10, 300, 3)(x, y), y)
    assert ens <= theirs + margin(len(y)), (ens, theirs)
    members = AutoAttack(**opts).members()
    alone = {label: 1 - float(a(mnist_clf, x, y).success.float().mean()) for label, a in members}
    assert ens <= alone["apgd-ce"]          # APGD-CE runs first on every image: the ensemble can only add
    assert all(ens <= acc + margin(len(y)) for acc in alone.values()), (ens, alone)
    c = res.extras["contributions"]
    assert list(c) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(c.values()) == int(res.success.sum()) and c["apgd-ce"] > 0
    bb = res.extras["broken_by"]
    assert int((bb == -1).sum()) == int((~res.success).sum())
    assert bool((res.queries > 0).all()) and bool((res.gradients >= 20).all())


# --- contract: budgets, seeds, counts, few classes, bad input ---
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budgets_exact_and_seeds_reproducible(mnist_clf, mnist_batch, norm):
    x, y = mnist_batch[0][:12], mnist_batch[1][:12]
    eps = EPS[norm] / 3                      # not an fp32 number: the bound must hold against the Python float
    for attack in (APGD(eps=eps, norm=norm, steps=5, restarts=2, seed=3),
                   APGD(eps=eps, norm=norm, steps=4, loss="dlr", targets=2, seed=3),
                   AutoAttack(eps=eps, norm=norm, steps=3, targets=2, fab_steps=3, n_queries=20, seed=3)):
        a, b = attack(mnist_clf, x, y), attack(mnist_clf, x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
        assert float(perturbation_norms(a.x_adv - x, norm).max()) <= eps
        assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1
    r = APGD(eps=eps, norm=norm, steps=5)(mnist_clf, x, y)
    assert r.queries.tolist() == [5 + 1 + 2] * 12 and r.gradients.tolist() == [5] * 12
    assert r.extras["loss_curve"].shape == (6,) and bool((r.extras["loss_curve"].diff() >= 0).all())


def test_targeted_apgd_reaches_the_target(mnist_clf, mnist_batch):
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    target = (y + 1) % 10
    r = APGD(eps=0.3, steps=20, loss="dlr")(mnist_clf, x, y, target=target)
    with torch.no_grad():
        pred = mnist_clf(r.x_adv).argmax(1)
    assert torch.equal(r.success, pred == target) and float(r.success.float().mean()) > 0.5


def test_few_classes_adapt_with_a_note():
    torch.manual_seed(0)
    two = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), num_classes=2, channels=1)
    x = torch.rand(6, 1, 4, 4)
    y = two.predict(x).argmax(1).cpu()
    r = APGD(eps=1.0, steps=10, loss="dlr", targets=9)(two, x, y)
    assert r.extras["targets"] == 1 and "used 1" in r.extras["note"] and "margin" in r.extras["note"]
    assert bool(r.success.all())            # a linear 2-class model falls to a budget of 1
    ens = AutoAttack(eps=1.0, steps=10, fab_steps=5, n_queries=20)(two, x, y)
    assert bool(ens.success.all()) and ens.extras["contributions"]["apgd-ce"] == 6


def test_presets_and_bad_input():
    names = {"apgd-ce", "apgd-dlr", "apgd-t", "apgd-ce-l2", "apgd-dlr-l2", "apgd-t-l2", "autoattack",
             "autoattack-rand"}
    assert names <= set(PRESETS.names())
    t, aa = PRESETS.get("apgd-t-l2").build(), PRESETS.get("autoattack").build()
    assert (t.norm, t.loss, t.targets, t.steps, t.restarts, t.rho, t.momentum) == ("l2", "dlr", 9, 100, 1, 0.75, 0.75)
    assert (aa.version, aa.steps, aa.targets, aa.fab_steps, aa.n_queries) == ("standard", 100, 9, 100, 5000)
    assert [label for label, _ in PRESETS.get("autoattack-rand").build().members()] == ["apgd-ce", "apgd-dlr"]
    assert all(a.eot_iter == 20 for _, a in aa.for_random_model().members())
    assert "unknown version 'plus'" in error(lambda: make_attack("autoattack", version="plus"))
    assert "loss" in error(lambda: make_attack("apgd", loss="margin"))
    assert "rho" in error(lambda: make_attack("apgd", rho=1.5))
    assert "steps" in error(lambda: make_attack("apgd", steps=0))
    assert "norm" in error(lambda: make_attack("autoattack", norm="l0"))


# --- soundness checks ---
def test_soundness_checks_fire_only_when_they_should():
    assert soundness.budget_flags(make_attack("apgd"), "apgd-ce") == []
    assert soundness.budget_flags(make_attack("autoattack", version="rand", n_queries=10), "autoattack-rand") == []
    f = soundness.budget_flags(make_attack("autoattack", steps=10, n_queries=500), "autoattack")
    assert [x.code for x in f] == ["attack-budget-too-small"] and "steps=10 (paper: 100)" in f[0].message
    assert "n_queries=500 (paper: 5000)" in f[0].message
    assert soundness.apgd_convergence_flags({0.1: (2, 10), 0.2: (1, 40)}, "apgd-ce", "linf") == []
    f = soundness.apgd_convergence_flags({0.1: (1, 10), 0.2: (8, 40)}, "apgd-ce", "linf")
    assert [x.code for x in f] == ["apgd-not-converged"] and f[0].evidence["eps"] == 0.2
    assert soundness.blackbox_breaks_flags({0.1: 1}, 90, "linf", "square", "apgd-ce", 100) == []
    f = soundness.blackbox_breaks_flags({0.1: 1, 0.2: 9}, 90, "linf", "square", "apgd-ce + apgd-t", 100)
    assert [x.code for x in f] == ["black-box-breaks-robust"] and "0.2" in f[0].message


def test_apgd_flags_its_own_short_run(mnist_clf, digits):
    x, y = digits
    short = APGD(eps=0.15, steps=5)(mnist_clf, x[:32], y[:32])
    rising = int(short.extras["rising"].sum())
    assert rising >= 3                       # 5 iterations leave the loss climbing on several robust digits
    assert bool((short.extras["rising"] <= ~short.success).all())


def test_resume_units_keep_queries_and_per_image_extras():
    run = BudgetSweep("autoattack@0.1", "linf", {0.0: torch.tensor([True, True, False]),
                                                 0.1: torch.tensor([True, False, False])}, queries=42, gradients=7,
                      extras={0.1: {"broken_by": torch.tensor([-1, 0]), "rising": torch.tensor([True, False])}})
    back = _decode(_encode(run, example=False), 3)
    assert back.queries == 42 and back.gradients == 7
    assert torch.equal(back.extras[0.1]["broken_by"], run.extras[0.1]["broken_by"])
    assert back.extras[0.1]["rising"].dtype == torch.bool


# --- the robustness section ---
QUICK = {"steps": 10, "targets": 3, "fab_steps": 5, "n_queries": 200}


@pytest.mark.slow
def test_section_on_a_gradient_masked_model_reports_contributions_and_flags(mnist_clf, mnist_test):
    masked = DefendedClassifier(mnist_clf, BitDepth(3))      # round(7x)/7: zero input gradient almost everywhere
    data = mnist_test.subset(range(40))
    cfg = RobustnessConfig(attacks=["autoattack"], eps_linf=[0.3], eps_l2=[], checks=False, adaptive="off",
                           attack_options={"autoattack": QUICK})
    sec = robustness_section(masked, data, masked.predict(data.x).cpu(), cfg)
    ens = sec.metrics["ensembles"]["autoattack"]
    c = ens["contributions"]["0.3"]
    assert c["square"] >= 0.5 * sum(c.values()), c       # white-box members fail by construction
    codes = {f.code for f in sec.flags}
    assert {"black-box-breaks-robust", "attack-budget-too-small"} <= codes, codes
    assert sec.metrics["queries"]["autoattack"] > 0 and ens["queries_per_image"] > 0
    table = next(t for t in sec.tables if "each member broke first" in t.title)
    assert [r[0] for r in table.rows] == ["apgd-ce", "apgd-t", "fab-t", "square", "still robust"]
    worst = sec.metrics["worst_case_robust_accuracy"]["linf"]["0.3"]
    assert worst == pytest.approx(sec.metrics["robust_accuracy"]["linf"]["autoattack"]["0.3"])


@pytest.mark.slow
def test_random_model_gets_the_rand_version(mnist_clf, mnist_test):
    rnd = defend(mnist_clf, "resize-pad:0.8")
    data = mnist_test.subset(range(24))
    opts = {**QUICK, "eot_iter": 4}
    cfg = RobustnessConfig(attacks=["autoattack"], eps_linf=[0.2], eps_l2=[], checks=False,
                           attack_options={"autoattack": opts})
    sec = robustness_section(rnd, data, rnd.predict(data.x).cpu(), cfg)
    ad = sec.metrics["adaptive"]
    assert ad["probe"]["random"] and ad["versions"] == {"autoattack": "rand"}
    naive, adaptive = ad["naive_robust_accuracy"]["autoattack"], ad["adaptive_robust_accuracy"]["autoattack"]
    assert math.isfinite(adaptive["0.2"]) and adaptive["0.2"] < naive["0.0"]
