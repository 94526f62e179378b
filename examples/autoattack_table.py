"""Regenerate the AutoAttack table of docs/autoattack.md (bundled MNIST, CPU, minutes).

    python examples/autoattack_table.py [--n 200] [--steps 100 --fab-steps 100 --queries 5000] [--threads 1]

For the standard demo CNN and a PGD-AT CNN (L∞ eps 0.2, ``trustvision.training.adversarially_trained_mnist``), on
the first ``n`` test digits of the bundled MNIST split: clean accuracy, then robust accuracy (over all ``n``
images; misclassified ones count as not robust) and seconds at L∞ eps 0.1 / 0.2 / 0.3 of PGD-40, APGD-CE,
APGD-T, FAB-T, Square, our AutoAttack ensemble (standard version) and torchattacks' ``AutoAttack`` with its
members set to the same iterations and queries.  Every single attack runs on all correctly classified
images; the ensemble runs each member only on the images still robust.  Prints markdown and the two
checks: the ensemble at or below every single attack, and at or below torchattacks' AutoAttack.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchattacks

from trustvision.attacks import PGD, make_attack, run_batched
from trustvision.models.classifier import Classifier
from trustvision.training import adversarially_trained_mnist, mnist_demo_model

EPS = [0.1, 0.2, 0.3]


def attacks(eps: float, args) -> dict:
    """Label -> our attack at ``eps`` with the paper's settings (budgets from the command line)."""
    return {"PGD-40": PGD(eps=eps, steps=40, seed=0),
            "APGD-CE": make_attack("apgd", eps=eps, loss="ce", steps=args.steps),
            "APGD-T": make_attack("apgd", eps=eps, loss="dlr", targets=9, steps=args.steps),
            "FAB-T": make_attack("fab", eps=eps, targets=9, steps=args.fab_steps),
            "Square": make_attack("square", eps=eps, n_queries=args.queries),
            "AutoAttack (ours)": make_attack("autoattack", eps=eps, steps=args.steps, fab_steps=args.fab_steps,
                                             n_queries=args.queries)}


def peer(clf: Classifier, eps: float, args, x, y) -> torch.Tensor:
    """(n,) robust mask of torchattacks' AutoAttack (standard, members at our budgets)."""
    aa = torchattacks.AutoAttack(clf.as_module(), norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    apgd, apgdt, fab, square = aa._autoattack.attacks
    apgd.steps = apgdt.steps = args.steps
    fab.steps, square.n_queries = args.fab_steps, args.queries
    x_adv = torch.cat([aa(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)])
    return clf.predict(x_adv).argmax(1).cpu() == y


def table(name: str, clf: Classifier, x, y, args) -> tuple[list[str], str]:
    correct = clf.predict(x).argmax(1).cpu() == y
    xs, ys, n = x[correct], y[correct], len(x)
    acc: dict[str, dict[float, float]] = {}
    secs: dict[str, dict[float, float]] = {}
    for eps in EPS:
        runs = {**attacks(eps, args), "torchattacks AutoAttack": None}
        for label, attack in runs.items():
            t0 = time.perf_counter()
            robust = (peer(clf, eps, args, xs, ys) if attack is None else
                      ~run_batched(attack, clf, xs, ys, 256).success)
            secs.setdefault(label, {})[eps] = time.perf_counter() - t0
            acc.setdefault(label, {})[eps] = float(robust.sum()) / n
            print(f"  {name} eps={eps} {label}: {acc[label][eps]:.3f} ({secs[label][eps]:.0f} s)", flush=True)
    rows = [f"| {name} | clean | {float(correct.float().mean()):.3f} | | |"]
    rows += [f"| {name} | {label} | " + " | ".join(f"{acc[label][e]:.3f} ({secs[label][e]:.0f} s)" for e in EPS) + " |"
             for label in acc]
    ens = acc["AutoAttack (ours)"]
    singles = [k for k in acc if k not in ("AutoAttack (ours)", "torchattacks AutoAttack")]
    below_all = all(ens[e] <= acc[k][e] for k in singles for e in EPS)
    below_peer = all(ens[e] <= acc["torchattacks AutoAttack"][e] for e in EPS)
    check = (f"{name}: ensemble at or below every single attack at every eps: {below_all}; at or below "
             f"torchattacks' AutoAttack: {below_peer}")
    return rows, check


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100, help="APGD iterations (the paper: 100)")
    ap.add_argument("--fab-steps", type=int, default=100, help="FAB-T iterations (the paper: 100)")
    ap.add_argument("--queries", type=int, default=5000, help="Square queries (the paper: 5000)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="standard,pgd-at")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    standard, _, test, _, _ = mnist_demo_model()
    data = test.subset(range(args.n))
    models = {"standard": lambda: standard, "pgd-at": lambda: adversarially_trained_mnist()[0]}
    out = ["| model | attack | eps=0.1 | eps=0.2 | eps=0.3 |", "|---|---|---|---|---|"]
    checks = []
    for name in args.models.split(","):
        clf = Classifier(models[name](), num_classes=10, channels=1, name=name)
        rows, check = table(name, clf, data.x, data.y, args)
        out += rows
        checks.append(check)
    print("\n".join(out + [""] + checks))


if __name__ == "__main__":
    main()
