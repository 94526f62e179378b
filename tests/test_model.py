"""The Classifier contract: [0,1] pixels in, fp32 logits out, eval mode, caller's module untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import trustvision as tv
from trustvision.errors import TrustVisionError
from trustvision.evaluation import clean_section
from trustvision.models.classifier import Classifier


def _bn_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(5))


def test_eval_mode_is_used_and_caller_mode_restored():
    net = _bn_net()
    net(torch.rand(2, 3, 8, 8))                     # materialise the lazy layer
    net.train()
    stats = copy.deepcopy(net[1].running_mean)
    clf = Classifier(net, num_classes=5, channels=3)
    x = torch.rand(4, 3, 8, 8)
    a, b = clf(x), clf(x)
    assert torch.equal(a, b)                        # dropout off, BN uses running stats
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net[1].running_mean, stats)  # BN statistics untouched


def test_normalisation_and_resize_live_in_the_wrapper():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    clf = Classifier(net, num_classes=3, channels=3, input_size=(4, 4), mean=[0.5, 0.5, 0.5], std=[0.25] * 3)
    x = torch.rand(2, 3, 8, 8)
    expected = net((torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear") - 0.5) / 0.25)
    assert torch.allclose(clf(x), expected, atol=1e-6)


def test_device_move_and_channels_last_copy_the_module(mnist_setup, mnist_batch):
    module = mnist_setup[0]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    clf = Classifier(module, num_classes=10, channels=1, channels_last=True)
    assert clf.module is not module
    x, _ = mnist_batch
    ref = Classifier(module, num_classes=10, channels=1)
    assert torch.allclose(clf.predict(x), ref.predict(x), atol=1e-4)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_bf16_precision_agrees_with_fp32_on_predictions(mnist_clf, mnist_batch):
    x, _ = mnist_batch
    bf = Classifier(mnist_clf.module, num_classes=10, channels=1, precision="bf16")
    out = bf.predict(x)
    assert out.dtype == torch.float32
    assert (out.argmax(1) == mnist_clf.predict(x).argmax(1)).float().mean() > 0.95


def test_wrong_inputs_and_options_are_one_line_errors():
    clf = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), num_classes=3, channels=1)
    with pytest.raises(TrustVisionError, match="takes 1 channels"):
        clf(torch.rand(2, 3, 4, 4))
    with pytest.raises(TrustVisionError, match="NCHW"):
        clf(torch.rand(2, 4, 4))
    with pytest.raises(TrustVisionError, match="expected \\(N, 5\\)"):
        Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), num_classes=5, channels=1)(torch.rand(2, 1, 4, 4))
    with pytest.raises(TrustVisionError, match="precision"):
        Classifier(nn.Identity(), num_classes=3, precision="fp8")
    with pytest.raises(TrustVisionError, match="--mean has 2 values"):
        Classifier(nn.Identity(), num_classes=3, channels=3, mean=[0.1, 0.2])


def test_nan_logits_stop_the_audit_with_the_culprit(mnist_test):
    class NaNNet(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[3] = float("nan")
            return out
    clf = Classifier(NaNNet(), num_classes=10, channels=1, name="nanny")
    with pytest.raises(TrustVisionError, match="nanny.*NaN/Inf logits for 1 of 8 images \\(first: index 3\\)"):
        clean_section(clf, mnist_test.subset(list(range(8))))


def test_python_api_surface(mnist_clf, mnist_batch, tmp_path):
    x, y = mnist_batch
    res = tv.attacks.PGD(eps=0.2, steps=10)(mnist_clf, x[:16], y[:16])
    assert res.success.float().mean() > 0.5 and float(res.norms.max()) <= 0.2
    cfg = tv.AuditConfig(sections=["clean"], n_images=32)
    out = tv.audit(mnist_clf, tv.load_dataset("mnist"), cfg, out_dir=tmp_path)
    assert out["summary"]["clean_accuracy"] > 0.8 and (tmp_path / "report.html").exists()
