"""Model specs -> Classifier: every spec kind round-trips exactly; bad input gets one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import error
from trustvision.models.loading import check_logits, load_model
from trustvision.models.classifier import Classifier
from trustvision.models.zoo.small import mlp, smallcnn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return smallcnn(num_classes=10, channels=1, width=8).eval()


@pytest.fixture
def tiny() -> nn.Module:
    """A 10-class, 1-channel smallcnn of width 8 in eval mode."""
    return _tiny()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def same_logits(clf: Classifier, module: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        ref = module(x)
        got = clf(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


FACTORY = """
import torch
from trustvision.models.zoo.small import smallcnn

def make(num_classes=10):
    torch.manual_seed(0)
    return smallcnn(num_classes=num_classes, channels=1, width=8).eval()

def not_a_module():
    return 42

class NaNNet(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 3), float("nan"))

def nan_model():
    return NaNNet()

class Fixed64(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 64 * 64, 5)
    def forward(self, x):
        return self.fc(x.flatten(1))

def fixed64():
    return Fixed64()
"""


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    p = tmp_path / "mynet.py"
    p.write_text(FACTORY)
    return p


# ------------------------------------------------------------------ round trips
def test_safetensors_state_dict_infers_classes_and_channels(tiny, x, tmp_path):
    f = tmp_path / "m.safetensors"
    save_file(tiny.state_dict(), str(f))
    clf = load_model(str(f), arch="trustvision:smallcnn")
    assert (clf.num_classes, clf.channels) == (10, 1)
    same_logits(clf, tiny, x)


def test_pt_state_dict_with_bare_arch_name(tiny, x, tmp_path):
    f = tmp_path / "m.pt"
    torch.save(tiny.state_dict(), f)
    same_logits(load_model(str(f), arch="smallcnn", num_classes=10), tiny, x)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_ddp_prefixed_and_wrapped_checkpoints(tiny, x, tmp_path, wrap):
    f = tmp_path / "ddp.pth"
    torch.save({wrap: {"module." + k: v for k, v in tiny.state_dict().items()}, "epoch": 3}, f)
    same_logits(load_model(str(f), arch="trustvision:smallcnn"), tiny, x)


def test_weights_for_an_architecture_spec(tiny, x, tmp_path):
    f = tmp_path / "w.bin"
    torch.save(tiny.state_dict(), f)
    same_logits(load_model("trustvision:smallcnn", weights=str(f)), tiny, x)


def test_zoo_mlp_input_size_from_weights(tmp_path):
    torch.manual_seed(0)
    m = mlp(num_classes=4, channels=1, size=16, hidden=32).eval()
    f = tmp_path / "mlp.safetensors"
    save_file(m.state_dict(), str(f))
    clf = load_model(str(f), arch="trustvision:mlp")
    assert (clf.num_classes, clf.channels, clf.input_size) == (4, 1, (16, 16))
    xs = torch.rand(2, 1, 16, 16)
    same_logits(clf, m, xs)
    assert clf(torch.rand(2, 1, 28, 28)).shape == (2, 4)      # resized inside the wrapper


def test_pickled_full_model_needs_trust(tiny, x, tmp_path):
    f = tmp_path / "full.pt"
    torch.save(tiny, f)
    msg = error(lambda: load_model(str(f)))
    assert "--trust-pickle" in msg and str(f) in msg
    clf = load_model(str(f), trust_pickle=True)
    assert (clf.num_classes, clf.channels) == (10, 1)
    same_logits(clf, tiny, x)


@pytest.mark.parametrize("suffix", [".ts", ".pt"])
def test_torchscript(tiny, x, tmp_path, suffix):
    f = tmp_path / f"scripted{suffix}"
    torch.jit.save(torch.jit.script(tiny), str(f))
    clf = load_model(str(f))        # a .pt TorchScript archive is recognised, no --trust-pickle needed
    assert (clf.num_classes, clf.channels) == (10, 1)
    same_logits(clf, tiny, x)


def test_module_factory(x, factory_file, tmp_path):
    clf = load_model(f"{factory_file}:make", trust_code=True)
    assert clf.num_classes == 10
    same_logits(clf, _tiny(), x)
    # the factory as the architecture of a weights file, num_classes passed through
    torch.manual_seed(5)
    other = smallcnn(num_classes=7, channels=1, width=8).eval()
    f = tmp_path / "seven.safetensors"
    save_file(other.state_dict(), str(f))
    clf = load_model(str(f), arch=f"{factory_file}:make", trust_code=True)
    assert clf.num_classes == 7
    same_logits(clf, other, x)


def test_factory_input_size(factory_file):
    msg = error(lambda: load_model(f"{factory_file}:fixed64", trust_code=True))
    assert "--input-size" in msg
    clf = load_model(f"{factory_file}:fixed64", input_size=(64, 64), channels=3, trust_code=True)
    assert clf.num_classes == 5 and clf(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_torchvision_resnet18_state_dict(tmp_path):
    import torchvision                      # a core dependency: never skipped
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    f = tmp_path / "r18.safetensors"
    save_file(net.state_dict(), str(f))
    xs = torch.rand(2, 3, 32, 32)
    clf = load_model("torchvision:resnet18", weights=str(f), num_classes=10)
    assert clf.mean is None and clf.std is None        # no normalisation guessed
    same_logits(clf, net, xs)
    clf = load_model(str(f), arch="torchvision:resnet18")   # classes inferred from fc.weight
    assert (clf.num_classes, clf.channels) == (10, 3)
    same_logits(clf, net, xs)


def test_timm(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=6).eval()
    f = tmp_path / "t.safetensors"
    save_file(net.state_dict(), str(f))
    clf = load_model(str(f), arch="timm:resnet10t")
    assert clf.num_classes == 6
    same_logits(clf, net, torch.rand(2, 3, 32, 32))


def test_timm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert "pip install timm" in error(lambda: load_model("timm:resnet18"))


def test_onnx(tiny, x, tmp_path):
    pytest.importorskip("onnx2torch")
    f = tmp_path / "m.onnx"
    torch.onnx.export(tiny, (x,), str(f), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    clf = load_model(str(f))
    assert clf.num_classes == 10
    xg = x.clone().requires_grad_(True)
    clf(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with torch.inference_mode():
        torch.testing.assert_close(clf(x), tiny(x), rtol=1e-4, atol=1e-5)


def test_onnx_without_onnx2torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\x08\x07")
    msg = error(lambda: load_model(str(f)))
    assert "pip install onnx2torch" in msg and str(f) in msg


def test_loader_options_reach_the_classifier(tiny, tmp_path):
    f = tmp_path / "m.safetensors"
    save_file(tiny.state_dict(), str(f))
    clf = load_model(str(f), arch="smallcnn", labels=list("abcdefghij"), mean=[0.5], std=[0.25],
                     input_size=(20, 20))
    assert clf.labels[0] == "a" and clf.num_classes == 10 and clf.input_size == (20, 20)
    assert clf.std is not None and clf.name == "m.safetensors"


# ------------------------------------------------------------------ bad input
def test_missing_files():
    assert "nope.pt" in error(lambda: load_model("nope.pt"))
    assert "nope.safetensors" in error(lambda: load_model("nope.safetensors", arch="smallcnn"))
    assert "w.pt" in error(lambda: load_model("torchvision:resnet18", weights="w.pt"))


@pytest.mark.parametrize("name", ["bad.safetensors", "bad.pt", "bad.pth", "bad.onnx", "bad.ts", "empty.pt"])
def test_corrupt_files(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"" if name.startswith("empty") else torch.randint(0, 256, (4096,),
                  generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    assert str(f) in error(lambda: load_model(str(f)))
    if f.suffix in (".safetensors", ".pt"):
        assert str(f) in error(lambda: load_model(str(f), arch="smallcnn"))


def test_wrong_keys(tiny, tmp_path):
    f = tmp_path / "mlp.safetensors"
    save_file(mlp(10, 1).state_dict(), str(f))
    msg = error(lambda: load_model(str(f), arch="trustvision:smallcnn", num_classes=10))
    assert str(f) in msg and "missing keys" in msg and "0.weight" in msg


def test_wrong_num_classes(tiny, tmp_path):
    f = tmp_path / "ten.pt"
    torch.save(tiny.state_dict(), f)
    msg = error(lambda: load_model(str(f), arch="smallcnn", num_classes=7))
    assert str(f) in msg and "shape" in msg and "--num-classes" in msg


def test_state_dict_without_arch(tiny, tmp_path):
    for name in ("sd.pt", "sd.safetensors"):
        f = tmp_path / name
        torch.save(tiny.state_dict(), f) if name.endswith(".pt") else save_file(tiny.state_dict(), str(f))
        msg = error(lambda: load_model(str(f)))
        assert str(f) in msg and "--arch" in msg


def test_bad_specs_and_arguments(tiny, tmp_path, factory_file):
    assert "foo:bar" in error(lambda: load_model("foo:bar"))
    assert "resnet999" in error(lambda: load_model("torchvision:resnet999"))
    assert "nonet" in error(lambda: load_model("trustvision:nonet"))
    assert "missing_fn" in error(lambda: load_model(f"{factory_file}:missing_fn", trust_code=True))
    assert "nn.Module" in error(lambda: load_model(f"{factory_file}:not_a_module", trust_code=True))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom\\nsecond line')\n")
    assert "broken.py" in error(lambda: load_model(f"{broken}:make", trust_code=True))
    f = tmp_path / "m.xyz"
    f.write_bytes(b"abc")
    assert "m.xyz" in error(lambda: load_model(str(f)))
    assert "--channels" in error(lambda: load_model("torchvision:resnet18", channels=1, num_classes=10))
    assert "--num-classes" in error(lambda: load_model("trustvision:smallcnn", num_classes=1))
    assert "--device" in error(lambda: load_model("trustvision:smallcnn", device="nonsense"))
    ts = tmp_path / "s.ts"
    torch.jit.save(torch.jit.script(tiny), str(ts))
    assert "TorchScript" in error(lambda: load_model(str(ts), arch="smallcnn"))


def test_nan_model_on_load(factory_file):
    assert "NaN" in error(lambda: load_model(f"{factory_file}:nan_model", channels=1, trust_code=True))


def test_check_logits():
    class HalfNaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.flatten(1)[:, :3].clone()
            out[1::2] = float("nan")
            return out

    clf = Classifier(HalfNaN(), num_classes=3, channels=1, name="halfnan")
    msg = error(lambda: check_logits(clf, torch.rand(6, 1, 8, 8)))
    assert "halfnan" in msg and "3 of 6" in msg and "index 1" in msg
    check_logits(clf, torch.rand(1, 1, 8, 8))           # the finite row passes
