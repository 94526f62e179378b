"""Resume that cannot serve stale or edited numbers (issue 11): fingerprint, digests, corrupt files,
per-attack units, temporary files, report in step with results.json, --verify, kill -9 mid-section."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

import trustvision
from trustvision.auditor import AuditConfig, audit
from trustvision.errors import TrustVisionError
from trustvision.evaluation import RobustnessConfig
from trustvision.models.classifier import Classifier
from trustvision.resume import payload_digest, write_stamped

TIMINGS = {"created", "seconds", "attack_seconds"}


def _rob(**kw) -> RobustnessConfig:
    return RobustnessConfig(attacks=["fgsm", "pgd", "deepfool"], eps_linf=[0, 0.1, 0.3], eps_l2=[0, 1.0, 3.0],
                            attack_options={"pgd": {"steps": 5}}, check_images=16, n_examples=4, **kw)


def _cfg(**kw) -> AuditConfig:
    kw.setdefault("robustness", _rob())
    return AuditConfig(n_images=48, batch_size=16, **kw)


def _run(clf, data, cfg, out) -> tuple[dict, str]:
    """Audit with a captured console: (results, console text)."""
    buf = io.StringIO()
    res = audit(clf, data, cfg, out, console=Console(file=buf, width=400))
    return res, buf.getvalue()


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _stamped(path: Path) -> dict:
    return json.loads(path.read_text())


def _restamp(path: Path, edit) -> None:
    """Edit a stamped file's payload in place and recompute its digest (an edit the digest cannot catch)."""
    saved = _stamped(path)
    edit(saved["payload"])
    write_stamped(path, saved["fingerprint"], saved["payload"])


@pytest.fixture(scope="module")
def full(mnist_clf, mnist_test, tmp_path_factory):
    """One uninterrupted audit (clean + robustness): (results, out folder)."""
    out = tmp_path_factory.mktemp("full")
    return audit(mnist_clf, mnist_test, _cfg(resume=False), out), out


