"""Benchmark: UAP generation (fgsm, L∞) — trustvision's batched generator vs ART's UniversalPerturbation, and the floor.

Issue 19's setting: ``--passes`` (5) passes over the same ``--n`` (1 000) MNIST build images, the trained
demo CNN (``mnist_demo_model``), untargeted, L∞ budget ``--eps`` (0.2), FGSM rule with an L∞ sign step of
``0.25 eps`` per image for everybody:

* **trustvision** (default rule, ``step_rule="batched"``): per mini-batch one forward+backward, one fused
  forward of the stepped images and of the sum candidate, one forward of the replay candidate; best of
  ``v``, replay, sum (docs/universal.md);
* **trustvision, step_rule="art"**: the authors' rule batched: the replay of the steps that flip their image;
* **ART** ``UniversalPerturbation(attacker="fgsm", attacker_params={"eps": step}, norm=inf, delta=0)``: one
  image at a time (``max_iter = passes``; ``delta = 0``: every pass runs, as ours with ``stop_rate = 1``).

Times are seconds per image per pass, both wall-clock and CPU time of this process (``time.process_time``:
less sensitive to other jobs on a shared machine); the ratio is ART / ours in one process.  The **floor**
is the model's own cost at the mini-batch size (``bench/floor.py``): one forward+backward plus two
forwards per image (what one pass of ART's algorithm needs at full batch efficiency); "x % of the floor"
is floor time / our time (both wall-clock, in the same process).  ``--profile`` prints where our time goes (cProfile, CPU time, one pass).  Each
``v`` is judged on ``--n-eval`` held-out test images by the same fooling-rate code, with random controls.

    OMP_NUM_THREADS=1 python bench/universal.py --threads 1 --profile          # CPU, one thread
    python bench/universal.py --device cuda --n 10000 --batch-size 256          # GPU (ART runs on the CPU)

Writes ``bench/results/universal-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import cProfile
import copy
import datetime as dt
import io
import pstats
import random
import time

import numpy as np
import torch
from torch import nn

from common import add_run_options, demo_classifier, device_name, load_average, write_results   # bench/common.py
from floor import floor_rates                                  # bench/floor.py
from trustvision.attacks.universal import UniversalPerturbation
from trustvision.evaluation.fooling import fooling_rates
from trustvision.models.classifier import Classifier


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _profile(gen: UniversalPerturbation, clf: Classifier, x: torch.Tensor, top: int = 12) -> str:
    """cProfile (CPU time) of one pass of ``gen``: the ``top`` functions by own time."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    gen.generate(clf, x)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in s.getvalue().splitlines() if line.strip())


