"""Explain: CAMs against pytorch-grad-cam and the paper formula, faithfulness, clustering, section, CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from trustvision.models import zoo
from trustvision.auditor import SECTIONS, AuditConfig, audit
from trustvision.cli.app import app
from trustvision.data.dataset import Dataset
from trustvision.errors import TrustVisionError
from trustvision.evaluation.sections.explain import ExplainConfig, top_region_iou
from trustvision.explain import (CAM, cluster_maps, compute_cams, deletion_insertion, find_layer,
                                 group_test, random_saliency, read_groups)
from trustvision.models.classifier import Classifier
from trustvision.training import train_classifier


def _corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer", [None, "4"])
def test_cams_match_pytorch_grad_cam(mnist_clf, mnist_batch, method, layer):
    import pytorch_grad_cam as cams       # a declared test dependency: missing means failing, not skipping
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    x, y = mnist_batch
    ours = CAM(method, layer)(mnist_clf, x, y)
    peer_cls = {"gradcam": cams.GradCAM, "gradcam++": cams.GradCAMPlusPlus}[method]
    peer_model = copy.deepcopy(mnist_clf.module)         # the peer's backward fills .grad: keep ours clean
    name, module = find_layer(peer_model, layer)
    with peer_cls(model=peer_model, target_layers=[module]) as peer:
        theirs = peer(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y])
    assert ours.maps.shape == theirs.shape == (len(x), 28, 28)
    assert float(ours.maps.min()) >= 0 and float(ours.maps.max()) <= 1
    corr = _corr_rows(ours.maps.numpy(), theirs)
    assert corr.min() > 0.999, (name, corr.min())


def _paper_gradcampp(clf: Classifier, x: torch.Tensor, y: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """Chattopadhay et al. (2018), eq. 19, one image and one channel at a time."""
    out = []
    for i in range(len(x)):
        store = {}
        h = layer.register_forward_hook(lambda m, a, o: store.__setitem__("A", o))
        try:
            score = clf.module(x[i:i + 1])[0, int(y[i])]
            (g,) = torch.autograd.grad(score, store["A"])
        finally:
            h.remove()
        A, g = store["A"][0].detach().double(), g[0].double()
        cam = torch.zeros(A.shape[1:], dtype=torch.float64)
        for k in range(A.shape[0]):
            num = g[k] ** 2
            den = 2 * g[k] ** 2 + A[k].sum() * g[k] ** 3
            alpha = torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)
            cam += (alpha * torch.relu(g[k])).sum() * A[k]
        cam = F.interpolate(torch.relu(cam)[None, None].float(), size=x.shape[-2:], mode="bilinear",
                            align_corners=False)[0, 0]
        out.append((cam - cam.min()) / (cam.max() - cam.min()))
    return torch.stack(out)


def test_gradcampp_matches_paper_formula(mnist_clf, mnist_batch):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    _, layer = find_layer(mnist_clf.module)
    ref = _paper_gradcampp(mnist_clf, x, y, layer)
    ours = CAM("gradcam++")(mnist_clf, x, y).maps
    assert torch.allclose(ours, ref, atol=1e-4), float((ours - ref).abs().max())


def test_model_unchanged_hooks_removed_no_grads(mnist_clf, mnist_batch):
    x, _ = mnist_batch
    before = mnist_clf.weights_hash()
    for p in mnist_clf.module.parameters():
        p.grad = None
    mnist_clf.module.train()
    try:
        for method in ("gradcam", "gradcam++", "layercam", "hirescam"):
            res = CAM(method)(mnist_clf, x[:16])
            assert res.maps.shape == (16, 28, 28) and torch.isfinite(res.maps).all()
        assert mnist_clf.module.training                       # caller's mode restored
    finally:
        mnist_clf.module.eval()
    assert mnist_clf.weights_hash() == before
    assert all(not m._forward_hooks and not m._backward_hooks for m in mnist_clf.module.modules())
    assert all(p.grad is None for p in mnist_clf.module.parameters())


def test_layer_choice_and_errors(mnist_clf, mnist_batch):
    assert find_layer(mnist_clf.module)[0] == "7"             # the ReLU after the last conv
    with pytest.raises(TrustVisionError, match="'nope' not found"):
        CAM("gradcam", "nope")(mnist_clf, mnist_batch[0][:2])
    with pytest.raises(TrustVisionError, match="unknown CAM method"):
        CAM("gradcam+++")
    with pytest.raises(TrustVisionError, match="no nn.Conv2d"):
        find_layer(zoo.mlp())
    with pytest.raises(TrustVisionError, match="targets"):
        CAM()(mnist_clf, mnist_batch[0][:2], torch.tensor([0, 10]))


def test_deletion_auc_beats_random(mnist_clf, mnist_batch):
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    cams = compute_cams(mnist_clf, x, y, method="gradcam++")
    ours = deletion_insertion(mnist_clf, x, cams.maps, y, steps=14)
    rnd = deletion_insertion(mnist_clf, x, random_saliency(cams.maps.shape, seed=0), y, steps=14)
    assert ours.deletion.shape == (32, 15) and torch.allclose(ours.deletion[:, -1], rnd.deletion[:, -1])
    assert ours.summary()["deletion_auc"] < rnd.summary()["deletion_auc"] - 0.1
    assert ours.summary()["insertion_auc"] > rnd.summary()["insertion_auc"]


def _corner_data(n: int = 400, seed: int = 0) -> Dataset:
    """Noise images; class 0 has a bright mark top-left, class 1 bottom-right (and a decoy elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % 2
    x[y == 0, :, 1:5, 1:5] = 1.0
    x[y == 1, :, 11:15, 11:15] = 1.0
    return Dataset(x, y, ["top-left", "bottom-right"], "corners")


def test_clustering_recovers_planted_groups():
    from sklearn.metrics import adjusted_rand_score
    data = _corner_data()
    torch.manual_seed(0)
    module = train_classifier(zoo.smallcnn(2, 1, width=8), data, epochs=2, lr=5e-3)
    clf = Classifier(module, num_classes=2, channels=1)
    assert float((clf.predict(data.x).argmax(1) == data.y).float().mean()) > 0.95
    cams = compute_cams(clf, data.x[:200], data.y[:200], method="gradcam++")
    cl = cluster_maps(cams.maps, None, k_range=(2, 5), seed=0)
    assert cl.k == 2 and adjusted_rand_score(data.y[:200].numpy(), cl.labels) > 0.9
    assert cl.centers.shape == (2, 16, 16) and sorted(len(m) for m in cl.members) == sorted(cl.sizes.tolist())
    test = group_test(cl.labels, [data.labels[int(t)] for t in data.y[:200]], cl.k)
    assert test.p_value < 1e-10 and test.cramers_v > 0.9


def test_group_test_and_iou_basics():
    labels = np.array([0, 0, 1, 1, 0, 1])
    t = group_test(labels, ["a", "a", "b", "b", "a", "b"], 2)
    assert t.table.tolist() == [[3, 0], [0, 3]] and t.dof == 1
    assert group_test(labels, ["a"] * 6, 2).p_value is None
    m = torch.rand(3, 8, 8)
    assert torch.allclose(top_region_iou(m, m), torch.ones(3))
    assert float(top_region_iou(m, -m).max()) == 0.0


def test_read_groups(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("image,group\n0,sport\nb/x.png,art\n")
    assert read_groups(f, 3, ["/d/a/y.png", "/d/b/x.png", "/d/a/z.png"]) == ["sport", "art", "(none)"]
    f.write_text("0,sport,extra\n")
    with pytest.raises(TrustVisionError, match=r"g.csv: row 1: expected 2 columns"):
        read_groups(f, 3)
    f.write_text("0,a\n7,b\n")
    with pytest.raises(TrustVisionError, match=r"g.csv: row 2: image '7' is not in the dataset"):
        read_groups(f, 3)
    with pytest.raises(TrustVisionError, match="missing.csv"):
        read_groups(tmp_path / "missing.csv", 3)


@pytest.mark.slow
def test_explain_section_is_opt_in_and_writes_figures(mnist_clf, mnist_test, tmp_path):
    assert "explain" in SECTIONS and "explain" not in AuditConfig().sections
    data = mnist_test.subset(list(range(48)))
    groups = ["low" if int(v) < 5 else "high" for v in data.y]
    cfg = AuditConfig(sections=["clean", "explain"], n_images=None,
                      explain=ExplainConfig(clusters=3, faithfulness_images=16, steps=6, attack_images=8,
                                            attack_options={"eps": 0.2, "steps": 5}, groups=groups))
    before = mnist_clf.weights_hash()
    res = audit(mnist_clf, data, cfg, tmp_path)
    sec = res["sections"]["explain"]
    assert sec["metrics"]["clusters"] == 3 and sec["metrics"]["group_cluster_p_value"] is not None
    assert sec["metrics"]["attention_shift"]["images"] == 8
    for fig in sec["figures"]:
        assert (tmp_path / fig["path"]).is_file()
    assert (tmp_path / "explain_maps.npz").is_file() and mnist_clf.weights_hash() == before
    with pytest.raises(TrustVisionError, match="explain groups"):
        audit(mnist_clf, data, AuditConfig(sections=["explain"], n_images=None,
                                           explain=ExplainConfig(groups=["a"], attack=None)), tmp_path / "b")


@pytest.mark.slow
def test_cli_explain(mnist_setup, tmp_path):
    from safetensors.torch import save_file
    w = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(w))
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\n" + "".join(f"{i},{'a' if i % 2 else 'b'}\n" for i in range(5000)))
    common = ["explain", "--model", str(w), "--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1",
              "--data", "mnist", "--n", "40", "--steps", "4", "--attack", "none"]
    r = CliRunner().invoke(app, [*common, "--groups", str(groups), "--clusters", "auto", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    sec = json.loads((tmp_path / "o" / "results.json").read_text())["sections"]["explain"]
    assert sum(sum(row[1:]) for row in sec["tables"][2]["rows"]) == 40        # group x cluster covers all images
    r = CliRunner().invoke(app, [*common, "--layer", "no.such", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "no.such" in r.output


# ------------------------------------------------------------------ callable targets (explain/targets.py)
def _peer_maps(clf, x, targets, layer, method="gradcam"):
    import pytorch_grad_cam as cams
    peer_model = copy.deepcopy(clf.module)
    _, module = find_layer(peer_model, layer)
    cls = {"gradcam": cams.GradCAM, "gradcam++": cams.GradCAMPlusPlus}[method]
    with cls(model=peer_model, target_layers=[module]) as peer:
        return peer(input_tensor=x, targets=targets)


@pytest.mark.slow
def test_callable_targets_match_pytorch_grad_cam(mnist_clf, mnist_batch):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PeerTarget
    from trustvision.explain import ClassifierOutputTarget, MarginTarget
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    # class output: our object (batched) and the peer's object (per image) against the peer
    ref = _peer_maps(mnist_clf, x, [PeerTarget(int(t)) for t in y], None)
    ours = CAM("gradcam")(mnist_clf, x, ClassifierOutputTarget(y)).maps.numpy()
    theirs_in_ours = CAM("gradcam")(mnist_clf, x, [PeerTarget(int(t)) for t in y]).maps.numpy()
    assert _corr_rows(ours, ref).min() > 0.999 and _corr_rows(theirs_in_ours, ref).min() > 0.999

    # margin: the peer with a hand-written per-image margin function
    def peer_margin(c):
        return lambda o: o[c] - torch.cat([o[:c], o[c + 1:]]).max()
    wrong = (y + 3) % 10                                # a class that is not the prediction: negative margins
    for cls_ in (y, wrong):
        ref = _peer_maps(mnist_clf, x, [peer_margin(int(c)) for c in cls_], None)
        ours = CAM("gradcam")(mnist_clf, x, MarginTarget(cls_)).maps.numpy()
        keep = ref.reshape(len(ref), -1).std(1) > 1e-6    # both map to 0 where the ReLU kills everything
        assert _corr_rows(ours[keep], ref[keep]).min() > 0.999
    # per-image target objects are stacked into one batched target: same maps
    listed = CAM("gradcam")(mnist_clf, x, [MarginTarget(int(c)) for c in y]).maps
    assert torch.allclose(listed, CAM("gradcam")(mnist_clf, x, MarginTarget(y)).maps, atol=1e-6)


def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    keep = ref.reshape(len(ref), -1).std(1) > 1e-6          # both all-zero where the ReLU kills everything
    assert keep.sum() >= len(ref) // 2
    return float(_corr_rows(ours[keep], ref[keep]).min())


def test_regression_and_adversarial_targets_match_peer(mnist_clf, mnist_batch):
    from trustvision.explain import AdversarialTarget, RegressionTarget
    clf = mnist_clf                                      # its 10 outputs read as 10 regression outputs
    x, y = mnist_batch[0][:12], mnist_batch[1][:12]
    for method in ("gradcam", "gradcam++"):
        ref = _peer_maps(clf, x, [lambda o: o[3]] * len(x), None, method)     # the peer's regression target
        res = CAM(method)(clf, x, RegressionTarget(3))
        assert (res.target == -1).all()
        assert _close(res.maps.numpy(), ref) > 0.999
    fn = RegressionTarget(fn=lambda o: o[..., 0] - 2 * o[..., 1])
    ref = _peer_maps(clf, x, [lambda o: o[0] - 2 * o[1]] * len(x), None)
    assert _close(CAM("gradcam")(clf, x, fn).maps.numpy(), ref) > 0.999
    adv_class = (y + 1) % 10
    adv = CAM("gradcam")(clf, x, AdversarialTarget(adv_class, source=y))
    assert torch.equal(adv.target, adv_class)
    ref = _peer_maps(clf, x, [(lambda a, b: (lambda o: o[a] - o[b]))(int(a), int(b)) for a, b in zip(adv_class, y)],
                     None)
    assert _close(adv.maps.numpy(), ref) > 0.999
    with pytest.raises(TrustVisionError, match="regression output"):
        CAM()(clf, x, RegressionTarget(10))
    with pytest.raises(TrustVisionError, match="3 targets for 12 images"):
        CAM()(clf, x, [RegressionTarget(0)] * 3)


def test_gradcampp_guard_and_negative_activation_fraction(mnist_clf, mnist_batch):
    from trustvision.explain.cam import METHODS, PP_GUARD
    # hand case: channel sum S = -2, so 2 + S g = 0 at g = 1 (guarded), = 1 at g = 0.5 (alpha = 1)
    acts = torch.zeros(1, 1, 1, 4)
    acts[0, 0, 0] = torch.tensor([-1.0, -1.0, 0.5, -0.5])          # S = -2
    grads = torch.tensor([1.0, 0.5, 1.0 + PP_GUARD / 4, -1.0]).view(1, 1, 1, 4)
    w = METHODS.get("gradcam++")(acts, grads) / acts                # channel weight, broadcast
    # alpha: 0 (|d| = 0 < guard), 1/(2 - 1) = 1, 0 (|d| = guard/2 < guard), relu(g) = 0
    expected = 0.0 + 1.0 * 0.5 + 0.0 + 0.0
    assert torch.isfinite(w).all() and float(w[0, 0, 0, 0]) == pytest.approx(expected)
    # post-ReLU layer: no negatives, guard inactive (exact paper formula: see test_gradcampp_matches_paper_formula)
    x = mnist_batch[0][:8]
    assert float(CAM("gradcam++")(mnist_clf, x).negative_fraction.max()) == 0.0
    pre = CAM("gradcam++", "6")(mnist_clf, x)                         # the conv before its ReLU
    assert float(pre.negative_fraction.min()) > 0.05 and torch.isfinite(pre.maps).all()


# ------------------------------------------------------------------ target specs (explain --target)
def test_target_specs_parse_build_and_refuse():
    from trustvision.explain import (AdversarialTarget, MarginTarget, RegressionTarget, build_target,
                                     parse_target)
    kinds = {s: parse_target(s).kind for s in ("pred", "predicted", "label", "TRUE", "class:3", "margin",
                                                  "margin:label", "score:1", "adv")}
    assert kinds == {"pred": "pred", "predicted": "pred", "label": "label", "TRUE": "label", "class:3": "class",
                     "margin": "margin", "margin:label": "margin", "score:1": "score", "adv": "adv"}
    assert parse_target("margin:label").of == "label" and parse_target("score:1").index == 1
    pred, label, adv = torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]), torch.tensor([4, 2, 5])
    kw = dict(pred=pred, label=label, num_outputs=6)
    assert torch.equal(build_target(parse_target("pred"), **kw), pred)
    assert torch.equal(build_target(parse_target("label"), **kw), label)
    assert torch.equal(build_target(parse_target("class:5"), **kw), torch.full((3,), 5))
    assert build_target(parse_target("margin:label"), **kw) == [MarginTarget(1), MarginTarget(0), MarginTarget(3)]
    assert build_target(parse_target("score:2"), **kw) == RegressionTarget(2)
    assert build_target(parse_target("adv"), **kw, adv=adv) == [AdversarialTarget(c) for c in (4, 2, 5)]
    for bad, msg in [("class", "class:K needs"), ("class:x", "class:K needs"), ("score:-1", "score:K needs"),
                     ("logit", "unknown CAM target; choose from pred"), ("margin:adv", "unknown CAM target")]:
        with pytest.raises(TrustVisionError, match=msg):
            parse_target(bad)
    with pytest.raises(TrustVisionError, match="class:6: the model has 6 outputs"):
        build_target(parse_target("class:6"), **kw)
    with pytest.raises(TrustVisionError, match="adv: needs"):
        build_target(parse_target("adv"), **kw)
    with pytest.raises(TrustVisionError, match="needs an attack"):
        ExplainConfig(target="adv", attack=None)


@pytest.mark.slow
def test_section_targets_match_cams_of_the_target_objects(mnist_clf, mnist_test, tmp_path):
    """Each --target text gives the maps of the matching target object (which the tests above check against
    pytorch-grad-cam); score:K follows the raw output in the faithfulness curves."""
    from trustvision.attacks import make_attack, run_batched
    from trustvision.explain import AdversarialTarget, MarginTarget, RegressionTarget
    from trustvision.evaluation.sections.explain import explain_section
    data = mnist_test.subset(list(range(12)))
    logits = mnist_clf.predict(data.x).cpu()
    pred, y = logits.argmax(1), data.y
    adv_x = run_batched(make_attack("fgsm", eps=0.3), mnist_clf, data.x, y, 64).x_adv
    adv = mnist_clf.predict(adv_x).argmax(1).cpu()
    assert (adv != pred).any()                                   # the adv target differs from pred somewhere
    expected = {"pred": pred, "label": y, "class:7": torch.full_like(y, 7),
                "margin": [MarginTarget(int(c)) for c in pred], "score:4": RegressionTarget(4),
                "adv": [AdversarialTarget(int(c)) for c in adv]}
    for spec, obj in expected.items():
        cfg = ExplainConfig(method="gradcam", target=spec, clusters=2, faithfulness_images=4, steps=2,
                            attack="fgsm" if spec == "adv" else None, attack_options={"eps": 0.3}, attack_images=2)
        sec = explain_section(mnist_clf, data, logits, cfg, out_dir=tmp_path / spec.replace(":", "_"))
        saved = np.load(tmp_path / spec.replace(":", "_") / "explain_maps.npz")
        ref = compute_cams(mnist_clf, data.x, obj, method="gradcam")
        assert np.abs(saved["maps"].astype(np.float32) - ref.maps.numpy()).max() < 2e-3, spec
        assert np.array_equal(saved["target"], ref.target.numpy()), spec
        assert sec.metrics["target"] == spec
        assert sec.metrics["faithfulness_output"] == ("raw" if spec == "score:4" else "probability")
    assert (saved["target"] == adv.numpy()).all()                # adv: the class of the adversarial example


@pytest.mark.slow
def test_cli_explain_target_option(mnist_setup, tmp_path):
    from safetensors.torch import save_file
    w = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(w))
    common = ["explain", "--model", str(w), "--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1",
              "--data", "mnist", "--n", "12", "--steps", "2", "--clusters", "2", "--method", "gradcam"]
    for spec, attack in [("class:3", "none"), ("score:1", "none"), ("adv", "fgsm")]:
        out = tmp_path / spec.replace(":", "_")
        r = CliRunner().invoke(app, [*common, "--target", spec, "--attack", attack, "--eps", "0.3", "--out", str(out)])
        assert r.exit_code == 0, r.output
        metrics = json.loads((out / "results.json").read_text())["sections"]["explain"]["metrics"]
        targets = np.load(out / "explain_maps.npz")["target"]
        assert metrics["target"] == spec and len(targets) == 12
        if spec == "class:3":
            assert (targets == 3).all()
        if spec == "score:1":
            assert (targets == -1).all() and metrics["faithfulness_output"] == "raw"
    for args, msg in [(["--target", "class:x"], "--target 'class:x'"), (["--target", "bogus"], "choose from pred"),
                      (["--target", "adv", "--attack", "none"], "--target adv"),
                      (["--target", "class:10"], "--target class:10: the model has 10 outputs")]:
        r = CliRunner().invoke(app, [*common, *args, "--out", str(tmp_path / "bad")])
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], (args, r.output)
