"""The Norm strategies keep every perturbation inside its budget exactly in fp32, even for tiny budgets."""
from __future__ import annotations

import pytest
import torch

from trustvision.attacks.norms import NORMS, fp32_floor


@pytest.mark.parametrize("eps", [1e-7, 1e-6, 1e-5, 1e-3, 0.5, 3.0])
@pytest.mark.parametrize("name", ["l2", "linf"])
def test_enforce_never_exceeds_the_budget(name: str, eps: float) -> None:
    norm = NORMS.get(name)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 28, 28, generator=g) * 0.2 + 0.8          # pixels near 1: the largest ulps in [0, 1]
    x_adv = (x + torch.randn(x.shape, generator=g)).clamp(0, 1)       # far outside every budget
    e = fp32_floor(eps)
    out = norm.enforce(x, x_adv, e)
    assert bool((norm.distance(out - x) <= e).all())
    assert bool(((out >= 0) & (out <= 1)).all())
    if 1e-3 <= eps < 1:                                             # a usable budget is used, not thrown away
        assert float(norm.distance(out - x).min()) > 0.98 * e


@pytest.mark.parametrize("eps", [1e-7, 1e-5, 0.5])
def test_l2_fit_never_exceeds_the_budget(eps: float) -> None:
    norm = NORMS.get("l2")
    delta = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    e = fp32_floor(eps)
    assert bool((norm.distance(norm.fit(delta, e)) <= e).all())
