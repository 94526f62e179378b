"""Attacks on segmenters, the ``segment`` section, its figures and the ``trustvision segment`` CLI.

Fast tests use a tiny random-initialised U-Net (budgets, the FGSM step against an independent formula,
bad input); the trained-model tests use a small U-Net trained once per machine on the bundled synthetic
cell images (cached by :func:`trustvision.training.cached_model`), and are marked slow.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import error
from typer.testing import CliRunner

from trustvision.attacks.norms import fp32_floor
from trustvision.cli import app
from trustvision.segmentation.base import SegDataset, Segmenter
from trustvision.segmentation.data import load_segmentation
from trustvision.segmentation.attacks import SegmentationAttack, segmentation_loss
from trustvision.segmentation.metrics import confusion_matrix, mean_iou
from trustvision.segmentation.section import SegmentConfig, robust_miou, segment_section, soundness
from trustvision.segmentation.train import build_network, train_segmenter
from trustvision.training.cache import cached_model

K = 3


@pytest.fixture(scope="module")
def tiny():
    """A random-initialised 2-level U-Net on 16x16 grey images, 3 classes, and a batch with ignored pixels."""
    torch.manual_seed(0)
    seg = Segmenter(build_network("unet", 1, K, depth=2, width=4), num_classes=K, channels=1, name="tiny")
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = torch.randint(0, K, (6, 16, 16), generator=torch.Generator().manual_seed(2))
    masks[:, :3] = 255
    return seg, x, masks


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("linf", 0.1), ("l2", 0.5), ("l2", 2.0)])
def test_budget_is_exact_and_pixels_stay_in_range(tiny, norm, eps):
    seg, x, masks = tiny
    for attack in (SegmentationAttack(eps=eps, norm=norm, steps=4, restarts=2, seed=0),
                   SegmentationAttack.fgsm(eps=eps, norm=norm)):
        res = attack(seg, x, masks)
        d = (res.x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((size <= fp32_floor(eps)).all()), (attack.name, size.max().item(), eps)
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert res.pred.shape == masks.shape and res.pred.dtype == torch.long


def test_fgsm_is_one_signed_step_of_the_mean_pixel_loss(tiny):
    """FGSM against an independent formula: x + eps * sign(grad of the mean CE over non-ignored pixels)."""
    seg, x, masks = tiny
    eps = 3 / 255
    xr = x.clone().requires_grad_(True)
    with seg.eval_mode():
        logits = seg.module(xr)
    valid = masks != 255
    ce = F.cross_entropy(logits, masks.clamp_max(K - 1), reduction="none")
    ((ce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1)).sum().backward()
    expected = (x + eps * xr.grad.sign()).clamp(0, 1)
    got = SegmentationAttack.fgsm(eps=eps)(seg, x, masks).x_adv
    assert torch.allclose(got, expected, atol=1e-6)


def test_untargeted_loss_is_the_mean_ce_over_non_ignored_pixels(tiny):
    seg, x, masks = tiny
    logits = seg(x).detach()
    got = segmentation_loss(logits, masks, ignore_index=255)
    for i in range(len(x)):                                        # per image, written out independently
        keep = masks[i] != 255
        ce = F.cross_entropy(logits[i].permute(1, 2, 0)[keep], masks[i][keep])
        assert got[i].item() == pytest.approx(ce.item(), rel=1e-5)


def test_bad_attack_input_is_one_line(tiny):
    seg, x, masks = tiny
    assert "norm" in error(lambda: SegmentationAttack(norm="l1"))
    assert "steps" in error(lambda: SegmentationAttack(steps=0))
    assert "rounds" in error(lambda: SegmentationAttack(rounds="first"))
    assert "masks" in error(lambda: SegmentationAttack(eps=0.1)(seg, x, masks[:, :8]))
    assert "target" in error(lambda: SegmentationAttack(eps=0.1)(seg, x, masks, target=K))
    assert "region" in error(lambda: SegmentationAttack(eps=0.1)(seg, x, masks, region=masks > 0))


def test_robust_miou_at_zero_is_the_clean_miou(tiny):
    seg, x, masks = tiny
    data = SegDataset(x, masks, K, ["a", "b", "c"], 255, "tiny")
    value, _ = robust_miou(seg, data, SegmentationAttack(eps=0.0), batch_size=4)
    clean = float(mean_iou(confusion_matrix(seg.predict(x), masks, K, 255)))
    assert value == pytest.approx(clean, abs=1e-12)


def test_soundness_flags_fire_on_bad_curves():
    from trustvision.segmentation.section import RobustCurves
    eps = [0.0, 0.01, 0.02, 0.03]
    good = RobustCurves(eps, {"pgd": [0.8, 0.5, 0.3, 0.1], "fgsm": [0.8, 0.6, 0.5, 0.4]}, n=64)
    assert soundness(good) == []
    rising = RobustCurves(eps, {"pgd": [0.8, 0.5, 0.7, 0.1], "fgsm": [0.8, 0.6, 0.5, 0.4]}, n=64)
    assert [f.code for f in soundness(rising)] == ["non-monotonic", "weaker-than-fgsm"]


def test_degenerate_model_is_flagged():
    from trustvision.segmentation.section import degenerate_flags
    assert [f.code for f in degenerate_flags({"cell": 0.83, "membrane": 0.0})] == ["degenerate-model"]
    assert [f.code for f in degenerate_flags({"cell": 0.83, "membrane": None})] == ["degenerate-model"]
    assert degenerate_flags({"cell": 0.83, "membrane": 0.4}) == []


@pytest.mark.slow
def test_two_models_compared_results_report_and_resume(tiny, tmp_path):
    from trustvision.segmentation.run import run_segmentation
    seg, x, masks = tiny
    torch.manual_seed(1)
    fb = Segmenter(build_network("feedback-unet", 1, K, depth=2, width=4), num_classes=K, channels=1, rounds=2,
                   name="tiny-feedback")
    data = SegDataset(x, masks, K, ["a", "b", "c"], 255, "tiny")
    cfg = SegmentConfig(eps_linf=(0, 4 / 255), steps=2, n_attack=4, batch_size=4, examples=2)
    before = {k: v.clone() for k, v in fb.module.state_dict().items()}
    res = run_segmentation({"unet": seg, "fb": fb}, data, cfg, tmp_path)
    assert set(res["sections"]) == {"segment-unet", "segment-fb", "segment-compare"}
    assert len(res["sections"]["segment-fb"]["metrics"]["miou_per_round"]) == 2
    assert {"unet/miou", "fb/miou", "fb/robust_miou_linf@0.015686"} <= set(res["summary"])
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == res["summary"]
    assert "Segmentation: models compared" in (tmp_path / "report.html").read_text()
    assert all(torch.equal(v, fb.module.state_dict()[k]) for k, v in before.items())   # weights untouched
    said = []
    again = run_segmentation({"unet": seg, "fb": fb}, data, cfg, tmp_path, say=said.append)
    assert sum("resumed" in s for s in said) == 2 and again["summary"] == res["summary"]


# ---------------------------------------------------------------- a small trained U-Net (cached once per machine)
@pytest.fixture(scope="module")
def cells():
    """(trained U-Net segmenter, 16 held-out 32x32 synthetic cell images): mIoU about 0.85."""
    train = load_segmentation("bundled:cells", "train", n=96, size=32)
    test = load_segmentation("bundled:cells", "test", n=16, size=32)
    key = {"name": "seg-test-unet-cells", "n": 96, "size": 32, "epochs": 12, "width": 8, "depth": 2, "seed": 0}
    module, _, _ = cached_model(key, lambda: build_network("unet", 1, 2, depth=2, width=8),
                                lambda m: train_segmenter(m, train, epochs=12, batch_size=16, lr=3e-3).module)
    return Segmenter(module, num_classes=2, channels=1, labels=train.labels, name="unet-cells"), test


@pytest.mark.slow
def test_pgd_lowers_miou_of_a_trained_unet(cells):
    seg, test = cells
    clean, _ = robust_miou(seg, test, SegmentationAttack(eps=0.0), batch_size=16)
    assert clean > 0.6                                             # the model works before it is attacked
    fgsm, _ = robust_miou(seg, test, SegmentationAttack.fgsm(eps=8 / 255), batch_size=16)
    pgd, _ = robust_miou(seg, test, SegmentationAttack(eps=8 / 255, steps=10), batch_size=16)
    assert pgd < clean - 0.15, (clean, pgd)
    assert pgd <= fgsm + 0.02, (fgsm, pgd)


@pytest.mark.slow
@pytest.mark.parametrize("target,gain", [(0, 0.10), (1, 0.08)])
def test_targeted_attack_paints_the_region(cells, target, gain):
    """Inside a 16x16 box: erase the membranes (target 0, about 77 % -> 96 % at 16/255) or paint them (target 1,
    about 23 % -> 42 %: membranes need edges, harder to forge); pixels outside the box are not the goal."""
    seg, test = cells
    x, masks = test.x[:8], test.masks[:8]
    region = torch.zeros_like(masks, dtype=torch.bool)
    region[:, 8:24, 8:24] = True
    before = (seg.predict(x)[region] == target).float().mean()
    res = SegmentationAttack(eps=16 / 255, steps=20)(seg, x, masks, target=target, region=region)
    after = (res.pred[region] == target).float().mean()
    assert after > before + gain, (before, after)


@pytest.mark.slow
def test_section_metrics_figures_and_flags(cells, tmp_path):
    seg, test = cells
    cfg = SegmentConfig(eps_linf=(0, 2 / 255, 8 / 255), steps=5, n_attack=8, batch_size=8, examples=2)
    sec = segment_section(seg, test, cfg, tmp_path)
    for key in ("miou", "miou_per_round", "per_class_iou", "boundary_f1", "robust_miou_linf@0",
                "robust_miou_linf@0.031373"):
        assert key in sec.metrics
    assert sec.metrics["robust_miou_linf@0.031373"] < sec.metrics["robust_miou_linf@0"]
    for fig in sec.figures:
        assert (tmp_path / fig.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "synthetic-data" in [f.code for f in sec.flags]


# ---------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_train_attack_eval_end_to_end(tmp_path):
    runner = CliRunner()
    common = ["--data", "bundled:cells", "--size", "24", "--limit", "16"]
    r = runner.invoke(app, ["segment", "train", *common, "--out", str(tmp_path / "t"), "--model", "feedback-unet",
                            "--epochs", "1", "--width", "4", "--depth", "2", "--n-attack", "4", "--steps", "2",
                            "--eps-linf", "0,8/255"])
    assert r.exit_code == 0, r.output
    weights = tmp_path / "t" / "model.safetensors"
    assert json.loads((tmp_path / "t" / "model.json").read_text())["architecture"] == "feedback-unet"
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert len(results["sections"]["segment"]["metrics"]["miou_per_round"]) == 2
    args = ["segment", "attack", *common, "--weights", str(weights), "--out", str(tmp_path / "a"), "--n-attack",
            "4", "--steps", "2", "--eps-linf", "0,4/255"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "robust_miou_linf@0.015686" in json.loads((tmp_path / "a" / "results.json").read_text())["summary"]
    assert (tmp_path / "a" / "report.html").read_text().count("data:image/png;base64") >= 4
    r = runner.invoke(app, args)                                   # same command again: resumed
    assert r.exit_code == 0 and "resumed section 'segment'" in r.output
    r = runner.invoke(app, ["segment", "eval", *common, "--weights", str(weights), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,culprit", [
    (["segment", "eval", "--data", "bundled:cells", "--weights", "missing.safetensors"], "missing.safetensors"),
    (["segment", "train", "--data", "no/such/folder"], "no/such/folder"),
    (["segment", "attack", "--data", "bundled:cells", "--weights", "x", "--eps-linf", "abc"], "--eps-linf"),
    (["segment", "attack", "--data", "bundled:cells", "--weights", "x", "--eps-linf", "2"], "--eps-linf"),
    (["segment", "train", "--data", "bundled:cells", "--leak", "knn"], "--leak"),
    (["segment", "train", "--data", "bundled:cells", "--model", "resnet", "--limit", "4"], "--model"),
    (["segment", "eval", "--data", "bundled:cells", "--weights", "x", "--limit", "0"], "--limit"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, culprit):
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and culprit in lines[0], r.output


def test_cli_bad_weights_file_names_it(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    r = CliRunner().invoke(app, ["segment", "eval", "--data", "bundled:cells", "--weights", str(bad), "--out",
                                 str(tmp_path / "o")])
    assert r.exit_code == 2 and "model.safetensors" in r.output
