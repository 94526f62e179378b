"""Randomized smoothing (Cohen et al. 2019): statistics against statsmodels/scipy, PREDICT and CERTIFY on
models whose smoothed probabilities are known, seeding, and the soundness check that certified accuracy
never exceeds the PGD-L2 robust accuracy of the smoothed classifier (Salman et al. 2019 attack)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm
from statsmodels.stats.proportion import proportion_confint
from torch import nn
from typer.testing import CliRunner

from trustvision.data import bundled
from trustvision.models import zoo
from trustvision.attacks import PGD
from trustvision.auditor import AuditConfig, audit
from trustvision.cli.app import app
from trustvision.defenses import ABSTAIN, Smoothed, binomial_p_value, clopper_pearson_lower, max_certifiable_radius
from trustvision.errors import TrustVisionError
from trustvision.models.classifier import Classifier
from trustvision.training import noise_trained_mnist, train_classifier

SIGMA = 0.25


class Halfspace(nn.Module):
    """Two classes split by the hyperplane <x, u> = b (u unit norm): logits (s, -s), s = <x, u> - b.

    Under noise N(0, σ²I), P(class 0) = Φ(s(x)/σ); the exact certified radius is |s(x)|."""

    def __init__(self, u: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("u", u / u.norm())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.u.flatten() - self.b
        return torch.stack([s, -s], 1)


def halfspace(d: int = 16) -> tuple[Classifier, torch.Tensor]:
    u = torch.linspace(0.5, 1.5, d)
    return Classifier(Halfspace(u, 0.0), num_classes=2, channels=1), u / u.norm()


def at_distance(u: torch.Tensor, s: list[float]) -> torch.Tensor:
    """Images (len(s), 1, 4, 4) with <x, u> = s (pixels may leave [0, 1]: smoothing does not care)."""
    return (torch.tensor(s)[:, None] * u[None]).view(-1, 1, 4, 4)


def test_clopper_pearson_matches_statsmodels_and_scipy():
    for n in (1, 7, 100, 1000, 100_000):
        ks = np.unique(np.linspace(0, n, 23).round().astype(int))
        for alpha in (0.001, 0.05):
            ours = clopper_pearson_lower(ks, n, alpha)
            sm = np.array([proportion_confint(k, n, alpha=2 * alpha, method="beta")[0] for k in ks])
            sp = np.array([binomtest(k, n, alternative="greater").proportion_ci(1 - alpha, "exact").low for k in ks])
            np.testing.assert_allclose(ours, np.nan_to_num(sm), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(ours, sp, rtol=1e-10, atol=1e-12)
            assert ours[0] == 0.0 and np.all(np.diff(ours) > 0)


def test_binomial_p_value_matches_scipy():
    for total in (1, 2, 11, 100, 1001):
        for a in np.unique(np.linspace(0, total, 15).round().astype(int)):
            want = binomtest(int(a), total, 0.5).pvalue
            assert binomial_p_value(a, total - a) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_predict_abstains_on_a_tie_and_agrees_at_tiny_sigma(mnist_clf, mnist_batch):
    clf, u = halfspace()
    x = at_distance(u, [0.0] * 6)                  # on the hyperplane: both classes have probability 1/2
    res = Smoothed(clf, SIGMA, n=2000, batch_size=4096).predict(x)
    assert bool(res.abstained.all()) and bool((res.p_value > 0.001).all())
    assert res.counts.sum(1).eq(2000).all()
    xs = mnist_batch[0][:32]
    res = Smoothed(mnist_clf, 1e-4, n=100, batch_size=800).predict(xs)
    assert torch.equal(res.prediction, mnist_clf.predict(xs).argmax(1).cpu())
    assert bool((res.counts.amax(1) == 100).all())


def test_certify_radius_formula_on_known_probabilities():
    clf, u = halfspace()
    s = [0.1, 0.3, 0.5, -0.3, 0.0]
    n, alpha = 20_000, 0.001
    res = Smoothed(clf, SIGMA, n=n, n0=100, alpha=alpha, batch_size=8192).certify(at_distance(u, s))
    n_a = res.counts.gather(1, res.selection_counts.argmax(1, keepdim=True))[:, 0].numpy()
    p_lower = beta.ppf(alpha, n_a, n - n_a + 1)
    np.testing.assert_allclose(res.p_lower.numpy(), p_lower, rtol=1e-12)
    ok = p_lower >= 0.5
    np.testing.assert_allclose(res.radius.numpy(), np.where(ok, SIGMA * norm.ppf(p_lower), 0.0), rtol=1e-12)
    assert res.prediction.tolist() == [0, 0, 0, 1, ABSTAIN]
    exact = np.abs(s[:4])                          # the distance to the hyperplane is the exact radius
    assert np.all(res.radius.numpy()[:4] <= exact) and np.all(res.radius.numpy()[:4] >= exact - 0.03)
    # a constant model: every sample votes the same class, so p_A = alpha^(1/n) exactly
    const = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), num_classes=3, channels=1)
    with torch.no_grad():
        const.module[1].weight.zero_()
        const.module[1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    res = Smoothed(const, SIGMA, n=500, alpha=alpha).certify(torch.rand(3, 1, 4, 4))
    assert res.prediction.tolist() == [2, 2, 2]
    np.testing.assert_allclose(res.radius.numpy(), max_certifiable_radius(SIGMA, 500, alpha), rtol=1e-12)
    np.testing.assert_allclose(res.radius.numpy(), SIGMA * norm.ppf(alpha ** (1 / 500)), rtol=1e-12)


def test_seeds_reproduce_and_settings_are_checked():
    clf, u = halfspace()
    x = at_distance(u, [0.05, 0.1, 0.2])
    a = Smoothed(clf, SIGMA, n=3000, n0=50, batch_size=1000, seed=7).certify(x)
    b = Smoothed(clf, SIGMA, n=3000, n0=50, batch_size=1000, seed=7).certify(x)
    c = Smoothed(clf, SIGMA, n=3000, n0=50, batch_size=1000, seed=8).certify(x)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.counts, c.counts)
    for bad, word in (({"sigma": 0}, "sigma"), ({"sigma": 0.25, "n": 0}, "n"), ({"sigma": 0.25, "alpha": 1.5}, "alpha"),
                      ({"sigma": 0.25, "batch_size": 2.5}, "batch_size")):
        with pytest.raises(TrustVisionError, match=word):
            Smoothed(clf, **bad)
    with pytest.raises(TrustVisionError, match="noise_sigma"):
        train_classifier(zoo.mlp(10, 1, 8, 8), bundled.load("digits").subset([0, 1]), noise_sigma=-1.0)


def test_smoothed_logits_are_differentiable_mean_softmax():
    clf, u = halfspace()
    sm = Smoothed(clf, SIGMA)
    x = at_distance(u, [0.3, -0.3]).requires_grad_(True)
    z = sm.smoothed_logits(x, 4000, torch.Generator().manual_seed(0))
    p = z.softmax(1)
    z_ref = np.random.default_rng(0).standard_normal(10**6) * SIGMA           # softmax(s, -s)_0 = sigmoid(2s)
    want = [np.mean(1 / (1 + np.exp(-2 * (c + z_ref)))) for c in (0.3, -0.3)]
    np.testing.assert_allclose(p[:, 0].detach().numpy(), want, atol=0.01)
    z[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def noise_clf():
    module, _, test, path, _ = noise_trained_mnist(SIGMA)
    return Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn-noise"), test, path


@pytest.mark.slow
def test_certified_accuracy_never_exceeds_smoothed_pgd_robust_accuracy(noise_clf):
    clf, test, _ = noise_clf
    x, y = test.x[:16], test.y[:16]
    sm = Smoothed(clf, SIGMA, n0=50, n=1000, batch_size=2000)
    cert = sm.certify(x)
    attackable = sm.as_classifier(m=8, seed=1)
    judge = Smoothed(clf, SIGMA, batch_size=2000, seed=2)             # Monte-Carlo g(x_adv): argmax of votes
    for r in (0.25, 0.5, 1.0):
        x_adv = PGD(eps=r, norm="l2", steps=10, seed=0)(attackable, x, y).x_adv
        robust = judge.sample_counts(x_adv, 200, judge.generator()).argmax(1).cpu() == y
        certified = cert.certified(y, r)
        assert certified.float().mean() <= robust.float().mean(), r
        assert int((certified & ~robust).sum()) <= 1, r           # a certified image broken: at most MC noise
    assert cert.certified_accuracy(y, [0.25])[0] >= 0.75          # the noise-trained model certifies most digits
    assert robust.float().mean() < cert.certified_accuracy(y, [0.0])[0]   # and the attack does break g at r = 1


@pytest.mark.slow
def test_cli_certify_and_audit_section(noise_clf, tmp_path):
    _, test, path = noise_clf
    common = ["certify", "--model", str(path), "--arch", "trustvision:smallcnn", "--num-classes", "10",
              "--channels", "1", "--data", "mnist", "--images", "6", "--n", "300", "--n0", "30",
              "--radii", "0,0.25,0.5"]
    r = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "a"), "--fail-under", "certified_accuracy@0.25=0.3"])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    sec = results["sections"]["certify"]
    assert set(sec["metrics"]["certified_accuracy"]) == {"0.0", "0.25", "0.5"} and len(sec["examples"]) == 6
    assert {"prediction", "radius", "p_lower"} <= set(sec["examples"][0])
    assert (tmp_path / "a" / "certify_curve.png").is_file() and (tmp_path / "a" / "certify_radii.png").is_file()
    assert results["summary"]["certified_accuracy@0.25"] == sec["metrics"]["certified_accuracy"]["0.25"]
    r = CliRunner().invoke(app, [*common, "--sigma", "-1", "--out", str(tmp_path / "b")])
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "sigma" in lines[0]
    clf = Classifier(zoo.smallcnn(10, 1), num_classes=10, channels=1)          # any model: the n = 100 cap is flagged
    cfg = AuditConfig(sections=["certify"], n_images=4, certify={"n": 100, "n0": 10, "sigma": 0.5})
    out = audit(clf, test, cfg, tmp_path / "c")
    codes = {f["code"] for f in out["sections"]["certify"]["flags"]}
    assert "certify_sample_limited" in codes and "certify" not in AuditConfig().sections
