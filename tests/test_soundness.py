"""Soundness checks: each flag fires on a model built to trigger it and stays quiet on an honest model."""
from __future__ import annotations

import torch
from torch import nn

from trustvision.evaluation import soundness
from trustvision.evaluation.sections.clean import output_flags
from trustvision.models.classifier import Classifier


class SaturatedSoftmax(nn.Module):
    """Gradient masking by construction: softmax of hugely scaled logits (exact 0/1 in fp32)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x) * 1e4, dim=1)


class Binarize(nn.Module):
    """A 'defence' that thresholds pixels: zero input gradient almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x > 0.5).float())


class Noisy(nn.Module):
    """A randomised defence: Gaussian noise on the input."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.2 * torch.randn_like(x))


def _wrap(module, name):
    return Classifier(module, num_classes=10, channels=1, name=name)


def test_honest_model_raises_no_output_or_gradient_flags(mnist_clf, mnist_batch):
    x, y = mnist_batch
    assert output_flags(mnist_clf, x, mnist_clf.predict(x)) == []
    flags, stats = soundness.gradient_flags(mnist_clf, x, y)
    assert flags == [] and stats["share_zero"] == 0.0 and stats["median_norm"] > 0


def test_saturated_softmax_fires_probability_and_zero_gradient_flags(mnist_setup, mnist_batch):
    clf = _wrap(SaturatedSoftmax(mnist_setup[0]), "saturated")
    x, y = mnist_batch
    codes = {f.code for f in output_flags(clf, x, clf.predict(x))}
    assert "probabilities-not-logits" in codes
    flags, stats = soundness.gradient_flags(clf, x, y)
    assert "zero-gradients" in {f.code for f in flags} and stats["share_zero"] > 0.9


def test_binarized_input_fires_zero_gradient_flag(mnist_setup, mnist_batch):
    clf = _wrap(Binarize(mnist_setup[0]), "binarized")
    flags, _ = soundness.gradient_flags(clf, *mnist_batch)
    assert [f.code for f in flags] == ["zero-gradients"]


def test_randomised_model_fires_non_determinism_flag(mnist_setup, mnist_batch):
    clf = _wrap(Noisy(mnist_setup[0]), "noisy")
    x, _ = mnist_batch
    assert "non-deterministic" in {f.code for f in output_flags(clf, x, clf.predict(x))}


def test_nan_gradients_flagged():
    class NaNGrad(nn.Module):
        def forward(self, x):
            return torch.sqrt(x - x).flatten(1)[:, :10] + torch.arange(10.0)   # d sqrt(0) = inf
    clf = Classifier(NaNGrad(), num_classes=10, channels=1)
    flags, stats = soundness.gradient_flags(clf, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert "nan-gradients" in {f.code for f in flags} and stats["share_nonfinite"] == 1.0


def test_monotonicity_flag_only_on_rising_curve():
    ok = {"pgd": ([0, .1, .2], [.9, .5, .1])}
    bad = {"pgd": ([0, .1, .2], [.9, .3, .6])}
    assert soundness.monotonic_flags(ok, "linf", 200) == []
    f = soundness.monotonic_flags(bad, "linf", 200)
    assert len(f) == 1 and f[0].code == "non-monotonic" and f[0].evidence["eps"] == [.1, .2]


def test_fgsm_stronger_than_pgd_is_flagged():
    curves = {"fgsm": ([0, .1], [.9, .3]), "pgd": ([0, .1], [.9, .6])}
    assert [f.code for f in soundness.fgsm_vs_pgd_flags(curves, 200)] == ["weaker-than-fgsm"]
    curves["pgd"] = ([0, .1], [.9, .2])
    assert soundness.fgsm_vs_pgd_flags(curves, 200) == []


def test_large_budget_and_convergence_flags():
    assert soundness.large_budget_flag(0.05, 0.5, "linf", 0.1) == []
    assert soundness.large_budget_flag(0.6, 0.5, "linf", 0.1)[0].severity == "error"
    assert soundness.convergence_flag(0.50, 0.49, 0.1, "linf", 200, {"steps": 50, "restarts": 3}) == []
    assert soundness.convergence_flag(0.50, 0.30, 0.1, "linf", 200, {"steps": 50, "restarts": 3})[0].code == "not-converged"


def test_convergence_check_attacks_only_what_the_base_attack_left(mnist_clf, mnist_test, monkeypatch):
    """The stronger PGD runs on the checked images the base PGD did not fool, so "strong" counts the images
    neither attack fooled: never above "base", and the drop is exactly the images the base attack missed."""
    from trustvision.evaluation.sections import robustness as rob
    data = mnist_test.sample(48, 0)
    with torch.inference_mode():
        logits = mnist_clf(data.x)
    seen = []
    real = rob.run_batched

    def spy(attack, clf, x, y, *a, **k):
        if getattr(attack, "restarts", 1) > 1:                  # the convergence check's strong PGD
            seen.append(len(x))
        return real(attack, clf, x, y, *a, **k)

    monkeypatch.setattr(rob, "run_batched", spy)
    cfg = rob.RobustnessConfig(attacks=["pgd"], eps_linf=[0.0, 0.05, 0.1], eps_l2=[], strong_factor=2,
                               strong_restarts=2)
    sec = rob.robustness_section(mnist_clf, data, logits, cfg)
    conv = sec.metrics["checks"]["convergence"]
    correct = int((logits.argmax(1) == data.y).sum())
    assert len(seen) == 1 and seen[0] == round(conv["base"] * correct) < correct
    assert conv["strong"] <= conv["base"]
