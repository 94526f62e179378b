"""End-to-end audit: sections, results.json, report, resume, gates, model never modified, CLI errors."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from trustvision.auditor import AuditConfig, audit, evaluate_gates, summary_metrics
from trustvision.cli.app import app
from trustvision.errors import TrustVisionError
from trustvision.evaluation import RobustnessConfig


def _small_cfg(**kw):
    rob = RobustnessConfig(attacks=["fgsm", "pgd", "deepfool"], eps_linf=[0, 0.1, 0.3], eps_l2=[0, 1.0, 3.0],
                           check_images=32, n_examples=4)
    return AuditConfig(n_images=48, batch_size=48, robustness=rob, **kw)


@pytest.fixture(scope="module")
def audited(mnist_clf, mnist_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return audit(mnist_clf, mnist_test, _small_cfg(gates=["clean_accuracy=0.5"]), out), out


def test_results_json_and_report_written(audited):
    results, out = audited
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == results["schema_version"]
    assert set(on_disk["sections"]) == {"clean", "robustness"}
    assert (out / "report.html").stat().st_size > 10_000
    for sec in on_disk["sections"].values():
        for fig in sec["figures"]:
            assert (out / fig["path"]).is_file()
    assert (out / "adversarial_examples.npz").is_file()


def test_robust_accuracy_is_below_clean_and_worst_case_is_minimum(audited):
    results, _ = audited
    rob = results["sections"]["robustness"]["metrics"]
    clean = rob["clean_accuracy"]
    for norm, curves in rob["robust_accuracy"].items():
        worst = rob["worst_case_robust_accuracy"][norm]
        for eps, acc in worst.items():
            assert acc <= min(c[eps] for c in curves.values()) + 1e-9
            if float(eps) > 0:
                assert acc < clean
    assert rob["worst_case_robust_accuracy"]["linf"]["0.3"] < 0.1       # MNIST CNN at eps 0.3: broken
    codes = {f["code"] for s in results["sections"].values() for f in s["flags"]}
    assert not codes & {"zero-gradients", "nan-gradients", "large-budget-not-chance", "non-monotonic"}


def test_gates_and_summary(audited):
    results, _ = audited
    assert results["gates"][0]["passed"]
    s = results["summary"]
    assert "robust_accuracy_linf@0.1" in s and "clean_accuracy" in s
    g = evaluate_gates(["robust_accuracy_linf@1/10=0.999"], s)
    assert g[0]["metric"] == "robust_accuracy_linf@0.1" and not g[0]["passed"]
    with pytest.raises(TrustVisionError, match="unknown metric"):
        evaluate_gates(["nonsense=1"], s)
    with pytest.raises(TrustVisionError, match="METRIC=VALUE"):
        evaluate_gates(["clean_accuracy>0.5"], s)


def test_resume_skips_finished_sections(audited, mnist_clf, mnist_test):
    results, out = audited
    before = (out / "sections" / "robustness.json").stat().st_mtime_ns
    again = audit(mnist_clf, mnist_test, _small_cfg(), out)
    assert (out / "sections" / "robustness.json").stat().st_mtime_ns == before
    assert again["sections"]["robustness"]["metrics"] == results["sections"]["robustness"]["metrics"]
    changed = _small_cfg()
    changed.robustness.attacks = ["fgsm"]
    third = audit(mnist_clf, mnist_test, changed, out)      # config changed -> recomputed
    assert set(third["sections"]["robustness"]["metrics"]["robust_accuracy"]["linf"]) == {"fgsm", "worst-case"}


def test_model_modification_is_detected(mnist_setup, mnist_test, tmp_path):
    import copy

    from trustvision.errors import ModelModifiedError
    from trustvision.models.classifier import Classifier

    class Tamper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            with torch.no_grad():
                self.inner[0].bias.add_(1e-3)
            return out

    clf = Classifier(Tamper(copy.deepcopy(mnist_setup[0])), num_classes=10, channels=1)
    cfg = AuditConfig(sections=["clean"], n_images=16)
    with pytest.raises(ModelModifiedError, match="weights changed"):
        audit(clf, mnist_test, cfg, tmp_path)
    assert (tmp_path / "results.json").is_file()          # results kept on disk


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["audit", "--model", str(tmp_path / "missing.safetensors"), "--data", "mnist",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing.safetensors" in lines[0]


@pytest.mark.slow
def test_cli_audit_and_attack_end_to_end(mnist_setup, tmp_path):
    from safetensors.torch import save_file
    w = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(w))
    runner = CliRunner()
    common = ["--model", str(w), "--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1",
              "--data", "mnist", "--n", "32"]
    r = runner.invoke(app, ["audit", *common, "--out", str(tmp_path / "a"), "--attacks", "fgsm,pgd",
                            "--eps-linf", "0,0.1,0.3", "--fail-under", "robust_accuracy_linf@0.3=0.9"])
    assert r.exit_code == 1, r.output                      # the gate must fail: MNIST CNN is broken at 0.3
    assert "FAILED" in r.output and (tmp_path / "a" / "report.html").is_file()
    r = runner.invoke(app, ["attack", "pgd", *common, "--eps", "0.2", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "b" / "pgd.json").read_text())
    assert summary["success_rate"] > 0.5 and (tmp_path / "b" / "pgd.png").is_file()
    r = runner.invoke(app, ["attack", "pgd", *common, "--eps", "0.2", "--target", "3", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "pgd.json").read_text())["target"] == 3


def test_summary_metrics_keys(audited):
    """The summary holds clean accuracy and the worst case at every non-zero budget of _small_cfg, read from
    the sections themselves (not recomputed by summary_metrics, the function that produced the summary)."""
    results, _ = audited
    secs = results["sections"]
    worst = secs["robustness"]["metrics"]["worst_case_robust_accuracy"]
    assert results["summary"] == {
        "clean_accuracy": secs["clean"]["metrics"]["clean_accuracy"],
        "robust_accuracy_linf@0.1": worst["linf"]["0.1"], "robust_accuracy_linf@0.3": worst["linf"]["0.3"],
        "robust_accuracy_l2@1": worst["l2"]["1.0"], "robust_accuracy_l2@3": worst["l2"]["3.0"]}
    from trustvision.results import SectionResult
    assert summary_metrics({"clean": SectionResult.from_dict(secs["clean"])}) == {
        "clean_accuracy": secs["clean"]["metrics"]["clean_accuracy"]}


@pytest.mark.slow
def test_gradient_masked_model_audit_shows_flags(mnist_setup, mnist_test, tmp_path):
    """A thresholding 'defence' looks robust to PGD; the audit must say why not to believe it."""
    from test_soundness import Binarize

    from trustvision.models.classifier import Classifier
    clf = Classifier(Binarize(mnist_setup[0]), num_classes=10, channels=1, name="binarized")
    cfg = AuditConfig(n_images=48, batch_size=48, robustness=RobustnessConfig(
        attacks=["fgsm", "pgd"], eps_linf=[0, 0.1, 0.2], check_images=32))
    res = audit(clf, mnist_test, cfg, tmp_path)
    codes = {f["code"] for f in res["sections"]["robustness"]["flags"]}
    assert "zero-gradients" in codes
    assert res["summary"]["robust_accuracy_linf@0.1"] > 0.5       # the false robustness the flag warns about


def test_bad_config_fails_before_any_work(tmp_path):
    with pytest.raises(TrustVisionError, match="unknown attack"):
        RobustnessConfig(attacks=["pgd", "magic"])
    with pytest.raises(TrustVisionError, match="attack_options"):
        RobustnessConfig(attack_options={"pgdd": {"steps": 3}})
    with pytest.raises(TrustVisionError, match="steps"):
        RobustnessConfig(attack_options={"pgd": {"steps": -1}})
    bad = tmp_path / "a.toml"
    bad.write_text("n_images = 10\nbogus = 1\n")
    with pytest.raises(TrustVisionError, match="unknown key"):
        AuditConfig.from_toml(bad)
    bad.write_text("n_images = [")
    with pytest.raises(TrustVisionError, match="invalid TOML"):
        AuditConfig.from_toml(bad)
    assert AuditConfig.from_toml("examples/audit.toml").robustness.attack_options["pgd"]["steps"] == 20


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    """`trustvision demo` on a few images: exit 0, results.json with both sections, report written."""
    runner = CliRunner()
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--n", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["sections"]) == {"clean", "robustness"}
    assert {"fgsm", "pgd", "pgd-l2", "cw", "deepfool"} <= set(
        results["sections"]["robustness"]["metrics"]["attack_seconds"])
    assert (out / "report.html").is_file() and "trustvision summary" in r.output


def test_audit_options_override_the_toml(tmp_path):
    """`trustvision audit --config`: the file's values stand unless an option is given; the result is validated."""
    from trustvision.cli.commands.audit import audit_config
    toml = tmp_path / "a.toml"
    toml.write_text('n_images = 10\ngates = ["clean_accuracy=0.5"]\n[robustness]\nattacks = ["fgsm"]\n'
                    'eps_linf = [0.1]\nseed = 7\n')
    common = {"batch_size": 32, "seed": 3, "resume": False, "gates": None, "attacks": None, "eps_l2": None}
    cfg = audit_config(toml, n=None, eps_linf="8/255", **common)
    assert (cfg.n_images, cfg.gates, cfg.batch_size, cfg.seed, cfg.resume) == (10, ["clean_accuracy=0.5"], 32, 3, False)
    assert cfg.robustness.attacks == ["fgsm"] and cfg.robustness.eps_linf == [0.0, 8 / 255]
    assert cfg.robustness.seed == 3 and cfg.robustness.eps_l2 == RobustnessConfig().eps_l2
    cfg = audit_config(None, batch_size=128, n=5, seed=0, resume=True, gates=["clean_accuracy=0.1"],
                       attacks="pgd, cw", eps_linf=None, eps_l2="1,0.5")
    assert (cfg.n_images, cfg.gates) == (5, ["clean_accuracy=0.1"])
    assert cfg.robustness.attacks == ["pgd", "cw"] and cfg.robustness.eps_l2 == [0.0, 0.5, 1.0]
    with pytest.raises(TrustVisionError, match="--eps-l2"):
        audit_config(None, n=None, eps_linf=None, **{**common, "eps_l2": "1,a"})
    with pytest.raises(TrustVisionError, match="unknown attack"):
        audit_config(None, n=None, eps_linf=None, **{**common, "attacks": "pgd,magic"})
    with pytest.raises(TrustVisionError, match="batch-size"):
        audit_config(None, n=None, eps_linf=None, **{**common, "batch_size": 0})


def test_model_options_on_every_model_command():
    """The model-loading options are declared once (ModelArgs) and every command that loads a model has them all."""
    import dataclasses

    import typer.main

    from trustvision.cli.options import ModelArgs
    commands = typer.main.get_group(app).commands
    wanted = {f.name for f in dataclasses.fields(ModelArgs)}
    for name in ("audit", "attack", "explain", "certify", "uap"):
        assert wanted <= {p.name for p in commands[name].params}, name
