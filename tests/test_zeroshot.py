"""Raw Zero-Shot (Kotyan, Matsuki & Vargas, PLOS ONE 2022): zoo, metrics, protocol, resume, CLI.

A 3-class (digits 0, 1, 2 of the bundled MNIST), 2-architecture (lenet + mlp), 1-epoch miniature.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from trustvision.data import bundled
from trustvision.models import zoo
from trustvision.models.zoo.capsnet import CapsNet, squash
from trustvision.data.dataset import Dataset
from trustvision.evaluation.sections import zeroshot as zs
from trustvision.evaluation import zeroshot_metrics as zm
from trustvision.models.loading import load_model
from trustvision.models.zoo.paper import PAPER_ARCHS


# ------------------------------------------------------------------ zoo
@pytest.mark.parametrize("arch", list(PAPER_ARCHS))
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_zoo_arch_shapes_and_backward(arch, channels, side):
    torch.manual_seed(0)
    m = zoo.ARCHS[arch](num_classes=5, channels=channels)
    x = torch.rand(3, channels, side, side, requires_grad=True)
    out = m(x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("arch", list(PAPER_ARCHS))
def test_zoo_arch_loads_as_trustvision_spec(arch, tmp_path):
    torch.manual_seed(0)
    m = zoo.ARCHS[arch](num_classes=4, channels=1).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    clf = load_model(f"trustvision:{arch}", weights=str(path), num_classes=4, channels=1)
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(clf(x), m(x), atol=1e-5)


def test_capsnet_routing_matches_procedure_1():
    """Forward pass = a direct transcription of Sabour et al.'s routing (Procedure 1) with per-type W."""
    torch.manual_seed(0)
    net = CapsNet(num_classes=4, channels=1, width=8, types=3, dim=4, out_dim=5, iters=3).eval()
    x = torch.rand(2, 1, 28, 28)
    p = net.primary(torch.relu(net.conv1(x)))
    b, _, gh, gw = p.shape
    u = squash(p.view(b, 3, 4, gh * gw).permute(0, 1, 3, 2))             # (B, T, G, 4)
    u_hat = torch.einsum("tjod,btgd->btgjo", net.digits.weight, u).reshape(b, -1, 4, 5)  # (B, N, J, 5)
    logit = torch.zeros(b, u_hat.shape[1], 4)
    for r in range(3):
        c = torch.softmax(logit, dim=2)
        v = squash((c[..., None] * u_hat).sum(1))
        if r < 2:
            logit = logit + (u_hat * v[:, None]).sum(-1)
    with torch.no_grad():
        assert torch.allclose(net.capsules(x), v, atol=1e-5)
        assert torch.allclose(net(x), torch.log(v.norm(dim=-1) + 1e-8), atol=1e-5)
    soft = torch.softmax(net(x), 1)       # soft label = capsule lengths normalised to sum 1
    assert torch.allclose(soft, v.norm(dim=-1) / v.norm(dim=-1).sum(1, keepdim=True), atol=1e-5)


# ------------------------------------------------------------------ metrics
def test_dbm_matches_sklearn_davies_bouldin_and_hand_formula():
    from sklearn.metrics import davies_bouldin_score
    rng = np.random.default_rng(0)
    cluster = rng.dirichlet(np.ones(4), size=60)
    far = np.array([[5.0, 5.0, 5.0, 5.0]])
    # two clusters, the second a single point (scatter 0): DB = S_1 / ||A_1 - far||
    db = davies_bouldin_score(np.vstack([cluster, far]), np.r_[np.zeros(60), 1])
    sep = np.linalg.norm(cluster.mean(0) - far[0])
    assert zm.dbm(cluster, q=1) == pytest.approx(db * sep, rel=1e-10)
    assert zm.dbm(cluster, q=2) == pytest.approx(np.sqrt(np.trace(np.cov(cluster.T, bias=True))), rel=1e-10)
    tight = 0.98 * np.full((60, 4), 0.25) + 0.02 * cluster
    assert zm.dbm(tight) < zm.dbm(cluster)
    assert zm.dbm(np.tile([0.1, 0.2, 0.7], (5, 1))) == pytest.approx(0.0, abs=1e-12)