def _art(clf: Classifier, x: torch.Tensor, eps: float, step: float, passes: int, seed: int):
    from art.attacks.evasion import UniversalPerturbation as ARTUAP
    from art.estimators.classification import PyTorchClassifier
    est = PyTorchClassifier(clf.as_module(), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=clf.num_classes, clip_values=(0.0, 1.0), device_type="cpu")
    attack = ARTUAP(est, attacker="fgsm", attacker_params={"eps": step}, delta=0.0, max_iter=passes, eps=eps,
                    norm=np.inf, batch_size=64, verbose=False)
    random.seed(seed)          # ART shuffles the image order with Python's global `random`
    np.random.seed(seed)
    attack.generate(x.numpy())
    return torch.from_numpy(np.asarray(attack.noise, dtype=np.float32)).reshape(1, *x.shape[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="build images (the same for every library)")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--n-eval", type=int, default=500, help="held-out evaluation images")
    p.add_argument("--eps", type=float, default=0.2, help="L-inf budget")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="print where one pass of ours spends its time")
    add_run_options(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import art
    clf, train, test = demo_classifier(device)
    x_build = train.sample(args.n, args.seed).x.float()
    x_eval = test.sample(args.n_eval, args.seed).x.float()
    step = 0.25 * args.eps
    command = "OMP_NUM_THREADS=1 python bench/universal.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v not in (None, False)
    ).replace(" True", "")
    meta = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "art": art.__version__,
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "load_average_1min": load_average(), "n": args.n, "passes": args.passes, "n_eval": args.n_eval,
            "eps_linf": args.eps, "step": step, "batch_size": args.batch_size, "command": command,
            "model": "mnist-smallcnn (mnist_demo_model)"}
    print(f"# universal benchmark {meta}", flush=True)

    gens = {f"trustvision ({rule})": UniversalPerturbation(
        method="fgsm", norm="linf", eps=args.eps, step=step, max_passes=args.passes, stop_rate=1.0,
        batch_size=args.batch_size, seed=args.seed, step_rule=rule) for rule in ("batched", "art")}
    for g in gens.values():                                   # warm-up (not timed)
        g.generate(clf, x_build[:2 * args.batch_size])
    fl = floor_rates(clf, x_build[:args.batch_size].to(device))
    floor_s = 1 / fl["forward_backward"] + 2 / fl["forward"]  # seconds per image per pass at the floor
    visits = args.n * args.passes
    rows = []
    for name, g in gens.items():
        res, wall, cpu = _timed(lambda g=g: g.generate(clf, x_build))
        rows.append({"library": name, "v": res.v.cpu(), "wall": wall / visits, "cpu": cpu / visits,
                     "build_fooling_rate": res.curve[-1]})
    clf_cpu = clf if device.type == "cpu" else Classifier(copy.deepcopy(clf.module).cpu(), num_classes=10, channels=1)
    v_art, wall, cpu = _timed(lambda: _art(clf_cpu, x_build, args.eps, step, args.passes, args.seed))
    art_row = {"library": "art", "v": v_art, "wall": wall / visits, "cpu": cpu / visits, "build_fooling_rate": None}
    rows.append(art_row)
    for r in rows:
        f = fooling_rates(clf, x_eval, r["v"].to(device), norm="linf", seed=args.seed)
        r.update(eval_fooling_rate=f["uap"]["fooling_rate"], eval_permuted=f["permuted"]["fooling_rate"],
                 eval_random=f["random"]["fooling_rate"], v_linf=f["v_norm"])
        r["ratio_art_over_ours_wall"] = art_row["wall"] / r["wall"]
        r["ratio_art_over_ours_cpu"] = art_row["cpu"] / r["cpu"]
        r["share_of_floor_wall"] = floor_s / r["wall"]          # the floor is timed by the wall clock too
        del r["v"]
    lines = ["| library | ms / image / pass (wall) | (CPU) | ART / ours (wall) | ART / ours (CPU) | share of the "
             "floor (wall) | eval fooling | permuted ctrl | random ctrl |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['library']} | {1e3 * r['wall']:.2f} | {1e3 * r['cpu']:.2f} | "
                     f"{r['ratio_art_over_ours_wall']:.1f}× | {r['ratio_art_over_ours_cpu']:.1f}× | "
                     f"{'-' if r is art_row else format(r['share_of_floor_wall'], '.0%')} | {r['eval_fooling_rate']:.3f} | "
                     f"{r['eval_permuted']:.3f} | {r['eval_random']:.3f} |")
    table = "\n".join(lines)
    print(table, flush=True)
    meta["floor"] = {"batch": args.batch_size, **fl, "seconds_per_image_pass": floor_s}
    prof = _profile(UniversalPerturbation(method="fgsm", norm="linf", eps=args.eps, step=step, max_passes=1,
                                          stop_rate=1.0, batch_size=args.batch_size, seed=args.seed),
                    clf, x_build) if args.profile else ""
    if prof:
        print(prof)
    md = (f"# Universal perturbation benchmark {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({meta['device']}, {meta['threads']} threads, load average "
          f"{meta['load_average_1min']} at start: a shared machine, so read the ratios of one process); torch "
          f"{meta['torch']}, ART {meta['art']}\n"
          f"- model: {meta['model']}; untargeted, fgsm, L∞ eps {args.eps}, L∞ sign step {step:g} per image; "
          f"{args.passes} passes over the same {args.n} MNIST build images for every library (ART one image at a "
          f"time; ours mini-batches of {args.batch_size}); fooling on {args.n_eval} held-out test images with two "
          f"random controls of the same norm\n"
          f"- floor (bench/floor.py, batch {args.batch_size}): forward {fl['forward']:.0f} img/s, forward+backward "
          f"{fl['forward_backward']:.0f} img/s → one fwd+bwd + two fwd = {1e3 * floor_s:.2f} ms per image per pass\n"
          f"- command: `{command}`\n\n{table}\n\n"
          + (f"Where one pass of ours (default rule) spends its CPU time (cProfile):\n\n```\n{prof}\n```\n" if prof else ""))
    write_results(args.out, "universal", meta, device, md, rows)


if __name__ == "__main__":
    main()
