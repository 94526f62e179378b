"""Raw Zero-Shot under torchrun (issue 16, item 4; docs/distributed.md, "Raw Zero-Shot").

The leave-one-class-out models are independent jobs shared among the ranks; rank 0 gathers the outputs and
writes the results.  1 gloo rank and 2 gloo ranks (one thread each, fresh model caches, so every model is
trained in both runs) must give *identical* metrics, per-class examples and model weights: every job is
seeded from the run's seed alone, never from a generator shared across jobs.  A job failing on one rank
must stop every rank with the one-line error, not hang the others.

Miniature: MNIST digits 0, 1, 2; lenet + mlp (2 x (1 full + 3 held-out) = 8 models); 1 epoch on 200 images.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from torchrun import torchrun

ARGS = ["zeroshot", "--data", "mnist", "--archs", "lenet,mlp", "--classes", "0,1,2", "--epochs", "1",
        "--train-images", "200", "--heldout-images", "30", "--attack", "fgsm:eps=0.15", "--attack-images", "12"]
MODELS = sorted(f"{a}-{t}.safetensors" for a in ("lenet", "mlp") for t in ("full", "held0", "held1", "held2"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1-rank out, 2-rank out, 2-rank cache, their finished processes) of the same command."""
    base = tmp_path_factory.mktemp("zsdist")
    outs, procs = [], []
    for n in (1, 2):
        out, cache = base / f"out{n}", base / f"cache{n}"
        proc = torchrun(n, [*ARGS, "--out", out], env={"TRUSTVISION_CACHE": str(cache)}, timeout=480)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs.append(out)
        procs.append(proc)
    return outs[0], outs[1], base / "cache2", procs


@pytest.mark.slow
def test_two_ranks_equal_one_rank(runs):
    one, two, _, (p1, p2) = runs
    s1 = json.loads((one / "results.json").read_text())["sections"]["zeroshot"]
    s2 = json.loads((two / "results.json").read_text())["sections"]["zeroshot"]
    assert s1["config"]["processes"] == 1 and s2["config"]["processes"] == 2
    assert s1["metrics"]["models_trained_this_run"] == s2["metrics"]["models_trained_this_run"] == 8
    # exact: the same jobs, each seeded from --seed only, one thread per rank in both runs
    assert s1["metrics"] == s2["metrics"]
    assert s1["examples"] == s2["examples"] and s1["tables"] == s2["tables"]
    assert s1["metrics"]["dbm_mean"]["lenet"] is not None and s1["metrics"]["attack_success"]["fgsm"]["mlp"] is not None
    for name in MODELS:                                     # every model trained bit for bit alike
        w1, w2 = load_file(str(one / "models" / name)), load_file(str(two / "models" / name))
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1), name
    assert sorted(p.name for p in (two / "models").iterdir()) == MODELS
    # rank 0 alone prints and writes the report
    assert p2.stdout.count("results:") == 1 and p2.stdout.count("Raw Zero-Shot (mean") == 1
    assert (two / "report.html").is_file() and p1.stdout.count("results:") == 1


@pytest.mark.slow
def test_a_failing_job_stops_every_rank(runs, tmp_path):
    _, _, cache, _ = runs
    out = tmp_path / "out"
    (out / "models" / "lenet-held1.safetensors").mkdir(parents=True)     # job 3 (rank 1) cannot write its model
    proc = torchrun(2, [*ARGS, "--out", out], env={"TRUSTVISION_CACHE": str(cache)}, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "error: cannot write the lenet model to" in text and "lenet-held1.safetensors" in text
    assert "error: rank 1: cannot write the lenet model" in text           # rank 0 stops too, naming rank 1
    assert not (out / "results.json").exists()
    assert (out / "models" / "lenet-full.safetensors").is_file()          # finished jobs kept for a resume
