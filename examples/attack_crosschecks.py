"""The measured figures of docs/attacks.md that the tests only bound: each printed side by side with its peer.

The tests (tests/test_attacks.py, tests/test_evolutionary.py) assert margins; this script prints the values
the page quotes, on the same models, images and settings as those tests:

1. CW (Carlini & Wagner, S&P 2017) with the binary search (9 x 100 Adam steps) at the paper's lr 0.01 and at
   our default 0.05: success on the first ``--n`` correctly classified MNIST test images (the demo CNN);
2. DeepFool (Moosavi-Dezfooli et al., CVPR 2016) against torchattacks' DeepFool: success and the ratio of
   mean L2 norms on the images both fool (16 images, 50 iterations, overshoot 0.02);
3. our batched CMA-ES (Hansen's 2016 tutorial) against the ``cma`` package without active CMA: median
   generations to f < 1e-8 on the sphere (D = 4, lambda = 8, 8 runs) and on Rosenbrock (D = 8, lambda = 10,
   8 runs);
4. the threshold attack (Kotyan & Vargas, PLOS ONE 2022) with CMA-ES against the ``cma`` package run one image
   at a time with its defaults (sklearn-digits MLP, 40 images, L-inf 0.1, lambda 20, 15 generations);
5. the pixel attack (Su, Vargas & Sakurai 2019) against ART's ``PixelAttack`` (es = 1): 3 pixels, ART's
   population (396), 3 generations, the 16 least confident of the first 64 correct MNIST test images.

Run (the numbers in docs/attacks.md; 22 minutes on one thread of a heavily loaded shared 2-core CPU, load
average about 20, of which ART's pixel attack took 143 s)::

    OMP_NUM_THREADS=1 python examples/attack_crosschecks.py

Shapes: MNIST images (N, 1, 28, 28), digits (N, 1, 8, 8), in [0, 1].
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

from trustvision.attacks import CW, DeepFool, PixelAttack, ThresholdAttack, margin_loss, perturbation_norms
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


def _fooled(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return clf.predict(x).argmax(1).cpu() != y


def cw_learning_rates(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
    print(f"\n1. CW, 9 binary-search steps x 100 Adam steps, {len(x)} images\n\n| lr | success |\n|---:|---:|")
    for lr in (0.01, 0.05):
        r = CW(steps=100, binary_search_steps=9, lr=lr)(clf, x, y)
        print(f"| {lr} | {float(r.success.float().mean()):.3f} |", flush=True)


def deepfool_vs_torchattacks(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
    import torchattacks
    peer = Classifier(copy.deepcopy(clf.module), num_classes=10, channels=1).as_module()
    ours = DeepFool(max_iter=50, overshoot=0.02)(clf, x, y)
    theirs = torchattacks.DeepFool(peer, steps=50, overshoot=0.02)(x, y)
    ok = _fooled(clf, theirs, y)
    both = ours.success & ok
    ratio = float(ours.norms[both].mean() / perturbation_norms(theirs - x, "l2")[both].mean())
    print(f"\n2. DeepFool L2, {len(x)} images: success ours {float(ours.success.float().mean()):.3f}, torchattacks "
          f"{float(ok.float().mean()):.3f}; mean L2 ours / torchattacks on the {int(both.sum())} images both fool: "
          f"{ratio:.2f}x")


def _generations(f, dim: int, x0: float, sigma0: float, lam: int, gens: int, n: int) -> tuple[float, float]:
    """Median generations to f < 1e-8: ours (n problems in one batch) and the ``cma`` package (n seeds)."""
    import cma
    from trustvision.attacks.cmaes import cma_es
    res = cma_es(lambda idx, g: (f(g), torch.zeros(g.shape[:2], dtype=torch.bool)), torch.full((n, dim), x0),
                 sigma0, pop_size=lam, generations=gens, gen=torch.Generator().manual_seed(0), early_stop=False)
    hit = res.history < 1e-8
    ours = torch.where(hit.any(1), hit.float().argmax(1).float(), torch.tensor(float("inf"))).tolist()
    theirs = []
    for s in range(n):
        es = cma.CMAEvolutionStrategy([x0] * dim, sigma0, {
            "popsize": lam, "CMA_active": False, "seed": s + 1, "verbose": -9, "ftarget": 1e-8, "maxiter": gens,
            "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolstagnation": 10 ** 9, "tolflatfitness": 10 ** 9})
        k = 0
        while not es.stop():
            xs = es.ask()
            es.tell(xs, f(torch.tensor(np.array(xs), dtype=torch.float32)).tolist())
            k += 1
        theirs.append(k if es.result.fbest < 1e-8 else float("inf"))
    return float(np.median(ours)), float(np.median(theirs))


def cmaes_vs_cma() -> None:
    rosen = lambda x: (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)  # noqa: E731
    print("\n3. CMA-ES: median generations to f < 1e-8, 8 runs each\n\n| function | ours | cma |\n|---|---:|---:|")
    for name, f, dim, x0, s0, lam, gens in (("sphere, D 4, λ 8", lambda x: (x ** 2).sum(-1), 4, 3.0, 1.0, 8, 150),
                                            ("Rosenbrock, D 8, λ 10", rosen, 8, 0.0, 0.5, 10, 1500)):
        ours, theirs = _generations(f, dim, x0, s0, lam, gens, 8)
        print(f"| {name} | {ours:g} | {theirs:g} |", flush=True)


def _digits_mlp() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """The MLP of tests/test_evolutionary.py (sklearn digits, 1 200 training images, seed 0); 40 test images."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(np.round(d.images / 16 * 255) / 255, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:1200]), y[:1200]).backward()
        opt.step()
    clf = Classifier(net.eval(), num_classes=10, channels=1)
    xt, yt = x[1200:], y[1200:]
    keep = (~_fooled(clf, xt, yt)).nonzero()[:40, 0]
    return clf, xt[keep], yt[keep]


