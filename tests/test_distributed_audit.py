"""The distributed audit (docs/distributed.md, "The audit"): ``torchrun ... -m trustvision audit`` on 2 gloo ranks.

1 rank and 2 ranks must give identical per-image results (the device batches are the same, split
round-robin and gathered: scale/shard.map_batches); a resume with another world size recomputes only
what is missing and still equals the uninterrupted run; a rank that fails alone makes every rank stop
with a one-line error, without a hang.  Small on purpose: 64 MNIST digits, FGSM and PGD (3 steps,
random start), batches of 16.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from torchrun import torchrun
from trustvision.scale import map_batches

CONFIG = """\
sections = ["clean", "robustness"]
[robustness]
attacks = ["fgsm", "pgd"]
eps_linf = [0.0, 0.1, 0.2]
eps_l2 = [0.0]
check_images = 32
strong_factor = 2
strong_restarts = 1
n_examples = 4
attack_options = {pgd = {steps = 3, random_start = true}}
"""
TIMEOUT = 400          # a hung rank fails the test instead of the CI job


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mnist_setup):
    """(folder, argv builder): the demo CNN as safetensors and the audit options (64 digits, batches of 16)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("dist")
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(root / "cnn.safetensors"))
    (root / "audit.toml").write_text(CONFIG)

    def argv(out: Path, model: str | None = None, *extra: str) -> list[str]:
        arch = [] if model else ["--arch", "trustvision:smallcnn"]
        return ["audit", "--model", model or str(root / "cnn.safetensors"), *arch, "--num-classes", "10", "--channels", "1",
                "--data", "mnist", "--n-images", "64", "--batch-size", "16", "--config", str(root / "audit.toml"),
                "--out", str(out), *extra]
    return root, argv


def _run(nproc: int, argv: list[str]) -> subprocess.CompletedProcess:
    p = torchrun(nproc, argv, timeout=TIMEOUT)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    return p


def _units(out: Path) -> dict[str, dict]:
    """Robustness resume units: key -> payload (per-image masks ``robust``, ``example`` images)."""
    return {f.stem: json.loads(f.read_text())["payload"] for f in sorted((out / "sections" / "robustness").glob("*.json"))}


def _timeless(results: dict) -> dict:
    """results.json without what may differ between equal runs: the times and the world size."""
    out = json.loads(json.dumps(results))
    out.pop("created"), out.pop("environment")
    for sec in out["sections"].values():
        sec.pop("seconds", None)
        sec["metrics"].pop("attack_seconds", None)
    return out


def _same(a: Path, b: Path) -> None:
    ra, rb = (json.loads((o / "results.json").read_text()) for o in (a, b))
    assert ra["summary"] == rb["summary"]
    assert ra["sections"]["clean"]["metrics"] == rb["sections"]["clean"]["metrics"]
    ua, ub = _units(a), _units(b)
    assert sorted(ua) == ["fgsm@0.1", "fgsm@0.2", "pgd@0.1", "pgd@0.2"] and sorted(ub) == sorted(ua)
    for key in ua:
        assert ua[key]["robust"] == ub[key]["robust"], key            # per-image masks, exactly
        assert ua[key]["example"] == ub[key]["example"], key          # example adversarial images, bit for bit
    assert _timeless(ra) == _timeless(rb)


