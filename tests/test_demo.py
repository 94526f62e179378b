"""``trustvision demo``'s two settings (issue 19): the quick default differs from ``--thorough`` only in CW's
binary search, says so in the README and docs/speed.md, and its CW finds the same minimal perturbations.

The demo's time itself is measured by ``bench/demo.py``, never here."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trustvision import RobustnessConfig
from trustvision.attacks import CW
from trustvision.attacks.runner import run_batched
from trustvision.cli.app import app
from trustvision.cli.commands.demo import DEMO_SETTINGS, demo_config

ROOT = Path(__file__).resolve().parent.parent


def test_quick_and_thorough_differ_only_in_cw_search():
    quick, thorough = asdict(demo_config(50, 3)), asdict(demo_config(50, 3, thorough=True))
    rq, rt = quick.pop("robustness"), thorough.pop("robustness")
    assert quick == thorough and quick["n_images"] == 50 and quick["seed"] == 3
    differ = {k for k in rq if rq[k] != rt[k]}
    assert differ == {"attack_options"}
    assert {k for k in rq["attack_options"] if rq["attack_options"][k] != rt["attack_options"][k]} == {"cw"}
    assert rq["attack_options"]["pgd"] == {"steps": 40} == rq["attack_options"]["pgd-l2"]     # Madry et al.'s MNIST
    defaults = RobustnessConfig()                      # --thorough is the section's own convergence check
    assert (rt["strong_factor"], rt["strong_restarts"]) == (defaults.strong_factor, defaults.strong_restarts)
    assert rt["attack_options"]["cw"]["initial_const"] == CW().initial_const            # Carlini & Wagner's start
    assert rq["attack_options"]["cw"]["binary_search_steps"] < rt["attack_options"]["cw"]["binary_search_steps"]


@pytest.mark.parametrize("doc", ["README.md", "docs/speed.md"])
def test_the_quick_settings_are_said_in_the_docs(doc):
    """Every cheaper demo default is named, with its value, where users read about the demo."""
    text = re.sub(r"\s+", " ", (ROOT / doc).read_text(encoding="utf-8"))
    q, t = DEMO_SETTINGS["quick"], DEMO_SETTINGS["thorough"]
    assert (q["strong_factor"], q["strong_restarts"]) == (t["strong_factor"], t["strong_restarts"])
    assert "--thorough" in text
    assert f"{q['cw']['binary_search_steps']} binary-search steps" in text
    for c in (q["cw"]["initial_const"], t["cw"]["initial_const"]):          # 0.1, 1e-3
        assert f"c = {c:g}" in text or "c = " + f"{c:.0e}".replace("e-0", "e-") in text


def test_a_bad_gate_fails_before_training(tmp_path, monkeypatch):
    """``--fail-under`` is checked before the CNN is trained: one line, exit 2, no cache written."""
    monkeypatch.setenv("TRUSTVISION_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "o"), "--fail-under", "nonsense"])
    assert r.exit_code == 2 and "error" in r.output
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_quick_cw_finds_the_minimal_perturbations_of_the_thorough_search(mnist_clf, mnist_batch):
    """On 48 digits the quick CW (3 binary-search steps from c = 0.1) fools as many images as the thorough one
    (5 from c = 1e-3) with minimal L2 norms within a few per cent, so the demo's L2 curve stays where it was."""
    x, y = mnist_batch[0][:48], mnist_batch[1][:48]
    quick = run_batched(CW(**DEMO_SETTINGS["quick"]["cw"]), mnist_clf, x, y, 128)
    thorough = run_batched(CW(**DEMO_SETTINGS["thorough"]["cw"]), mnist_clf, x, y, 128)
    assert int(quick.success.sum()) >= int(thorough.success.sum()) - 1
    both = quick.success & thorough.success
    ratio = quick.norms[both] / thorough.norms[both]
    assert float(ratio.median()) < 1.05 and float(ratio.max()) < 1.5
    everyone = torch.ones(len(x), dtype=torch.bool)
    for eps in (1.0, 1.5, 2.0):                          # robust accuracy at the demo's budgets: within 3 images
        assert abs(int(quick.robust_at(eps, everyone).sum()) - int(thorough.robust_at(eps, everyone).sum())) <= 3
