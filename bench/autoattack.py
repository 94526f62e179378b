"""Benchmark: trustvision's AutoAttack ensemble against torchattacks' ``AutoAttack``, in one process.

Same model, same images, same budget and the same member settings on both sides (APGD-CE -> APGD-T ->
FAB-T -> Square, "standard" version; ``--steps`` APGD iterations, ``--fab-steps`` FAB iterations,
``--queries`` Square queries: the paper's 100 / 100 / 5000 by default; torchattacks' members are set to the
same numbers, its own defaults being 10 APGD and 10 FAB iterations).  Reports seconds per image until
adversarials *and* verdicts exist (torchattacks needs one more forward pass, which is timed), the ratio
``torchattacks / ours`` (> 1: trustvision is faster), robust accuracy, the largest perturbation over
``eps``, and per image the forward passes and gradient evaluations that reached the model (counted by the
same wrapper around the network for both libraries) besides our own per-image counts and the per-member
contributions.

    python bench/autoattack.py --n 32 --eps 0.1,0.2 --threads 1          # the CPU run in bench/results/
    python bench/autoattack.py --device cuda --bf16 --channels-last --compile --models mnist,resnet18 \\
        --n 1000 --eps 0.1,0.2,0.3                                        # GPU (resnet18: eps 8/255 fixed)

Writes ``bench/results/autoattack-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from attacks import build_models, timed_run     # bench/attacks.py: models and timing, shared
from common import add_classifier_options, add_run_options, setup, versus, with_result, write_results
from trustvision import attacks as tv
from trustvision.models.classifier import Classifier


class Counter(nn.Module):
    """Counts images forwarded and images whose forward pass builds a graph to the input (gradient evaluations)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.forwards, self.gradients = net, 0, 0

    def forward(self, x):
        self.forwards += len(x)
        self.gradients += len(x) if (x.requires_grad and torch.is_grad_enabled()) else 0
        return self.net(x)


def _counted(clf: Classifier, opts: dict) -> tuple[Classifier, Counter]:
    """A Classifier like ``clf`` (same normalisation and options) over a :class:`Counter` around a copy of its network."""
    counter = Counter(copy.deepcopy(clf.module))
    out = Classifier(counter, num_classes=clf.num_classes, channels=clf.channels,
                     mean=None if clf.mean is None else clf.mean.flatten().tolist(),
                     std=None if clf.std is None else clf.std.flatten().tolist(), device=clf.device, **opts)
    return out, counter


def peer_autoattack(model: nn.Module, norm: str, eps: float, args):
    import torchattacks as ta
    aa = ta.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", n_classes=10,
                       seed=0)
    apgd, apgdt, fab, square = aa._autoattack.attacks
    apgd.steps = apgdt.steps = args.steps
    fab.steps, square.n_queries = args.fab_steps, args.queries
    return aa


def measure(run, clf: Classifier, counter: Counter, x, y, norm: str, eps: float, ours: bool) -> dict:
    counter.forwards = counter.gradients = 0
    x_adv, sec, sec_v = timed_run(run, clf, x, y, verdicts=not ours)
    res = None
    if ours:
        x_adv, res = x_adv
    fwd, grads = counter.forwards, counter.gradients
    x_adv = torch.as_tensor(x_adv, device=x.device).detach()
    robust = clf.predict(x_adv).argmax(1) == y
    out = {"n": len(x), "sec_per_image": sec_v / len(x), "robust_accuracy": float(robust.float().mean()),
           "max_norm_over_eps": float(tv.perturbation_norms(x_adv - x, norm).max()) / eps,
           "forwards_per_image": fwd / len(x), "gradients_per_image": grads / len(x)}
    if res is not None:
        out.update(reported_queries_per_image=float(res.queries.float().mean()),
                   reported_gradients_per_image=float(res.gradients.float().mean()),
                   contributions=res.extras["contributions"],
                   member_seconds={k: round(v, 3) for k, v in res.extras["member_seconds"].items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_classifier_options(p)
    p.add_argument("--eps", default="0.1,0.2", help="L-inf budgets for mnist (resnet18: 8/255)")
    p.add_argument("--steps", type=int, default=100, help="APGD iterations (the paper: 100)")
    p.add_argument("--fab-steps", type=int, default=100, help="FAB-T iterations (the paper: 100)")
    p.add_argument("--queries", type=int, default=5000, help="Square queries (the paper: 5000)")
    add_run_options(p)
    args = p.parse_args()
    device, opts, meta = setup(args, "autoattack.py", steps=args.steps, fab_steps=args.fab_steps, queries=args.queries)
    results = []
    for name, clf, x, y, eps_inf, _ in build_models(args.models.split(","), device, opts, args.n):
        budgets = [float(e) for e in args.eps.split(",")] if name == "mnist" else [eps_inf]
        ours_clf, ours_count = _counted(clf, opts)
        peer_clf, peer_count = _counted(clf, opts)
        for eps in budgets:
            ours = tv.AutoAttack(eps=eps, norm="linf", steps=args.steps, fab_steps=args.fab_steps,
                                 n_queries=args.queries, seed=0)
            peer = peer_autoattack(peer_clf.as_module(), "linf", eps, args)
            r_o = measure(lambda xs, ys: with_result(ours, ours_clf, xs, ys), ours_clf, ours_count, x, y, "linf",
                          eps, True)
            r_p = measure(lambda xs, ys: peer(xs, ys), peer_clf, peer_count, x, y, "linf", eps, False)
            print(versus(f"{name:9s} eps={eps:<6g}", r_o, r_p) + f" | {r_o['contributions']}", flush=True)
            results.append({"model": name, "eps": eps, "libs": {"trustvision": r_o, "torchattacks": r_p}})
    write_results(args.out, "autoattack", meta, device, _markdown(meta, results), results)


def _markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# AutoAttack (standard, L-inf) vs torchattacks — {meta['date']}, {meta['device_name']} "
             f"({meta['device']})", "",
             f"`{meta['command']}` — {meta['n']} images, APGD {meta['steps']} iterations, FAB-T {meta['fab_steps']} "
             f"iterations x 9 targets, Square {meta['queries']} queries, on both sides; torch {meta['torch']}, "
             f"{meta['threads']} threads, load average {meta['load_average']}.", "",
             "| model | eps | ours ms/img | torchattacks ms/img | ratio peer/ours | robust acc ours | robust acc "
             "torchattacks | forwards/img ours | forwards/img torchattacks | gradients/img ours | gradients/img "
             "torchattacks | max norm/eps ours | broken first by (ours) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in results:
        o, t = e["libs"]["trustvision"], e["libs"]["torchattacks"]
        contrib = ", ".join(f"{k} {v}" for k, v in o["contributions"].items())
        lines.append(f"| {e['model']} | {e['eps']:g} | {o['sec_per_image'] * 1e3:.1f} | {t['sec_per_image'] * 1e3:.1f} "
                     f"| {t['ratio_peer_over_ours']:.2f} | {o['robust_accuracy']:.3f} | {t['robust_accuracy']:.3f} "
                     f"| {o['forwards_per_image']:.0f} | {t['forwards_per_image']:.0f} | {o['gradients_per_image']:.0f} "
                     f"| {t['gradients_per_image']:.0f} | {o['max_norm_over_eps']:.4f} | {contrib} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
