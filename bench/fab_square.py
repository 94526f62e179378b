"""Benchmark: trustvision's FAB-T and Square against torchattacks' FAB and Square, in one process.

Same model, same images, same budgets and iteration/query counts on both sides; each library's output
is judged by the same classifier.  Reports seconds per image until adversarials *and* verdicts exist
(trustvision returns success/logits; torchattacks needs one more forward pass on ``x_adv``, which is
timed), the ratio ``torchattacks / ours`` (> 1: trustvision is faster), robust accuracy, the largest
perturbation over ``eps`` (must be <= 1) and, for ours, queries and gradients per image.

FAB-T is AutoAttack's configuration (9 target classes, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``,
one restart) with ``--fab-steps`` iterations (the paper: 100); torchattacks runs ``FAB(multi_targeted=True)``.
Square runs ``--queries`` queries (the paper: 5000 for AutoAttack, p_init 0.8, margin loss).

    python bench/fab_square.py --n 32 --fab-steps 20 --queries 1000          # the CPU run in bench/results/
    python bench/fab_square.py --device cuda --bf16 --channels-last --compile --models mnist,resnet18 \\
        --n 512 --fab-steps 100 --queries 5000                                # GPU

Writes ``bench/results/fab-square-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse

import torch

from attacks import PixelModel, build_models, timed_run     # bench/attacks.py: models and timing, shared
from common import add_classifier_options, add_run_options, setup, versus, with_result, write_results
from trustvision import attacks as tv
from trustvision.models.classifier import Classifier


def rows(eps_inf: float, eps_2: float, args) -> list[tuple]:
    """(row name, norm, eps, ours, torchattacks factory(model))."""
    import torchattacks as ta
    s, q = args.fab_steps, args.queries
    return [
        ("fab-t-linf", "linf", eps_inf, tv.FAB(eps=eps_inf, norm="linf", steps=s, targets=9),
         lambda m: ta.FAB(m, norm="Linf", eps=eps_inf, steps=s, multi_targeted=True, n_classes=10)),
        ("fab-t-l2", "l2", eps_2, tv.FAB(eps=eps_2, norm="l2", steps=s, targets=9),
         lambda m: ta.FAB(m, norm="L2", eps=eps_2, steps=s, multi_targeted=True, n_classes=10)),
        ("square-linf", "linf", eps_inf, tv.Square(eps=eps_inf, norm="linf", n_queries=q, seed=0),
         lambda m: ta.Square(m, norm="Linf", eps=eps_inf, n_queries=q, seed=0)),
        ("square-l2", "l2", eps_2, tv.Square(eps=eps_2, norm="l2", n_queries=q, seed=0),
         lambda m: ta.Square(m, norm="L2", eps=eps_2, n_queries=q, seed=0)),
    ]


def measure(clf: Classifier, run, x, y, norm: str, eps: float, ours: bool) -> dict:
    run(x[:2], y[:2])                                            # warm-up (lazy init, compile)
    x_adv, sec, sec_v = timed_run(lambda xs, ys: run(xs, ys), clf, x, y, verdicts=not ours)
    if ours:
        x_adv, res = x_adv
    x_adv = torch.as_tensor(x_adv, device=x.device)
    robust = clf.predict(x_adv).argmax(1) == y
    out = {"n": len(x), "sec_per_image": sec_v / len(x), "robust_accuracy": float(robust.float().mean()),
           "max_norm_over_eps": float(tv.perturbation_norms(x_adv - x, norm).max()) / eps}
    if ours:
        out["mean_queries"] = float(res.queries.float().mean())
        out["mean_gradients"] = float(res.gradients.float().mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_classifier_options(p)
    p.add_argument("--fab-steps", type=int, default=100, help="FAB iterations per target (the paper: 100)")
    p.add_argument("--queries", type=int, default=5000, help="Square queries per image (AutoAttack: 5000)")
    add_run_options(p)
    args = p.parse_args()
    device, opts, meta = setup(args, "fab_square.py", fab_steps=args.fab_steps, queries=args.queries)
    results = []
    for name, clf, x, y, eps_inf, eps_2 in build_models(args.models.split(","), device, opts, args.n):
        peer = PixelModel(clf, **opts)
        for row, norm, eps, ours, make_peer in rows(eps_inf, eps_2, args):
            a_peer = make_peer(peer)
            r_ours = measure(clf, lambda xs, ys: with_result(ours, clf, xs, ys), x, y, norm, eps, True)
            r_peer = measure(clf, lambda xs, ys: a_peer(xs, ys), x, y, norm, eps, False)
            print(versus(f"{name:9s} {row:12s}", r_ours, r_peer), flush=True)
            results.append({"model": name, "attack": row, "eps": eps, "libs": {"trustvision": r_ours,
                                                                             "torchattacks": r_peer}})
    write_results(args.out, "fab-square", meta, device, _markdown(meta, results), results)


def _markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# FAB-T and Square vs torchattacks — {meta['date']}, {meta['device_name']} ({meta['device']})", "",
             f"`{meta['command']}` — {meta['n']} images, FAB {meta['fab_steps']} steps x 9 targets, Square "
             f"{meta['queries']} queries; torch {meta['torch']}, {meta['threads']} threads, load average "
             f"{meta['load_average']}.", "",
             "| model | attack | eps | ours ms/img | torchattacks ms/img | ratio peer/ours | robust acc ours "
             "| robust acc torchattacks | max norm/eps ours | queries/img ours | gradients/img ours |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in results:
        o, t = e["libs"]["trustvision"], e["libs"]["torchattacks"]
        lines.append(f"| {e['model']} | {e['attack']} | {e['eps']:g} | {o['sec_per_image'] * 1e3:.1f} "
                     f"| {t['sec_per_image'] * 1e3:.1f} | {t['ratio_peer_over_ours']:.2f} | {o['robust_accuracy']:.3f} "
                     f"| {t['robust_accuracy']:.3f} | {o['max_norm_over_eps']:.4f} | {o['mean_queries']:.0f} "
                     f"| {o['mean_gradients']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