# ------------------------------------------------------------------ 1. the fingerprint
class _Net(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class _NegatedNet(torch.nn.Module):     # the same parameters, another forward: a code change
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return -self.inner(x)


def test_changed_model_code_is_recomputed_not_resumed(mnist_setup, mnist_test, tmp_path):
    a = Classifier(_Net(mnist_setup[0]), num_classes=10, channels=1, name="m")
    b = Classifier(_NegatedNet(mnist_setup[0]), num_classes=10, channels=1, name="m")
    assert a.weights_hash() == b.weights_hash()
    cfg = AuditConfig(sections=["clean"], n_images=64, batch_size=32)
    first, _ = _run(a, mnist_test, cfg, tmp_path)
    second, said = _run(b, mnist_test, cfg, tmp_path)
    assert "resumed section" not in said
    acc = [r["sections"]["clean"]["metrics"]["clean_accuracy"] for r in (first, second)]
    assert acc[0] > 0.8 and acc[1] < 0.3                 # negated logits: the argmax is the least likely class


@pytest.mark.parametrize("what", ["trustvision", "torch"])
def test_versions_are_part_of_the_fingerprint(what, mnist_clf, mnist_test, tmp_path, monkeypatch):
    cfg = AuditConfig(sections=["clean"], n_images=32, batch_size=32)
    _run(mnist_clf, mnist_test, cfg, tmp_path)
    _, said = _run(mnist_clf, mnist_test, cfg, tmp_path)
    assert "resumed section 'clean'" in said                  # unchanged: resumed
    monkeypatch.setattr(trustvision if what == "trustvision" else torch, "__version__", "99.0")
    _, said = _run(mnist_clf, mnist_test, cfg, tmp_path)
    assert "resumed section" not in said


# ------------------------------------------------------------------ 2. digests and unreadable files
@pytest.mark.slow
def test_edited_section_is_detected_and_recomputed(full, mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    path = out / "sections" / "robustness.json"
    saved = _stamped(path)                                    # an edit by hand: the fingerprint kept
    saved["payload"]["metrics"]["worst_case_robust_accuracy"]["linf"]["0.3"] = 0.99
    path.write_text(json.dumps(saved))
    res, said = _run(mnist_clf, mnist_test, _cfg(), out)
    worst = res["sections"]["robustness"]["metrics"]["worst_case_robust_accuracy"]["linf"]["0.3"]
    assert worst == full[0]["sections"]["robustness"]["metrics"]["worst_case_robust_accuracy"]["linf"]["0.3"] < 0.5
    warning = [ln for ln in said.splitlines() if "robustness.json" in ln and "edited" in ln]
    assert len(warning) == 1 and "recomputing" in warning[0]
    flags = [f for f in res["sections"]["robustness"]["flags"] if f["code"] == "resume-file-discarded"]
    assert len(flags) == 1 and flags[0]["severity"] == "warning"
    assert "resumed 5 attack run(s)" in said                  # the intact units were reused


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "random-bytes":
        path.write_bytes(bytes(range(256)) * 3)
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "wrong-section":
        _restamp(path, lambda p: p.update(name="robustness"))
    else:
        path.write_text({"list": "[]", "null": "null", "number": "5"}[how])


@pytest.mark.parametrize("how", ["truncated", "list", "null", "number", "random-bytes", "wrong-section",
                                 "directory"])
def test_unreadable_section_is_recomputed_with_one_warning(how, mnist_clf, mnist_test, tmp_path):
    cfg = AuditConfig(sections=["clean"], n_images=32, batch_size=32)
    first, _ = _run(mnist_clf, mnist_test, cfg, tmp_path)
    _corrupt(tmp_path / "sections" / "clean.json", how)
    res, said = _run(mnist_clf, mnist_test, cfg, tmp_path)
    assert res["sections"]["clean"]["metrics"] == first["sections"]["clean"]["metrics"]
    lines = [ln for ln in said.splitlines() if "clean.json" in ln]
    assert len(lines) == 1 and "resumed" not in lines[0], said
    assert (tmp_path / "sections" / "clean.json").is_file()
    _, said = _run(mnist_clf, mnist_test, cfg, tmp_path)       # rewritten: resumes again
    assert "resumed section 'clean'" in said


def test_irremovable_directory_is_one_line_error_before_any_compute(mnist_clf, mnist_test, tmp_path, monkeypatch):
    (tmp_path / "sections" / "clean.json").mkdir(parents=True)
    (tmp_path / "sections" / "clean.json" / "keep.txt").write_text("mine")
    import trustvision.auditor as auditor
    monkeypatch.setattr(auditor, "_run_sections", lambda *a, **k: pytest.fail("computed before the check"))
    with pytest.raises(TrustVisionError, match=r"clean\.json") as e:
        audit(mnist_clf, mnist_test, AuditConfig(sections=["clean"], n_images=8), tmp_path)
    assert "\n" not in str(e.value)
    assert (tmp_path / "sections" / "clean.json" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------ 3. per-attack units
@pytest.mark.slow
def test_robustness_resumes_per_attack_and_budget(full, mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    units = out / "sections" / "robustness"
    assert sorted(p.name for p in units.glob("*.json")) == [
        "deepfool.json", "fgsm@0.1.json", "fgsm@0.3.json", "pgd@0.1.json", "pgd@0.3.json"]
    (out / "sections" / "robustness.json").unlink()            # killed after the units, before the section
    (units / "pgd@0.3.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    res, said = _run(mnist_clf, mnist_test, _cfg(), out)
    assert "resumed 4 attack run(s) of section 'robustness'" in said
    assert {p.name: p.stat().st_mtime_ns for p in units.glob("*.json") if p.name in kept} == kept
    assert (units / "pgd@0.3.json").is_file()
    assert _untimed(res["sections"]) == _untimed(full[0]["sections"])


@pytest.mark.slow
def test_edited_unit_is_recomputed(full, mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    (out / "sections" / "robustness.json").unlink()
    path = out / "sections" / "robustness" / "fgsm@0.1.json"
    saved = _stamped(path)
    saved["payload"]["robust"][1][1] = [True] * 48             # every image robust, digest not updated
    path.write_text(json.dumps(saved))
    res, said = _run(mnist_clf, mnist_test, _cfg(), out)
    assert sum("fgsm@0.1.json" in ln and "edited" in ln for ln in said.splitlines()) == 1
    assert _untimed(res["sections"]["robustness"]["metrics"]) == _untimed(full[0]["sections"]["robustness"]["metrics"])
    assert any(f["code"] == "resume-file-discarded" for f in res["sections"]["robustness"]["flags"])


# ------------------------------------------------------------------ 4. temporary files, report in step
def test_stale_temporary_files_are_removed(full, mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    orphans = [out / ".results.json.k2j3h4.tmp", out / "sections" / ".robustness.json.x8y9.tmp",
               out / "sections" / "robustness" / ".pgd@0.1.json.abc.tmp"]
    for p in orphans:
        p.write_text('{"half": ')
    _, said = _run(mnist_clf, mnist_test, _cfg(), out)
    assert not any(p.exists() for p in orphans)
    assert "removed 3 temporary file(s)" in said


def test_report_records_results_digest_and_is_rerendered_when_out_of_step(full, mnist_clf, mnist_test, tmp_path):
    from trustvision.report.html import rendered_digest, results_digest
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    on_disk = json.loads((out / "results.json").read_text())
    assert rendered_digest(out / "report.html") == results_digest(on_disk)
    _run(mnist_clf, mnist_test, _cfg(), out)
    (out / "report.html").write_text("<html>a report of other results</html>")   # killed between the two
    results_mtime = (out / "results.json").stat().st_mtime_ns
    res, said = _run(mnist_clf, mnist_test, _cfg(), out)                 # fully resumed
    assert "resumed section 'robustness'" in said
    assert (out / "results.json").stat().st_mtime_ns == results_mtime    # nothing new: kept as is
    assert rendered_digest(out / "report.html") == results_digest(json.loads((out / "results.json").read_text()))
    assert (out / "report.html").stat().st_size > 10_000


# ------------------------------------------------------------------ 5. --verify
@pytest.mark.slow
def test_verify_passes_on_untouched_audit_and_fails_on_edited_mask(full, mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(full[1], out)
    res, said = _run(mnist_clf, mnist_test, _cfg(verify=0.1), out)
    block = res["verification"]
    assert block["passed"] and 1 <= block["checked_batches"] < block["total_batches"]
    assert "identical to the stored results" in said and res["gates"][-1]["passed"]

    path = out / "sections" / "robustness" / "pgd@0.1.json"
    attacked = _stamped(path)["payload"]["robust"][0][1]
    i = attacked.index(True)

    def flip(payload):                                         # one attacked image's verdict at eps 0.1
        payload["robust"][1][1][i] = not payload["robust"][1][1][i]
    _restamp(path, flip)
    res, said = _run(mnist_clf, mnist_test, _cfg(verify=1.0), out)
    block = json.loads((out / "results.json").read_text())["verification"]
    assert not block["passed"] and block["mismatches"] == [{"unit": "pgd@0.1", "batch": 0, "differing": 1}]
    assert block["assembly_mismatches"] == ["pgd@0.1 eps=0.1"]          # the section no longer adds up
    assert sum("verification FAILED" in ln for ln in said.splitlines()) == 1
    assert not res["gates"][-1]["passed"]


@pytest.mark.slow
def test_verify_option_exits_1_on_a_failed_verification(mnist_setup, tmp_path):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from trustvision.cli.app import app
    w = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(w))
    args = ["audit", "--model", str(w), "--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1",
            "--data", "mnist", "--n", "24", "--batch-size", "8", "--attacks", "fgsm", "--eps-linf", "0,0.2",
            "--eps-l2", "0", "--out", str(tmp_path / "o")]
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--verify"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["config"]["verify"] == 0.1
    for unit in (tmp_path / "o" / "sections" / "robustness").glob("*.json"):
        _restamp(unit, lambda p: p["robust"][-1].__setitem__(1, [not v for v in p["robust"][-1][1]]))
    r = runner.invoke(app, [*args, "--verify"])
    assert r.exit_code == 1, r.output
    assert "verification FAILED" in r.output


def test_verify_must_be_a_fraction(mnist_clf, mnist_test, tmp_path):
    with pytest.raises(TrustVisionError, match="verify"):
        audit(mnist_clf, mnist_test, AuditConfig(sections=["clean"], n_images=8, verify=1.5), tmp_path)


def test_payload_digest_is_of_the_written_form():
    payload = {"a": (1, 2.5), "b": float("nan"), 3: "x"}
    assert payload_digest(payload) == payload_digest(json.loads(json.dumps({"a": [1, 2.5], "b": None, "3": "x"})))


# ------------------------------------------------------------------ 6. kill -9 in the middle of robustness
_CHILD = textwrap.dedent("""
    import sys
    from trustvision.auditor import AuditConfig, audit
    from trustvision.evaluation import RobustnessConfig
    from trustvision.models.classifier import Classifier
    from trustvision.training import mnist_demo_model
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")
    rob = RobustnessConfig(attacks=["fgsm", "pgd", "deepfool"], eps_linf=[0, 0.05, 0.1, 0.2, 0.3],
                           eps_l2=[0, 1.0, 3.0], attack_options={"pgd": {"steps": 40}}, checks=False,
                           n_examples=4)
    audit(clf, test, AuditConfig(n_images=48, batch_size=16, robustness=rob), sys.argv[1])
""")


def _kill_cfg() -> AuditConfig:
    return _cfg(robustness=RobustnessConfig(
        attacks=["fgsm", "pgd", "deepfool"], eps_linf=[0, 0.05, 0.1, 0.2, 0.3], eps_l2=[0, 1.0, 3.0],
        attack_options={"pgd": {"steps": 40}}, checks=False, n_examples=4))


@pytest.mark.slow
def test_kill_9_mid_robustness_resumes_at_the_attack_level(mnist_clf, mnist_test, tmp_path):
    out = tmp_path / "killed"
    units = out / "sections" / "robustness"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not list(units.glob("fgsm@*.json")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)                    # pgd's four 40-step runs are still ahead
    finally:
        child.wait()
    done = {p.name: p.stat().st_mtime_ns for p in units.glob("*.json")}
    assert done and not (out / "sections" / "robustness.json").exists(), "killed too late"
    resumed, said = _run(mnist_clf, mnist_test, _kill_cfg(), out)
    assert f"resumed {len(done)} attack run(s)" in said
    assert {k: v for k, v in ((p.name, p.stat().st_mtime_ns) for p in units.glob("*.json")) if k in done} == done
    fresh = audit(mnist_clf, mnist_test, _kill_cfg(), tmp_path / "fresh")
    strip = lambda r: _untimed({k: v for k, v in r.items() if k != "config"})  # noqa: E731
    assert strip(resumed) == strip(fresh)
    assert json.loads((out / "results.json").read_text())["sections"] == resumed["sections"]
