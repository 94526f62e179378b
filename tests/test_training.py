"""The cached trainer is deterministic: the same key and seed give bit-identical weights."""
from __future__ import annotations

import pytest
import torch

from trustvision.data import bundled
from trustvision.models import zoo
from trustvision.training import cached_model, train_classifier


def test_same_seed_same_weights_and_cache_reuse(tmp_path, monkeypatch):
    data = bundled.load("digits").subset(list(range(200)))
    key = {"name": "det-test", "seed": 3}
    build = lambda: zoo.smallcnn(10, 1, width=4)  # noqa: E731
    train = lambda m: train_classifier(m, data, epochs=1, seed=3)  # noqa: E731
    weights = []
    for run in ("a", "b"):
        monkeypatch.setenv("TRUSTVISION_CACHE", str(tmp_path / run))
        torch.manual_seed(1000 + len(weights))          # the caller's RNG state must not matter
        module, path, cached = cached_model(key, build, train)
        assert not cached and path.is_file()
        weights.append(path.read_bytes())
    assert weights[0] == weights[1]
    module, _, cached = cached_model(key, build, train)      # same cache dir as run "b": reused
    assert cached and not module.training


@pytest.mark.slow
def test_concurrent_processes_train_the_cached_model_once(tmp_path):
    """3 processes asking for the same uncached demo model at once: one trains, the others load its file."""
    import os
    import subprocess
    import sys
    code = ("from trustvision.training import mnist_demo_model\n"
            "*_, path, cached = mnist_demo_model(epochs=1)\n"
            "print('CACHED' if cached else 'TRAINED', path.name)\n")
    env = {**os.environ, "TRUSTVISION_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    words = sorted(out.split()[0] for out, _ in outs)
    assert words == ["CACHED", "CACHED", "TRAINED"], outs
    assert len({out.split()[1] for out, _ in outs}) == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_onecycle_resume_gives_the_same_weights(tmp_path):
    """The onecycle recipe (noise from the global generator) resumes bit-identically from its checkpoint."""
    from trustvision.training import TrainConfig, train
    data = bundled.load("digits").subset(list(range(128)))
    cfg = TrainConfig(epochs=2, batch_size=32, schedule="onecycle", noise_sigma=0.2, seed=5)
    build = lambda: zoo.smallcnn(10, 1, width=4)  # noqa: E731
    torch.manual_seed(0)
    full = train(build(), data, None, cfg).module

    class Stop:                      # a progress sink that interrupts the second epoch
        def task(self, desc, total):
            def advance(n=1):
                if desc.endswith("2/2"):
                    raise KeyboardInterrupt
            return advance

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(build(), data, None, cfg, out_dir=tmp_path, progress=Stop())
    torch.manual_seed(99)            # resume restores the generators from the checkpoint, not from here
    again = train(build(), data, None, cfg, out_dir=tmp_path)
    assert again.resumed_from == 1
    for (k, a), b in zip(full.state_dict().items(), again.module.state_dict().values()):
        assert torch.equal(a, b), k