def test_amalgam_by_hand():
    full_logits = np.log(np.array([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3]]))   # class k = 0 held out
    probs = np.exp(full_logits)
    expected_full = (probs[:, 1:] / probs[:, 1:].sum(1, keepdims=True)).mean(0)   # [0.5833.., 0.4166..]
    soft = np.array([[0.5, 0.5], [0.9, 0.1]])                                     # mean [0.7, 0.3]
    assert zm.amalgam(soft, full_logits, 0) == pytest.approx(np.abs([0.7, 0.3] - expected_full).sum())
    assert zm.amalgam(zm.drop_and_renormalise(full_logits, 0), full_logits, 0) == pytest.approx(0.0, abs=1e-12)
    # a full model that is certain of class k still gives a defined residual distribution
    confident = np.array([[1000.0, 1.0, 0.0, -1.0]])
    g = zm.drop_and_renormalise(confident, 0)
    assert np.isfinite(g).all() and g.sum() == pytest.approx(1.0) and g[0, 0] > g[0, 1] > g[0, 2]


def test_entropy_silhouette_and_correlation():
    from scipy import stats
    assert zm.soft_entropy(np.full((3, 4), 0.25)) == pytest.approx(1.0)
    assert zm.soft_entropy(np.eye(4)[:3]) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(1)
    seen = np.vstack([np.eye(3)[i] * 0.9 + 0.05 + rng.normal(0, 0.01, (10, 3)) for i in range(3)])
    apart = np.full((10, 3), 1 / 3) + rng.normal(0, 0.005, (10, 3))
    assert zm.heldout_silhouette(apart, seen, np.repeat(np.arange(3), 10)) > 0.5
    assert zm.heldout_silhouette(seen[:10], seen, np.repeat(np.arange(3), 10)) < 0   # sits inside class 0
    x, y = rng.normal(size=12), rng.normal(size=12)
    c = zm.correlate(x, y)
    assert c["n"] == 12
    assert c["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert c["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert zm.correlate([1, 2], [3, 4])["pearson_p"] is None
    assert zm.correlate([1, 2, 3], [1, 1, 1])["note"] == "constant input"


# ------------------------------------------------------------------ protocol
def test_heldout_split_reindexes_labels():
    x = torch.rand(8, 1, 28, 28)
    ds = Dataset(x, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), ["a", "b", "c", "d"])
    sub = zs.heldout_split(ds, 1)
    assert sub.labels == ["a", "c", "d"]
    assert sub.y.tolist() == [0, 1, 2, 0, 1, 2]                  # 0 stays, 2 -> 1, 3 -> 2
    assert torch.equal(sub.x, x[[0, 2, 3, 4, 6, 7]])            # no image of the held-out class
    mnist = bundled.load("mnist")
    tr, te = zs.prepare(mnist, zs.ZeroShotConfig(archs=["lenet"], classes=[3, 5, 7]))
    assert tr.labels == ["3", "5", "7"] and set(tr.y.tolist()) == {0, 1, 2} and set(te.y.tolist()) == {0, 1, 2}
    assert len(tr) + len(te) == int(torch.isin(mnist.y, torch.tensor([3, 5, 7])).sum())


