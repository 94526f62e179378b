"""PatchCore, the attack on the inspector, the anomaly section and the ``trustvision anomaly`` command.

Cross-checks: the greedy coreset and the chunked nearest-neighbour search against brute-force NumPy
references written here; PatchCore on its own training patches (coreset ratio 1) scores exactly 0.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from browser import render_and_probe

from trustvision.anomaly.attack import DetectorPGD, attack_curves, operating_threshold
from trustvision.anomaly.backbone import DEMO_LAYERS, Backbone, load_backbone
from trustvision.anomaly.base import load_detector, save_detector
from trustvision.anomaly.patchcore import PatchCore, greedy_coreset, nearest
from trustvision.anomaly.run import run_anomaly
from trustvision.anomaly.section import AnomalyConfig, fit_or_load
from trustvision.anomaly.textures import make_textures
from trustvision.cli.app import app
from trustvision.errors import TrustVisionError
from trustvision.models.zoo.paper import resnet


def _reference_coreset(x: np.ndarray, n: int, start: int) -> list[int]:
    """k-center greedy, written plainly: repeatedly take the point farthest from everything chosen."""
    chosen = [start]
    for _ in range(n - 1):
        d = np.array([min(np.sum((x[i] - x[j]) ** 2) for j in chosen) for i in range(len(x))])
        chosen.append(int(np.argmax(d)))
    return chosen


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(resnet(10, 3, 8), DEMO_LAYERS, name="random resnet-8")


@pytest.fixture(scope="module")
def tiny():
    """Smooth normal images (8, 3, 32, 32) and four of them with a bright square planted (defective)."""
    g = torch.Generator().manual_seed(0)
    normal = torch.nn.functional.avg_pool2d(torch.rand(8, 3, 36, 36, generator=g), 5, stride=1) * 0.5 + 0.25
    test = normal[:4].clone()
    test[:, :, 4:9, 4:9] = 1.0
    return normal, test


def test_greedy_coreset_matches_brute_force():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    got = greedy_coreset(x, 12, projection_dim=None, seed=3).tolist()
    start = int(torch.randint(60, (1,), generator=torch.Generator().manual_seed(3)))
    assert got == _reference_coreset(x.double().numpy(), 12, start)
    assert len(set(got)) == 12


def test_greedy_coreset_projection_keeps_coverage():
    x = torch.randn(400, 256, generator=torch.Generator().manual_seed(2))
    idx = greedy_coreset(x, 40, projection_dim=64, seed=0)
    assert len(set(idx.tolist())) == 40
    radius = nearest(x, x[idx])[0].max()
    rand = nearest(x, x[torch.randperm(400, generator=torch.Generator().manual_seed(0))[:40]])[0].max()
    assert radius <= rand * 1.05          # k-center greedy covers no worse than a random subset


def test_nearest_chunked_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    q, bank = torch.randn(37, 6, generator=g), torch.randn(23, 6, generator=g)
    d, i = nearest(q, bank, chunk=50)                     # forces many chunks
    full = np.sqrt(((q.numpy()[:, None] - bank.numpy()[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d.numpy(), full.min(1), rtol=1e-4, atol=1e-5)
    assert i.tolist() == full.argmin(1).tolist()


def test_patchcore_maps_shapes_and_self_score(backbone, tiny):
    normal, test = tiny
    pc = PatchCore(backbone, coreset_ratio=1.0, sigma=1.0).fit(normal)
    h = normal.shape[-1] // 2                             # layers.1 has stride 2
    assert pc.memory_bank.shape == (8 * h * h, 16 + 32)      # stages 2w + 4w
    own = pc.score(normal)
    assert own.maps.shape == (8, 32, 32) and own.scores.shape == (8,)
    assert float(own.scores.max()) < 1e-3                 # every training patch is in the bank
    res = pc.score(test)
    assert float(res.scores.min()) > 10 * float(own.scores.max()) + 1e-3
    inside, outside = res.maps[:, 4:9, 4:9].mean(), res.maps[:, 22:, 22:].mean()
    assert inside > 2 * outside                           # the map points at the planted square


def test_patchcore_coreset_size_state_roundtrip_and_reweight(backbone, tiny, tmp_path):
    normal, test = tiny
    pc = PatchCore(backbone, coreset_ratio=0.1, grid="deep").fit(normal)
    assert len(pc.memory_bank) == round(0.1 * 8 * 8 * 8)
    save_detector(pc, tmp_path / "pc.safetensors")
    again = load_detector(PatchCore(backbone, coreset_ratio=0.1, grid="deep"), tmp_path / "pc.safetensors")
    torch.testing.assert_close(again.score(test).scores, pc.score(test).scores)
    pc.reweight = True
    w = pc.score(test).scores
    pc.reweight = False
    assert bool(((w >= 0) & (w <= pc.score(test).scores + 1e-6)).all())
    with pytest.raises(TrustVisionError, match="fit"):
        PatchCore(backbone).score(test)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_attack_respects_budget_and_moves_scores(backbone, tiny, norm, eps):
    normal, test = tiny
    pc = PatchCore(backbone, coreset_ratio=0.5, sigma=1.0).fit(normal)
    clean_def, clean_norm = pc.score(test).scores, pc.score(normal).scores
    atk = DetectorPGD(eps=eps, norm=norm, steps=10, seed=0)
    x_miss, s_miss, zero = atk.run(pc, test, "miss")
    x_fa, s_fa, _ = atk.run(pc, normal, "false_alarm")
    for x0, xa in ((test, x_miss), (normal, x_fa)):
        d = (xa - x0).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((size <= eps).all()) and bool(((xa >= 0) & (xa <= 1)).all())
    assert not zero.any()
    assert float(s_miss.mean()) < 0.9 * float(clean_def.mean())          # defects pushed down
    assert float(s_fa.mean()) > float(clean_norm.mean()) + 0.1 * float(clean_def.mean())   # normals pushed up


def test_attack_curves_budget_zero_is_clean(backbone, tiny):
    normal, test = tiny
    pc = PatchCore(backbone, coreset_ratio=0.5).fit(normal[:6])
    thr = operating_threshold(pc.score(normal[6:]).scores, 0.5)
    c = attack_curves(pc, normal, test, thr, [0.0, 8 / 255], steps=3)
    clean_def, clean_norm = pc.score(test).scores, pc.score(normal).scores
    assert c["miss_rate"][0] == pytest.approx(float((clean_def < thr).float().mean()))
    assert c["false_alarm_rate"][0] == pytest.approx(float((clean_norm >= thr).float().mean()))
    assert c["image_auroc"][1] <= c["image_auroc"][0] + 1e-9
    assert c["false_alarm_rate"][1] >= c["false_alarm_rate"][0]


def test_patchcore_scores_do_not_depend_on_the_forward_batch(backbone, tiny):
    """Memory bank and scores are the same (float tolerance) for a given batch size and for forward_batch's;
    the section's score_all gives the same in chunks as in one call."""
    from trustvision.anomaly.section import score_all
    normal, test = tiny
    auto = PatchCore(backbone, coreset_ratio=1.0, sigma=1.0).fit(normal)
    small = PatchCore(backbone, coreset_ratio=1.0, sigma=1.0, batch_size=3).fit(normal)
    torch.testing.assert_close(small.memory_bank, auto.memory_bank, rtol=1e-5, atol=1e-5)
    ref = auto.score(test)
    for det in (small, PatchCore(backbone, coreset_ratio=1.0, sigma=1.0, batch_size=100).fit(normal)):
        got = det.score(test)
        torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-5)
        # maps: near-zero patch distances carry ~1e-5 of float32 cancellation (||a||² + ||b||² - 2a·b under a
        # square root, in nearest()) from 1e-8 differences of the convolution at another batch size
        torch.testing.assert_close(got.maps, ref.maps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(score_all(auto, test, 3).scores, score_all(auto, test).scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(TrustVisionError, match="batch size"):
        PatchCore(backbone, batch_size=0).fit(normal)


def test_backbone_bad_input(tmp_path):
    with pytest.raises(TrustVisionError, match="--backbone-weights .*no such file"):
        load_backbone("torchvision:resnet18", tmp_path / "missing.safetensors")
    with pytest.raises(TrustVisionError, match="--backbone 'foo'"):
        load_backbone("foo")
    with pytest.raises(TrustVisionError, match="no layer 'nope'"):
        load_backbone("trustvision:resnet", layers=("nope",))


@pytest.mark.parametrize("args,match", [
    (["--data", "/nonexistent/mvtec"], "/nonexistent/mvtec"),
    (["--data", "bundled:textures", "--method", "magic"], "--method 'magic'"),
    (["--data", "bundled:textures", "--eps-linf", "a,b"], "--eps-linf"),
    (["--data", "bundled:textures", "--method", "patchcore", "--backbone", "torchvision:resnet18",
      "--backbone-weights", "/nonexistent/w.safetensors"], "no such file"),
    (["bogus"], "anomaly 'bogus'"),
    ([], "--data"),
    (["demo", "--data", "/nonexistent/mvtec"], "conflicts with 'demo'"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, args, match):
    res = CliRunner().invoke(app, ["anomaly", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert match in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_end_to_end_and_resume(tmp_path):
    out = tmp_path / "o"
    args = ["anomaly", "--data", "bundled:textures:brick", "--out", str(out), "--method", "patchcore",
            "--backbone", "trustvision:resnet", "--eps-linf", "0,4/255", "--attack-steps", "2", "--size", "32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    m = r["sections"]["anomaly"]["metrics"]["patchcore"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "per_defect", "attack"):
        assert key in m
    assert 0.5 < m["image_auroc"] <= 1 and len(m["per_defect"]) == 4
    codes = {f["code"] for f in r["sections"]["anomaly"]["flags"]}
    assert {"synthetic-data", "random-backbone"} <= codes
    assert list((out / "models").glob("patchcore-*.safetensors"))
    html = (out / "report.html").read_text()
    assert "anomaly" in html.lower() and "synthetic" in html and html.count("data:image/png") >= 4
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "resumed section 'anomaly'" in again.output


@pytest.fixture
def small_siamese(monkeypatch):
    """The section's own detectors, with a Siamese stage small enough for a test (5 triplet steps, 16 px crops):
    the saving, fingerprinting and reloading code under test is unchanged."""
    import trustvision.anomaly.section as section
    build = section.build_detector

    def small(method, cfg, backbone=None):
        det = build(method, cfg, backbone)
        if method == "vae+siamese":
            det.steps, det.crop, det.radius, det.bank_stride, det.percentile = 5, 16, 8, 8, 95.0
        if method.startswith("vae"):
            getattr(det, "vae", det).width = 8
        return det
    monkeypatch.setattr(section, "build_detector", small)
    return make_textures(textures=("brick",), size=32, n_train=20, n_test_good=3, n_test_defect=2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vae", "vae+siamese"])
def test_trained_vae_models_are_saved_and_reused_on_a_rerun(small_siamese, tmp_path, method):
    data, cfg = small_siamese, AnomalyConfig(methods=[method], epochs=1)
    first, info = fit_or_load(method, cfg, data.train, tmp_path)
    assert not info["reused"] and info["path"].endswith(".safetensors") and (tmp_path / info["path"]).exists()
    again, info2 = fit_or_load(method, cfg, data.train, tmp_path)        # a load error would silently refit
    assert info2 == {"path": info["path"], "reused": True, "fit_seconds": 0.0}
    a, b = first.score(data.test), again.score(data.test)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.scores, b.scores)
    if method == "vae+siamese":
        assert (again.pixel_threshold, again.region_threshold) == (first.pixel_threshold, first.region_threshold)
        assert torch.equal(a.extras["kept_labels"], b.extras["kept_labels"])
    _, fresh = fit_or_load(method, cfg, data.train, tmp_path, resume=False)    # --no-resume retrains
    assert not fresh["reused"]
    _, other = fit_or_load(method, AnomalyConfig(methods=[method], epochs=2), data.train, tmp_path)
    assert not other["reused"] and other["path"] != info["path"]            # other settings: another file
    (tmp_path / info["path"]).write_bytes(b"not safetensors")
    _, broken = fit_or_load(method, cfg, data.train, tmp_path)               # unreadable: refit, not crash
    assert not broken["reused"]


@pytest.mark.slow
@pytest.mark.browser
def test_anomaly_report_renders_in_chromium(small_siamese, tmp_path):
    """Every figure of a vae+siamese and patchcore run decodes in headless chromium: map overlays, ROC curves,
    score histograms, attack curves and the kept-vs-removed regions."""
    cfg = AnomalyConfig(methods=["vae+siamese", "patchcore"], epochs=1, backbone="trustvision:resnet",
                        eps=[0.0, 4 / 255], attack_steps=2)
    results = run_anomaly(small_siamese, tmp_path, cfg)
    figs = [f["title"] for f in results["sections"]["anomaly"]["figures"]]
    assert any(t.startswith("Candidate regions kept vs removed") for t in figs) and len(figs) == 5
    probe = render_and_probe(tmp_path / "report.html", expected_images=len(figs))
    assert "synthetic" in probe.dom and "Attacking the inspector" in probe.dom