def threshold_cmaes_vs_cma() -> None:
    import cma
    from trustvision.attacks.de import class_log_odds
    clf, x, y = _digits_mlp()
    eps, lam, gens = 0.1, 20, 15
    ours = ThresholdAttack(eps=eps, optimizer="cmaes", pop_size=lam, generations=gens, seed=0)(clf, x, y)
    wins = []
    for i in range(len(x)):                     # the package: one image at a time, its own bound handling
        xi = x[i].flatten().double().numpy()
        lo, hi = np.maximum(-eps, -xi), np.minimum(eps, 1 - xi)
        es = cma.CMAEvolutionStrategy(np.zeros(64), eps / 4, {"bounds": [lo, hi], "popsize": lam, "seed": i + 1,
                                                              "verbose": -9, "maxiter": gens})
        win = False
        while not es.stop() and not win:
            xs = np.clip(np.array(es.ask()), lo, hi)
            with torch.no_grad():
                logits = clf((x[i:i + 1] + torch.tensor(xs, dtype=torch.float32).view(-1, 1, 8, 8)).clamp(0, 1))
            win = bool((logits.argmax(1) != y[i]).any())
            es.tell(list(xs), class_log_odds(logits, y[i].expand(len(xs)), None).tolist())
        wins.append(win)
    print(f"\n4. threshold attack with CMA-ES, digits MLP, {len(x)} images, L∞ {eps}, λ {lam}, {gens} generations: "
          f"success ours {float(ours.success.float().mean()):.3f}, cma {float(np.mean(wins)):.3f}", flush=True)


def pixel_vs_art(clf: Classifier, x64: torch.Tensor, y64: torch.Tensor) -> None:
    from art.attacks.evasion import PixelAttack as ArtPixel
    from art.estimators.classification import PyTorchClassifier
    with torch.no_grad():
        order = margin_loss(clf(x64), y64, None, kappa=None).argsort()[:16]
    x, y = x64[order], y64[order]
    peer = Classifier(copy.deepcopy(clf.module), num_classes=10, channels=1)
    est = PyTorchClassifier(nn.Sequential(peer.as_module()), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    th, iters = 3, 3
    t0 = time.perf_counter()
    x_art = torch.as_tensor(ArtPixel(est, th=th, es=1, max_iter=iters, verbose=False).generate(
        x.numpy(), y.numpy().astype(np.int64)))
    t_art = time.perf_counter() - t0
    ours = PixelAttack(th=th, pop_size=max(1, 400 // (3 * th)) * 3 * th, generations=iters)(clf, x, y)
    print(f"\n5. pixel attack, {th} pixels, population 396, {iters} generations, the 16 least confident images: "
          f"success ART {float(_fooled(clf, x_art, y).float().mean()):.3f} ({t_art:.0f} s), "
          f"ours {float(ours.success.float().mean()):.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="MNIST images for CW (the tests' batch)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")
    idx = (~_fooled(clf, test.x, test.y)).nonzero()[:64, 0]
    x64, y64 = test.x[idx].clone(), test.y[idx].clone()
    cw_learning_rates(clf, x64[:args.n], y64[:args.n])
    deepfool_vs_torchattacks(clf, x64[:16], y64[:16])
    cmaes_vs_cma()
    threshold_cmaes_vs_cma()
    pixel_vs_art(clf, x64, y64)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
