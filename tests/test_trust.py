"""The user's model is never changed and user code never runs without consent (issue 11).

* every submodule runs in eval mode, each one's own mode restored (a BatchNorm child in train mode under an
  eval-mode parent must not update its running statistics);
* ``module.py:factory`` specs run only with ``trust_code`` (``--trust-code``), wherever the spec comes from:
  ``load_model``'s spec or ``arch``, and ``[uap] transfer`` in audit.toml (a config cannot grant trust);
* the model's code is fingerprinted (``Classifier.provenance``, in ``describe()``): an edited ``module.py``
  with the same weights is another model;
* a legacy pickled checkpoint is a one-line error naming ``--trust-pickle``, with no torch warning.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import error
from trustvision.auditor import AuditConfig
from trustvision.data.dataset import Dataset
from trustvision.evaluation.sections.uap import _load_transfer, uap_section
from trustvision.models.architectures import build_architecture
from trustvision.models.classifier import Classifier
from trustvision.models.loading import load_model
from trustvision.models.zoo.small import smallcnn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

FACTORY = """
import pathlib, torch
from trustvision.models.zoo.small import smallcnn
pathlib.Path(__file__).with_name("RAN").write_text("imported")   # proof that the file was executed

class Net(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        torch.manual_seed(0)
        self.body = smallcnn(num_classes=num_classes, channels=1, width=8)
    def forward(self, x):
        return SIGN self.body(x)

def make(num_classes=10):
    return Net(num_classes).eval()
"""


def _factory(folder: Path, sign: str = "") -> Path:
    p = folder / "mynet.py"
    p.write_text(FACTORY.replace("SIGN", sign))
    return p


# ------------------------------------------------------------------ 1. eval mode for every submodule
def test_eval_mode_reaches_train_mode_children_of_an_eval_parent():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net.eval()(x)                        # the all-eval model
    net[1].train()                                      # a parent in eval mode, BatchNorm and Dropout in train mode
    net[2].train()
    modes = [m.training for m in net.modules()]
    stats = [net[1].running_mean.clone(), net[1].running_var.clone(), net[1].num_batches_tracked.clone()]
    clf = Classifier(net, num_classes=5, channels=3)
    with torch.no_grad():
        outs = [clf(x) for _ in range(3)]
    for out in outs:                                    # train-mode BN would normalise by batch stats: far off
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    for before, after in zip(stats, [net[1].running_mean, net[1].running_var, net[1].num_batches_tracked]):
        assert torch.equal(before, after)
    assert [m.training for m in net.modules()] == modes == [False, False, True, True, False, False]


def test_eval_mode_restores_modes_after_an_error():
    net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    net.eval()
    net[1].train()
    clf = Classifier(net, num_classes=5, channels=1)
    with pytest.raises(Exception):
        clf(torch.rand(2, 1, 2, 2))                     # 3 logits for a 5-class classifier
    assert [m.training for m in net.modules()] == [False, False, True]


# ------------------------------------------------------------------ 2. code runs only with consent
def test_py_spec_is_refused_without_trust_code_and_never_imported(tmp_path):
    f = _factory(tmp_path)
    msg = error(lambda: load_model(f"{f}:make"))
    assert str(f) in msg and "--trust-code" in msg
    w = tmp_path / "w.safetensors"
    save_file(smallcnn(num_classes=10, channels=1, width=8).state_dict(), str(w))
    msg = error(lambda: load_model(str(w), arch=f"{f}:make"))          # as the architecture of a weights file
    assert str(f) in msg and "--trust-code" in msg
    msg = error(lambda: build_architecture(f"{f}:make", 10, 1, None, None))
    assert "--trust-code" in msg
    assert not (tmp_path / "RAN").exists()
    clf = load_model(f"{f}:make", trust_code=True)
    assert clf.num_classes == 10 and (tmp_path / "RAN").exists()


def test_config_cannot_make_a_uap_transfer_model_run_its_file(tmp_path, mnist_clf):
    f = _factory(tmp_path)
    toml = tmp_path / "audit.toml"
    toml.write_text(f'sections = ["clean", "uap"]\n[uap]\ntransfer = ["{f}:make"]\nn_source = 8\nmax_passes = 1\n')
    cfg = AuditConfig.from_toml(toml)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = Dataset(x, torch.arange(4), ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    msg = error(lambda: uap_section(mnist_clf, data, mnist_clf.predict(x), cfg.uap))
    assert str(f) in msg and "--trust-code" in msg and "[uap] transfer" in msg
    refused = error(lambda: uap_section(mnist_clf, data, mnist_clf.predict(x), cfg.uap, trust_code=False))
    assert "--trust-code" in refused
    assert not (tmp_path / "RAN").exists()
    trusted = _load_transfer(f"{f}:make", mnist_clf, trust_code=True)  # the caller's explicit consent works
    assert trusted.num_classes == 10 and (tmp_path / "RAN").exists()
    toml.write_text(f'[uap]\ntransfer = ["{f}:make"]\ntrust_code = true\n')
    assert "trust_code" in error(lambda: AuditConfig.from_toml(toml))   # and cannot be granted by a key


# ------------------------------------------------------------------ 3. the model's code is fingerprinted
def test_edited_factory_with_the_same_weights_is_another_model(tmp_path):
    f = _factory(tmp_path)
    a = load_model(f"{f}:make", trust_code=True)
    again = load_model(f"{f}:make", trust_code=True)
    _factory(tmp_path, sign="-")                        # forward negated, same weights
    b = load_model(f"{f}:make", trust_code=True)
    x = torch.rand(2, 1, 28, 28)
    assert a.weights_hash() == b.weights_hash() and torch.allclose(a.predict(x), -b.predict(x))
    assert a.code_fingerprint() == again.code_fingerprint() and a.describe() == again.describe()
    assert a.code_fingerprint() != b.code_fingerprint() and a.describe() != b.describe()
    assert a.provenance["code_sha256"] != b.provenance["code_sha256"]
    assert a.provenance["code_file"] == "mynet.py" and "mynet.py.Net" in a.provenance["classes"]


def test_provenance_per_kind_of_spec(tmp_path):
    ts = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(smallcnn(num_classes=10, channels=1, width=8).eval()), str(ts))
    import hashlib
    p = load_model(str(ts)).provenance
    assert p["format"] == "torchscript" and p["model_sha256"] == hashlib.sha256(ts.read_bytes()).hexdigest()
    p = load_model("trustvision:smallcnn", num_classes=10, channels=1).provenance
    assert p["arch"] == "trustvision:smallcnn" and p["versions"]["torch"] == torch.__version__
    import torchvision  # noqa: F401  (a core dependency: never skipped)
    p = load_model("torchvision:resnet18", num_classes=10).provenance
    assert p["arch"] == "torchvision:resnet18" and p["versions"].get("torchvision")


class _Plus(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3] + 1


class _Minus(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3] - 1


def test_in_memory_module_provenance_hashes_its_class_source():
    a = Classifier(_Plus(), num_classes=3, channels=1).provenance
    b = Classifier(_Minus(), num_classes=3, channels=1).provenance
    assert a["class"].endswith("_Plus") and a["classes"][a["class"]] is not None
    assert a["classes"][a["class"]] != b["classes"][b["class"]]


@pytest.mark.slow
def test_code_fingerprint_is_stable_across_processes(tmp_path):
    f = _factory(tmp_path)
    here = load_model(f"{f}:make", trust_code=True).code_fingerprint()
    code = (f"from trustvision.models.loading import load_model\n"
            f"print(load_model({str(f)!r} + ':make', trust_code=True).code_fingerprint())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == here


# ------------------------------------------------------------------ 4. legacy pickles
@pytest.mark.parametrize("zipped", [False, True])
def test_legacy_checkpoint_names_trust_pickle_without_torch_warnings(tmp_path, zipped):
    torch.manual_seed(0)
    net = smallcnn(num_classes=10, channels=1, width=8).eval()
    f = tmp_path / "old.pth"
    torch.save(net.state_dict(), f, pickle_protocol=4, _use_new_zipfile_serialization=zipped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = error(lambda: load_model(str(f), arch="trustvision:smallcnn"))
        clf = load_model(str(f), arch="trustvision:smallcnn", trust_pickle=True)
    assert str(f) in msg and "--trust-pickle" in msg and "runs any code" in msg
    assert not [w for w in caught if "torch" in str(w.filename) or "pickle" in str(w.message)], \
        [str(w.message) for w in caught]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net(x), rtol=0, atol=1e-6)
