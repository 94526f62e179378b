"""Class-weighted training loss of the segmentation trainer (median-frequency balancing, Eigen & Fergus 2015)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import error
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.segmentation.base import SegDataset
from trustvision.segmentation.train import build_network, class_weights, segmentation_loss, train_segmenter


def _data() -> SegDataset:
    """4 images of 8x8: class 0 on 40 pixels each, class 1 on 20, class 2 on 4, class 3 absent, 255 ignored."""
    masks = torch.zeros(4, 8, 8, dtype=torch.long)
    masks[:, :3, 4:] = 1                    # 12 pixels
    masks[:, 3, :] = 1                      # + 8 = 20
    masks[:, 7, :4] = 2                     # 4
    masks[:, 7, 4:] = 255                   # 4 ignored -> class 0: 64 - 20 - 4 - 4 = 36
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return SegDataset(x, masks, 4, ["a", "b", "c", "d"], 255, "toy")


def test_median_frequency_weights_match_the_formula():
    data = _data()
    f = torch.tensor([36.0, 20.0, 4.0]) / 60.0          # frequencies of the classes present, ignored pixels out
    median = 20.0 / 60.0                                 # torch.median of 3 values: the middle one
    expected = torch.tensor([median / f[0], median / f[1], median / f[2], 1.0])
    assert torch.allclose(class_weights(data, "median"), expected, rtol=1e-6)
    assert torch.allclose(class_weights(data, "sqrt-median"), expected.sqrt(), rtol=1e-6)
    assert class_weights(data, "none") is None
    assert "--class-weights" in error(lambda: class_weights(data, "inverse"))


def test_weighted_loss_is_the_weighted_pixel_mean():
    data = _data()
    logits = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    w = class_weights(data, "median")
    loss, per_round = segmentation_loss([logits, 2 * logits], data.masks, 255, w)
    keep = data.masks != 255
    for r, z in enumerate([logits, 2 * logits]):                      # written out per pixel
        ce = -torch.log_softmax(z, 1).gather(1, data.masks.clamp_max(3)[:, None])[:, 0][keep]
        wp = w[data.masks[keep]]
        assert per_round[r].item() == pytest.approx(float((wp * ce).sum() / wp.sum()), rel=1e-5)
    assert loss.item() == pytest.approx(per_round.mean().item(), rel=1e-6)


def test_training_with_weights_runs_records_and_refuses_to_resume_other_settings(tmp_path):
    data = _data()
    torch.manual_seed(0)
    res = train_segmenter(build_network("unet", 1, 4, depth=1, width=4), data, epochs=1, batch_size=2,
                          out=tmp_path, class_weighting="median")
    assert res.history[0]["loss"] > 0
    torch.manual_seed(0)
    msg = error(lambda: train_segmenter(build_network("unet", 1, 4, depth=1, width=4), data, epochs=2,
                                        batch_size=2, out=tmp_path, class_weighting="none"))
    assert "checkpoint.safetensors" in msg and "settings" in msg


def test_cli_bad_class_weights_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["segment", "train", "--data", "bundled:cells", "--class-weights", "inverse",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "--class-weights" in r.output and len([ln for ln in r.output.splitlines() if ln.strip()]) == 1