# ------------------------------------------------------------------ end to end (CLI), resume
ARGS = ["zeroshot", "--data", "mnist", "--archs", "lenet,mlp", "--classes", "0,1,2", "--epochs", "1",
        "--attack", "fgsm:eps=0.15", "--attack", "pgd:eps=0.1,steps=5", "--attack-images", "30"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Run the CLI twice on the same --out, counting trainings: (out, results 1, results 2, counts, mtimes)."""
    from trustvision.attacks import ATTACKS
    from trustvision.cli.app import app
    mp = pytest.MonkeyPatch()
    mp.setenv("TRUSTVISION_CACHE", str(tmp_path_factory.mktemp("cache")))
    calls = []
    real = zs.train_classifier

    def counting(module, data, **kw):
        calls.append((data.num_classes, len(data)))
        return real(module, data, **kw)

    mp.setattr(zs, "train_classifier", counting)
    out = tmp_path_factory.mktemp("zs") / "out"
    args = [*ARGS, "--out", str(out)]
    if "pixel" in ATTACKS and "threshold" in ATTACKS:    # the paper's evolutionary attacks, kept tiny
        args += ["--attack", "pixel:th=3,pop_size=10,generations=3",
                 "--attack", "threshold:eps=0.2,pop_size=10,generations=3"]
    try:
        r1 = CliRunner().invoke(app, args)
        assert r1.exit_code == 0, r1.output
        res1 = json.loads((out / "results.json").read_text())
        first = list(calls)
        mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
        r2 = CliRunner().invoke(app, args)
        assert r2.exit_code == 0, r2.output
        res2 = json.loads((out / "results.json").read_text())
        mtimes2 = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    finally:
        mp.undo()
    return out, res1, res2, (first, calls[len(first):]), (mtimes, mtimes2), r1.output


@pytest.mark.slow
def test_cli_writes_results_report_and_models(cli_run):
    out, res, _, (first, _), _, output = cli_run
    assert (out / "report.html").is_file() and "Raw Zero-Shot" in (out / "report.html").read_text()
    sec = res["sections"]["zeroshot"]
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(
        f"{a}-{t}.safetensors" for a in ("lenet", "mlp") for t in ("full", "held0", "held1", "held2"))
    # 2 architectures x (1 full + 3 held-out) models; held-out ones trained on 2 classes only
    assert len(first) == 8 and sorted(n for n, _ in first) == [2] * 6 + [3] * 2
    m = sec["metrics"]
    assert m["architectures"] == ["lenet", "mlp"] and m["classes"] == ["0", "1", "2"]
    for a in ("lenet", "mlp"):
        assert m["clean_accuracy"][a] > 0.8
        assert m["dbm_mean"][a] >= 0 and 0 <= m["am_mean"][a] <= 2 and m["dbm_std"][a] is not None
    for f in sec["figures"]:
        assert (out / f["path"]).is_file()
    assert {"zeroshot_metrics.png", "zeroshot_pca_lenet.png", "zeroshot_corr_fgsm.png"} <= {
        f["path"] for f in sec["figures"]}
    c = m["correlation"]["fgsm"]["dbm"]["per_class"]
    assert c["n"] >= 3 and (c["pearson_p"] is None or 0 <= c["pearson_p"] <= 1)
    assert "pearson_p" in c and "spearman_p" in c
    assert any(f["code"] == "zeroshot_few_architectures" for f in sec["flags"])
    assert "DBM vs fgsm success" in output


@pytest.mark.slow
def test_resume_loads_models_without_retraining(cli_run):
    _, res1, res2, (_, second), (mtimes, mtimes2), _ = cli_run
    assert second == []                              # nothing trained on the second run
    assert mtimes == mtimes2                         # model files untouched
    m1, m2 = res1["sections"]["zeroshot"]["metrics"], res2["sections"]["zeroshot"]["metrics"]
    assert m1["dbm_mean"] == m2["dbm_mean"] and m1["attack_success"] == m2["attack_success"]
    assert m2["models_trained_this_run"] == 0 and m1["models_trained_this_run"] == 8


@pytest.mark.slow
def test_soft_labels_have_n_minus_1_dims_and_sum_to_one(cli_run):
    out = cli_run[0]
    cfg = zs.ZeroShotConfig(archs=["lenet"], classes=[0, 1, 2], epochs=1, attacks={}, attack_images=0)
    train, test = zs.prepare(bundled.load("mnist"), cfg)
    rec = zs.run_arch("lenet", train, test, cfg, out)      # loads the persisted models
    assert rec["trained"] == 0
    for k, soft in enumerate(rec["soft"]):
        assert soft.shape == (int((test.y == k).sum()), 2)
        assert np.allclose(soft.sum(1), 1.0)
        assert rec["full_soft"][k].shape == soft.shape
        assert rec["per_class"][k]["dbm"] == pytest.approx(zm.dbm(soft))


def test_bad_options_fail_with_one_line(tmp_path):
    from trustvision.cli.app import app
    r = CliRunner().invoke(app, ["zeroshot", "--data", "mnist", "--archs", "lenet,nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope" in r.output
    r = CliRunner().invoke(app, ["zeroshot", "--data", "mnist", "--archs", "lenet", "--attack", "fgsm:bogus=1",
                                 "--classes", "0,1,2", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "bogus" in r.output
    r = CliRunner().invoke(app, ["zeroshot", "--data", "mnist", "--classes", "0,1", "--attack", "fgsm",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and ">= 3 classes" in r.output


# ------------------------------------------------------------------ metric readings (issue 17), by hand
def test_davies_bouldin_heldout_by_hand_and_sklearn():
    from sklearn.metrics import davies_bouldin_score
    held = np.array([[0.0, 0.0], [2.0, 0.0]])          # centroid (1, 0); distances 1, 1
    seen = np.array([[5.0, 0.0], [7.0, 0.0], [1.0, 4.0], [1.0, 6.0]])
    lab = np.array([0, 0, 1, 1])                        # centroids (6, 0) and (1, 5); scatters 1, 1
    # R = max((1 + 1) / 5, (1 + 1) / 5) = 0.4 (both at distance 5), with q = 1 and q = 2 alike
    assert zm.davies_bouldin_heldout(held, seen, lab, q=2) == pytest.approx(0.4)
    seen2 = np.array([[4.0, 0.0], [6.0, 0.0], [1.0, 4.0], [1.0, 6.0]])    # first centroid now at distance 4
    assert zm.davies_bouldin_heldout(held, seen2, lab) == pytest.approx(2 / 4)
    # with q = 1, the mean of the ratios over all clusters is sklearn's Davies-Bouldin index
    rng = np.random.default_rng(0)
    pts = [rng.normal(c, s, (30, 3)) for c, s in ((0, 0.3), (2, 0.5), (4, 0.2))]
    allp, alll = np.vstack(pts), np.repeat([0, 1, 2], 30)
    ratios = [zm.davies_bouldin_heldout(pts[i], allp[alll != i], alll[alll != i], q=1) for i in range(3)]
    assert np.mean(ratios) == pytest.approx(davies_bouldin_score(allp, alll), rel=1e-10)
    assert zm.davies_bouldin_heldout(held, seen[:0], lab[:0]) is None


def test_pca_2d_and_projected_scatter_by_hand():
    pts = np.array([[1.0, 0, 0, 0], [-1, 0, 0, 0], [0, 2, 0, 0], [0, -2, 0, 0], [0, 0, 0.1, 0]])
    p = zm.pca_2d(pts)
    assert p.shape == (5, 2)
    assert np.allclose(np.abs(p[:, 0]), [0, 0, 2, 2, 0], atol=1e-9)     # first axis: the 2nd coordinate
    assert np.allclose(np.abs(p[:, 1]), [1, 1, 0, 0, 0], atol=1e-9)     # the third coordinate is dropped
    # scatter in the projection = sqrt of the two leading eigenvalues' sum (q = 2)
    cov = np.cov(pts.T, bias=True)
    lam = np.sort(np.linalg.eigvalsh(cov))[::-1]
    assert zm.dbm(p) == pytest.approx(np.sqrt(lam[0] + lam[1]), rel=1e-10)
    assert zm.dbm(p) <= zm.dbm(pts) + 1e-12


def test_amalgam_readings_by_hand():
    full_logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))   # class k = 0 held out
    soft = np.array([[0.5, 0.5], [0.9, 0.1]])
    g = np.array([[2 / 3, 1 / 3], [1 / 3, 2 / 3]])                        # per image, entry 0 dropped
    assert zm.amalgam(soft, full_logits, 0) == pytest.approx(np.abs(soft.mean(0) - g.mean(0)).sum())
    # mean first: mean softmax (0.4, 0.25, 0.35) -> drop k -> (0.25, 0.35) / 0.6
    assert zm.amalgam_mean_first(soft, full_logits, 0) == pytest.approx(
        abs(0.7 - 0.25 / 0.6) + abs(0.3 - 0.35 / 0.6))
    # per image: mean of ||s_i - g_i||_1 = ((1/6 + 1/6) + (0.9 - 1/3 + 2/3 - 0.1)) / 2
    assert zm.amalgam_per_image(soft, full_logits, 0) == pytest.approx((1 / 3 + (0.9 - 1 / 3) * 2) / 2)
    v = zm.variants(soft, np.array([[0.1, 0.9], [0.2, 0.8]]), np.array([1, 1]), full_logits, 0)
    assert set(v) == set(zm.DBM_VARIANTS + zm.AM_VARIANTS)
    assert v["dbm"] == pytest.approx(zm.dbm(soft)) and v["am_per_image"] == pytest.approx(
        zm.amalgam_per_image(soft, full_logits, 0))


def test_fisher_ci_by_hand():
    r, n = 0.5, 28
    lo, hi = zm.fisher_ci(r, n)
    h = 1.959963984540054 / 5.0                      # z_{0.975} / sqrt(n - 3)
    assert lo == pytest.approx(np.tanh(np.arctanh(0.5) - h)) and hi == pytest.approx(np.tanh(np.arctanh(0.5) + h))
    assert zm.fisher_ci(0.5, 3) is None
    c = zm.correlate(np.arange(10.0), np.arange(10.0) ** 2)
    assert c["pearson_ci"][0] < c["pearson_r"] < c["pearson_ci"][1] <= 1


def test_new_zoo_members_are_registered():
    from trustvision.models.zoo.paper import ZOO_12
    assert len(ZOO_12) == 12 and set(ZOO_12) <= set(zoo.ARCHS)
    assert {"vgg19", "mobilenet"} <= set(PAPER_ARCHS)