@pytest.mark.slow
def test_two_ranks_give_the_one_rank_results_and_resume_across_world_sizes(setup):
    root, argv = setup
    one, two = root / "one", root / "two"
    _run(1, argv(one))
    p2 = _run(2, argv(two))
    _same(one, two)
    r1, r2 = (json.loads((o / "results.json").read_text()) for o in (one, two))
    assert r1["environment"]["world_size"] == 1 and r2["environment"]["world_size"] == 2
    assert r1["sections"]["robustness"]["metrics"]["robust_accuracy"]["linf"]["pgd"]["0.2"] < 0.5   # attacks bite
    assert p2.stdout.count("worst-case robust accuracy") == 1           # rank 0 alone prints the summary
    assert not list(two.glob("*rank*"))                                 # and writes
    # resume a 2-rank folder with 1 rank, and a 1-rank folder with 2 ranks: only the removed parts are recomputed
    for src, nproc, drop in ((two, 1, "pgd@0.2"), (one, 2, "fgsm@0.1")):
        again = root / f"resume-{nproc}"
        shutil.copytree(src, again)
        (again / "sections" / "robustness" / f"{drop}.json").unlink()
        (again / "sections" / "robustness.json").unlink()
        p = _run(nproc, argv(again))
        assert "resumed section 'clean'" in p.stdout and "resumed 3 attack run(s)" in p.stdout, p.stdout[-2000:]
        _same(one, again)


@pytest.mark.slow
def test_a_rank_that_fails_alone_stops_every_rank_with_one_line(setup):
    root, argv = setup
    (root / "badrank.py").write_text(textwrap.dedent("""\
        import os
        from trustvision.models import zoo

        def factory():
            if os.environ.get("RANK") == "1":
                raise RuntimeError("rank one cannot build the model")
            return zoo.smallcnn(10, 1)
        """))
    p = torchrun(2, [*argv(root / "bad", f"{root / 'badrank.py'}:factory"), "--trust-code"], timeout=TIMEOUT)
    text = p.stdout + p.stderr
    assert p.returncode != 0
    assert "error: rank 1: " in text and "rank one cannot build the model" in text, text[-3000:]
    assert "exitcode  : 2" in text                                      # the CLI's bad-input exit code
    assert "trustvision/auditor.py" not in text and "Traceback (most recent call last):\n  File \"/" not in p.stdout
    assert not (root / "bad" / "results.json").exists()


@pytest.mark.slow
def test_a_bad_count_fails_on_every_rank_before_any_collective(setup):
    root, argv = setup
    args = argv(root / "badn")
    args[args.index("--n-images") + 1] = "0"
    p = torchrun(2, args, timeout=TIMEOUT)
    assert p.returncode != 0
    assert (p.stdout + p.stderr).count("error: --n must be >= 1, got 0") == 2     # one line per rank, no hang


SCRIPT = """\
import sys, torch
from trustvision.errors import TrustVisionError
from trustvision.scale import init, map_batches, shutdown
d = init("cpu")
seen = []
out = map_batches(lambda b: (seen.append(b), torch.full((2,), float(b)))[1], 5)
assert [int(t[0]) for t in out] == [0, 1, 2, 3, 4], out          # every rank: all batches, in order
assert seen == [b for b in range(5) if b % 2 == d.rank], seen     # each rank ran only its own
def boom(b):
    if b == 3:
        raise ValueError("batch three is broken")
    return b
try:
    map_batches(boom, 5)
except TrustVisionError as e:
    print(f"rank {d.rank} caught: {e}")
except ValueError as e:
    print(f"rank {d.rank} own: {e}")
shutdown()
"""


@pytest.mark.slow
def test_map_batches_splits_round_robin_and_raises_on_every_rank(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(script)], capture_output=True, text=True, timeout=TIMEOUT,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 1 own: batch three is broken" in p.stdout
    assert "rank 0 caught: rank 1: ValueError: batch three is broken" in p.stdout


def test_map_batches_single_process_is_a_plain_loop():
    steps = []
    assert map_batches(lambda b: b * b, 4, steps.append) == [0, 1, 4, 9] and steps == [1, 1, 1, 1]
    assert map_batches(lambda b: b, 0) == []
    with pytest.raises(ZeroDivisionError):               # single-process: the error itself, untouched
        map_batches(lambda b: 1 // (b - 2), 4)
    assert torch.equal(torch.cat(map_batches(lambda b: torch.arange(b * 3, b * 3 + 3), 3)), torch.arange(9))
