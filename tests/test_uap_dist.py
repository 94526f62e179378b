"""Data-parallel UAP generation (docs/distributed.md, "Universal perturbations"): ``torchrun ... -m trustvision uap``.

Each rank computes the steps of its rows of every mini-batch; the sums, the replay (L∞: folded maps, L2: the
gathered steps) and the candidates' scores are all-reduced, so every rank holds the same UAP.  1 rank and 2
gloo ranks must give the same fooling rate within 0.03 (issue 16); float sums in another order may move ``v``
by rounding, so the perturbations are compared through their fooling rates and norms, not bit for bit.
Small on purpose: 200 MNIST source digits, 200 evaluation digits, 2 passes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from torchrun import torchrun

TIMEOUT = 400          # a hung rank fails the test instead of the CI job


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, mnist_setup) -> Path:
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("uapdist") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(path))
    return path


def _uap(nproc: int, model: Path, out: Path, norm: str, zeta: str) -> dict:
    """``trustvision uap`` on ``nproc`` gloo ranks (1: in this process, without torchrun: the same command)."""
    argv = ["uap", "--model", str(model), "--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1",
            "--source", "mnist", "--eval", "mnist", "--n-source", "200", "--n-images", "200", "--norm", norm,
            "--zeta", zeta, "--max-passes", "2", "--sweep", "0.1", "--seed", "1", "--out", str(out), "--quiet"]
    if nproc == 1:
        from typer.testing import CliRunner
        from trustvision.cli.app import app
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 0, r.output[-2000:]
    else:
        p = torchrun(nproc, argv, timeout=TIMEOUT)
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    res = json.loads((out / "results.json").read_text())["sections"]["uap"]["metrics"]
    return {"rate": res["fooling_rate"], "control": res["best_control"], "v": np.load(out / "uap.npy"),
            "curve": res["generator"]["curve"], "eps": res["budget"]["eps"]}


@pytest.mark.slow
@pytest.mark.parametrize("norm, zeta", [("l2", "0.3"), ("linf", "0.2")])
def test_one_and_two_ranks_agree(model_file, tmp_path, norm, zeta):
    one = _uap(1, model_file, tmp_path / "one", norm, zeta)
    two = _uap(2, model_file, tmp_path / "two", norm, zeta)
    assert abs(one["rate"] - two["rate"]) <= 0.03, (one["rate"], two["rate"])
    assert len(one["curve"]) == len(two["curve"]) == 3
    assert all(abs(a - b) <= 0.03 for a, b in zip(one["curve"], two["curve"])), (one["curve"], two["curve"])
    assert one["rate"] > one["control"] + 0.1             # a real UAP, not two equal failures
    for r in (one, two):                                    # the budget holds on every world size
        n = np.abs(r["v"]).max() if norm == "linf" else np.sqrt((r["v"].astype(np.float64) ** 2).sum())
        assert n <= r["eps"] * (1 + 1e-6)
    assert not list((tmp_path / "two").glob("*rank*"))      # rank 1 wrote nothing into the output folder
