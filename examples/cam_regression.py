"""CAM of a *regression* model, and k-means clusters of its attention maps.

After Sakaguchi, Takimoto et al., "Study on relationship between composition and prediction of photo
aesthetics using CNN", Cogent Engineering 9(1), 2022: a CNN predicts an aesthetics *score*, Grad-CAM++ shows
where it looks for it, and k-means groups the attention maps into the model's typical compositions.

Here, offline and in about a minute on a CPU: 32x32 crops of skimage's natural photographs
(``trustvision.data.bundled.natural_images``), and a small CNN (``trustvision:smallcnn`` with two outputs)
trained by mean squared error to predict two scores of each crop:

* ``composition``: mean luminance in the four rule-of-thirds windows (6x6 pixels around the points at 1/3
  and 2/3 of each side) minus the crop's mean luminance — a "subject on a power point" score;
* ``brightness``: the crop's mean luminance.

Then ``CAM("gradcam++")(clf, x, RegressionTarget(k))`` explains each score, and the share of each map's top
20 % pixels that fall in the thirds windows (14 % of the area) says whether the model looks where the score
comes from; :func:`trustvision.explain.cluster_maps` clusters the composition maps (k by silhouette).
(The shared trainer is cross-entropy only, so this example trains with its own 15-line MSE loop.)

Run (the numbers in docs/explain.md)::

    OMP_NUM_THREADS=1 python examples/cam_regression.py --out cam-regression

Shapes: crops (N, 3, 32, 32) in [0, 1]; scores (N, 2); maps (N, 32, 32).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trustvision.data.bundled import natural_images
from trustvision.explain import CAM, RegressionTarget, cluster_maps
from trustvision.models import zoo
from trustvision.models.classifier import Classifier


def thirds_mask(size: int = 32, half: int = 3) -> torch.Tensor:
    """(size, size) bool: 2*half-pixel windows around the four rule-of-thirds points."""
    m = torch.zeros(size, size, dtype=torch.bool)
    for r in (size // 3, 2 * size // 3):
        for c in (size // 3, 2 * size // 3):
            m[r - half:r + half, c - half:c + half] = True
    return m


def scores(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) crops -> (N, 2): [composition, brightness] (luminance by Rec. 601 weights)."""
    lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)        # (N, H, W)
    bright = lum.mean((1, 2))
    return torch.stack([lum[:, mask].mean(1) - bright, bright], 1)


def train(x: torch.Tensor, t: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    """smallcnn(2 outputs) fitted to standardised targets t (N, 2) by Adam + MSE."""
    torch.manual_seed(seed)
    net = zoo.smallcnn(2, 3, width=16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.mse_loss(net(x[idx]), t[idx]).backward()
            opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description="CAM of a regression (aesthetics-style score) model")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cam-regression")
    a = ap.parse_args()
    t0 = time.time()
    mask = thirds_mask()
    x = natural_images(a.n, 32, a.seed)
    y = scores(x, mask)
    mu, sd = y[:-300].mean(0), y[:-300].std(0)
    net = train(x[:-300], (y[:-300] - mu) / sd, a.epochs, a.seed)
    xt, yt = x[-300:], (y[-300:] - mu) / sd
    clf = Classifier(net, num_classes=2, channels=3, labels=["composition", "brightness"])
    with torch.inference_mode():
        pred = clf.predict(xt)
    r2 = 1 - ((pred - yt) ** 2).mean(0) / yt.var(0, unbiased=False)
    out: dict = {"n_train": a.n - 300, "n_test": 300, "epochs": a.epochs,
                 "r2": dict(zip(clf.labels, r2.tolist())), "chance_share": float(mask.float().mean())}
    k_top = int(0.2 * 32 * 32)
    maps = {}
    for i, name in enumerate(clf.labels):
        res = CAM("gradcam++")(clf, xt, RegressionTarget(i))
        maps[name] = res.maps
        top = res.maps.flatten(1).topk(k_top, 1).indices
        out[f"top20_in_thirds_{name}"] = float(mask.flatten()[top].float().mean())
    cl = cluster_maps(maps["composition"], None, k_range=(2, 6), seed=a.seed)
    comp = yt[:, 0]
    out["clusters"] = {"k": cl.k, "sizes": cl.sizes.tolist(),
                       "mean_composition_score": [float(comp[torch.from_numpy(cl.labels == c)].mean())
                                                  for c in range(cl.k)]}
    out["seconds"] = time.time() - t0
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    from trustvision.report.figures import explain as figs
    figs.cluster_centers(cl.centers, cl.sizes, cl.members, xt, maps["composition"], dest / "clusters.png")
    (dest / "cam_regression.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
