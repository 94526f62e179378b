"""The cached trainer is deterministic: the same key and seed give bit-identical weights."""
from __future__ import annotations

import torch

from trustvision.data import bundled
from trustvision.models import zoo
from trustvision.training.cache import cached_model, train_classifier


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
