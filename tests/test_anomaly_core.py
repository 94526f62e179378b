"""Anomaly foundations: contract, MVTec loader and its errors, metrics vs references, VAE, Siamese stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trustvision.anomaly import AnomalyResult, Detector
from trustvision.anomaly.base import load_detector, save_detector
from trustvision.anomaly.data import NO_MASKS_NOTE, load_anomaly_data, load_mvtec, write_mvtec
from trustvision.anomaly.metrics import aupro, auroc, evaluate, f1_max, region_counts
from trustvision.anomaly.siamese import SiameseRejudge
from trustvision.anomaly.textures import make_textures
from trustvision.anomaly.vae import VAEDetector
from trustvision.errors import TrustVisionError
from trustvision.persist import cached_file, digest
from trustvision.training.cache import cache_dir

TINY = dict(textures=("brick",), size=32, n_train=48, n_test_good=6, n_test_defect=4)


@pytest.fixture(scope="module")
def tiny():
    return make_textures(**TINY, seed=0)


def _cached(det, data, tag):
    """Fit ``det`` on ``data.train`` once per machine (safetensors cache), else load it."""
    key = digest(tag, repr(det), TINY, torch.__version__)
    path = cache_dir() / f"anomaly-{tag}-{key}.safetensors"
    cached_file(path, lambda p: save_detector(det.fit(data.train), p), lambda p: load_detector(det, p))
    return det


@pytest.fixture(scope="module")
def vae(tiny):
    return _cached(VAEDetector(depth=2, epochs=25, latent=32, seed=0), tiny, "vae")


def _siamese(tiny, seed: int):
    det = SiameseRejudge(VAEDetector(depth=2, epochs=25, latent=32, seed=seed), crop=16, radius=8, bank_stride=4,
                         steps=120, percentile=95.0, seed=seed)
    return _cached(det, tiny, "siamese")


@pytest.fixture(scope="module")
def siamese(tiny):
    return _siamese(tiny, 0)


# ---------------------------------------------------------------- contract

def test_result_contract_and_shapes(vae, tiny):
    with pytest.raises(TrustVisionError, match="maps"):
        AnomalyResult(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(TrustVisionError, match="scores"):
        AnomalyResult(torch.zeros(2, 4, 4), torch.zeros(3))
    assert isinstance(vae, Detector)
    r = vae.score(tiny.test[:5])
    assert r.maps.shape == (5, 32, 32) and r.maps.dtype == torch.float32 and r.scores.shape == (5,)
    assert torch.allclose(r.scores, r.maps.flatten(1).amax(1))
    with pytest.raises(TrustVisionError, match="N, C, H, W"):
        vae.score(torch.rand(3, 32, 32))


def test_textures_are_seeded_synthetic_with_exact_masks():
    a, b = make_textures(**TINY, seed=3), make_textures(**TINY, seed=3)
    assert torch.equal(a.test, b.test) and torch.equal(a.masks, b.masks)
    assert a.synthetic and "synthetic" in a.notes[0] and set(a.kinds) == {"scratch", "hole", "stain", "cut"}
    good = a.labels == 0
    assert not a.masks[good].any() and a.masks[~good].flatten(1).any(1).all()
    assert not torch.equal(a.test, make_textures(**TINY, seed=4).test)
    assert a.train.min() >= 0 and a.train.max() <= 1


# ---------------------------------------------------------------- data

def test_mvtec_round_trip(tiny, tmp_path):
    root = write_mvtec(tiny, tmp_path / "brick")
    assert (root / "train" / "good" / "000.png").exists() and (root / "ground_truth" / "hole" / "000_mask.png").exists()
    d = load_mvtec(root)
    assert d.train.shape == tiny.train.shape and d.test.shape == tiny.test.shape
    order = sorted(range(len(tiny.defect_types)), key=lambda i: (tiny.defect_types[i] != "good", tiny.defect_types[i]))
    assert (d.test - tiny.test[order]).abs().max() <= 0.5 / 255 + 1e-6     # 8-bit quantisation only
    assert (d.train - tiny.train).abs().max() <= 0.5 / 255 + 1e-6
    assert d.defect_types == [tiny.defect_types[i] for i in order]
    assert torch.equal(d.masks, tiny.masks[order]) and torch.equal(d.labels, tiny.labels[order])
    assert load_mvtec(root, size=16).test.shape[-2:] == (16, 16)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _layout(root, masks=True, grey_train=False):
    rgb = np.full((16, 16, 3), 120)
    _write(root / "train" / "good" / "a.png", rgb[..., 0] if grey_train else rgb)
    _write(root / "test" / "good" / "g.png", rgb)
    for kind in ("crack", "hole"):
        _write(root / "test" / kind / "x.png", rgb)
        if masks:
            _write(root / "ground_truth" / kind / "x_mask.png", np.pad(np.full((4, 4), 255), 6))
    return root


@pytest.mark.parametrize("breakage, match", [
    (lambda r: __import__("shutil").rmtree(r / "train"), "train/good"),
    (lambda r: _write(r / "ground_truth" / "crack" / "x_mask.png", np.zeros((8, 8))), "mask size"),
    (lambda r: _write(r / "ground_truth" / "crack" / "x_mask.png", np.arange(256).reshape(16, 16)), "not binary"),
    (lambda r: _write(r / "ground_truth" / "crack" / "y_mask.png", np.zeros((16, 16))), "mask without an image"),
    (lambda r: __import__("shutil").rmtree(r / "ground_truth" / "hole"), "defect folder without masks"),
    (lambda r: _write(r / "test" / "good" / "h.png", np.full((16, 16), 9)), "grey image among RGB"),
])
def test_mvtec_bad_input_names_the_path(tmp_path, breakage, match):
    root = _layout(tmp_path / "cat")
    breakage(root)
    with pytest.raises(TrustVisionError, match=match) as e:
        load_mvtec(root)
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg


def test_mvtec_without_masks_is_legal_with_a_note(tmp_path):
    d = load_mvtec(_layout(tmp_path / "cat", masks=False))
    assert d.masks is None and d.notes == [NO_MASKS_NOTE] and d.labels.tolist() == [0, 1, 1]
    res = AnomalyResult(torch.rand(3, 16, 16), torch.tensor([0.1, 0.5, 0.9]))
    out = evaluate(res, d)
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] is None and out["aupro"] is None
    with pytest.raises(TrustVisionError, match="bundled"):
        load_anomaly_data("bundled:nothing")
    with pytest.raises(TrustVisionError, match="no such folder"):
        load_anomaly_data(str(tmp_path / "missing"))


# ---------------------------------------------------------------- metrics

def test_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = rng.integers(0, 7, 300) + 0.8 * y                        # many ties
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    maps, masks = rng.random((6, 12, 12)), rng.random((6, 12, 12)) < 0.2
    maps = maps + masks * 0.3
    assert auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_f1_max_equals_brute_force():
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 80), rng.random(80)
    best = max(2 * ((s >= t) & (y == 1)).sum() / ((s >= t).sum() + y.sum()) for t in s)
    assert f1_max(s, y)[0] == pytest.approx(best)


def _aupro_reference(maps, masks, limit=0.3):
    """Independent AUPRO: a loop over every threshold and every ground-truth region."""
    from scipy.ndimage import label
    regions = []
    for i in range(len(masks)):
        lab, n = label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps))[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([pred[i][r].mean() for i, r in regions])
        points.append((fpr, pro))
    area, (x0, y0) = 0.0, points[0]
    for x1, y1 in points[1:]:
        if x1 > limit:                                              # interpolate the last segment
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
            area += (x1 - x0) * (y0 + y1) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
        x0, y0 = x1, y1
    return area / limit


def test_aupro_against_independent_loop_and_sanity_values():
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 1:4, 1:5] = True
    masks[0, 7:9, 7:9] = True                                        # two regions of different size
    masks[1, 4:9, 2:3] = True
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 2)        # ties included
    assert aupro(maps, masks) == pytest.approx(_aupro_reference(maps, masks), abs=1e-9)
    assert aupro(maps, masks, 0.1) == pytest.approx(_aupro_reference(maps, masks, 0.1), abs=1e-9)
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)
    big = np.zeros((30, 32, 32), dtype=bool)
    big[:, 8:20, 8:20] = True
    assert aupro(rng.random(big.shape), big) == pytest.approx(0.15, abs=0.02)   # PRO ~ FPR


def test_region_counts_by_hand():
    masks = np.zeros((1, 12, 12), dtype=bool)
    masks[0, 1:3, 1:3] = masks[0, 8:10, 8:10] = True                  # two defects
    cand = np.zeros((1, 12, 12), dtype=np.int32)
    cand[0, 0:3, 0:3], cand[0, 8:10, 8:11], cand[0, 5, 5] = 1, 2, 3  # two hits, one false positive
    kept = np.where(cand == 2, 2, 0)
    c = region_counts(cand, kept, masks)
    assert (c["false_positive_regions_before"], c["false_positive_regions_after"]) == (1, 0)
    assert (c["defects_found_before"], c["defects_found_after"], c["true_defects_lost"]) == (2, 1, 1)


# ---------------------------------------------------------------- methods

def test_vae_reconstructs_normals_better_than_defects(vae, tiny):
    with torch.inference_mode():
        err = vae.raw_map(tiny.test)
    normal_err = err[tiny.labels == 0].mean()
    defect_err = err[tiny.masks].mean()
    assert defect_err > 3 * normal_err
    assert auroc(vae.score(tiny.test).scores, tiny.labels) > 0.8


@pytest.mark.slow
def test_vae_options_and_state_round_trip(vae, tiny, tmp_path):
    det = load_detector(VAEDetector(depth=2, latent=32), save_detector(vae, tmp_path / "v.safetensors"))
    assert torch.equal(det.score(tiny.test[:4]).maps, vae.score(tiny.test[:4]).maps)
    with pytest.raises(TrustVisionError, match="do not match"):
        VAEDetector(depth=2, latent=16).load_state_dict(vae.state_dict())
    a = VAEDetector(depth=2, epochs=1, error="ssim", score_reduction="topk", bottleneck="spatial", latent=4)
    b = VAEDetector(depth=2, epochs=1, error="ssim", score_reduction="topk", bottleneck="spatial", latent=4)
    ra, rb = a.fit(tiny.train[:16]).score(tiny.test[:3]), b.fit(tiny.train[:16]).score(tiny.test[:3])
    assert torch.equal(ra.maps, rb.maps) and ra.maps.shape == (3, 32, 32)        # seeded
    with pytest.raises(TrustVisionError, match="divisible"):
        VAEDetector(depth=3, epochs=1).fit(torch.rand(4, 3, 20, 20))


@pytest.mark.slow
def test_siamese_removes_false_positive_regions(siamese, tiny):
    """Over 3 seeds, because one training is fragile: the re-judged false-positive regions depend on the
    thread count's float rounding (seed 0: 11 -> 3 with 1 thread, 11 -> 9 with 2 or 3).  Measured
    totals: 30 -> 7 (1 thread), 30 -> 15 (2 threads); defects found 48 -> 48 in both."""
    fp, found = [0, 0], [0, 0]
    for seed in (0, 1, 2):
        det = siamese if seed == 0 else _siamese(tiny, seed)
        res = det.score(tiny.test)
        counts = evaluate(res, tiny)["regions"]
        assert torch.equal(res.extras["regions_before"].sum(), torch.tensor(counts["regions_before"]))
        assert (res.extras["regions_after"] <= res.extras["regions_before"]).all()
        fp = [fp[0] + counts["false_positive_regions_before"], fp[1] + counts["false_positive_regions_after"]]
        found = [found[0] + counts["defects_found_before"], found[1] + counts["defects_found_after"]]
    assert fp[0] >= 18 and fp[1] <= 0.75 * fp[0], fp
    assert found[1] >= 0.8 * found[0], found
    res = siamese.score(tiny.test)
    base = siamese.vae.score(tiny.test).maps
    assert (res.maps <= base + 1e-6).all()                       # re-judgment only removes
    _check_gradients(siamese, tiny)


def test_vae_and_siamese_scores_do_not_depend_on_the_forward_batch(vae, siamese, tiny):
    """score_batch_size / embed_batch_size (None: forward_batch) change no map, score or region count."""
    from dataclasses import replace
    ref = vae.score(tiny.test)
    for bs in (1, 3, 64):
        got = replace(vae, score_batch_size=bs).score(tiny.test)
        torch.testing.assert_close(got.maps, ref.maps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-5)
    ref = siamese.score(tiny.test)
    other = replace(siamese, embed_batch_size=2, vae=replace(siamese.vae, score_batch_size=3))
    got = other.score(tiny.test)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-5)
    for k in ("regions_before", "regions_after", "kept_labels"):
        assert torch.equal(got.extras[k], ref.extras[k]), k


def _check_gradients(det, tiny):
    """score_differentiable: right shapes, finite non-zero input gradients, the same scores as score()."""
    x = tiny.test[:4].clone().requires_grad_(True)
    maps, scores = det.score_differentiable(x)
    assert maps.shape == (4, 32, 32) and scores.shape == (4,)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.allclose(scores.detach().cpu(), det.score(tiny.test[:4]).scores, atol=1e-4)


def test_vae_score_differentiable_has_gradients(vae, tiny):
    _check_gradients(vae, tiny)
