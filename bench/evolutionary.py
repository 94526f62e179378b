"""Benchmark: trustvision's batched pixel attack (differential evolution) against ART and torchattacks.

Same model, same images, same number of pixels ``th``, same population and generations for every
library; each library's output is judged by the same classifier.  ART's ``PixelAttack`` fixes its
population at ``max(1, 400 // D) * D`` (``D = th * (2 + C)`` genes; 399 for one grey pixel), so every
library runs with that population (torchattacks' ``popsize`` is set so that its ``popsize // D * D``
is the same).  The peers attack one image at a time (scipy-style DE: best1bin, dithered F, no
crossover, early stop when the fittest member fools); trustvision evolves all images' populations
together (DE/rand/1, F = 0.5, no crossover, early stop when any member fools).

Reports seconds per image until adversarials *and* verdicts exist (a peer needs one more forward pass
on ``x_adv``, timed), the ratio ``peer / ours`` (> 1: trustvision is faster), success rates and the
largest L0 (changed pixels) of each library's output.

    OMP_NUM_THREADS=1 python bench/evolutionary.py                 # CPU, MNIST CNN, 16 images
    python bench/evolutionary.py --device cuda --n 256 --generations 100

Writes ``bench/results/evolutionary-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch
from attacks import PixelModel, sync  # bench/attacks.py
from common import device_name, load_average, write_results  # bench/common.py
from floor import floor_rates, share  # bench/floor.py
from torch import nn

from trustvision.attacks import PixelAttack, perturbation_norms
from trustvision.models.classifier import Classifier


def mnist(device: torch.device, n: int):
    """(classifier, x (n,1,28,28), y (n,)): the demo MNIST CNN and its first n correctly classified test images."""
    from trustvision.training import mnist_demo_model
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, device=device, name="mnist-smallcnn")
    pred = clf.predict(test.x).argmax(1).cpu()
    idx = (pred == test.y).nonzero()[:n, 0]
    return clf, test.x[idx].to(device), test.y[idx].to(device)


def runners(clf: Classifier, x: torch.Tensor, th: int, pop: int, gens: int, fb: int | None):
    """lib -> run(x, y) returning x_adv, for one setting."""
    import torchattacks
    from art.attacks.evasion import PixelAttack as ArtPixel
    from art.estimators.classification import PyTorchClassifier
    est = PyTorchClassifier(PixelModel(clf), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=clf.num_classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if x.device.type == "cuda" else "cpu")
    ours = PixelAttack(th=th, pop_size=pop, generations=gens, forward_batch=fb)
    art = ArtPixel(est, th=th, es=1, max_iter=gens, verbose=False)
    ta = torchattacks.OnePixel(PixelModel(clf), pixels=th, steps=gens, popsize=pop,
                               inf_batch=fb or (4096 if x.device.type == "cuda" else 256))
    return {"trustvision": lambda xs, ys: ours(clf, xs, ys),
            "art": lambda xs, ys: torch.as_tensor(art.generate(x=xs.cpu().numpy(), y=ys.cpu().numpy()),
                                                  device=xs.device),
            "torchattacks": lambda xs, ys: ta(xs, ys)}


def measure(run, clf: Classifier, x, y, verdicts: bool) -> tuple[dict, torch.Tensor]:
    """Time ``run`` once on (x, y) (DE runs take seconds: one timing is enough) and judge its output."""
    sync(x.device)
    t0 = time.perf_counter()
    out = run(x, y)
    sync(x.device)
    t1 = time.perf_counter()
    x_adv = out.x_adv if hasattr(out, "x_adv") else out
    ok = clf.predict(x_adv).argmax(1) != y                 # the peers' verdicts (ours come with the result)
    sync(x.device)
    t2 = time.perf_counter()
    total = (t2 - t0) if verdicts else (t1 - t0)
    l0 = perturbation_norms(x_adv - x, "l0")
    res = {"n": len(x), "sec_per_image": total / len(x), "attack_only_sec_per_image": (t1 - t0) / len(x),
           "success": float(ok.float().mean()), "max_l0": int(l0.max()) if len(l0) else 0}
    if hasattr(out, "queries"):
        res["mean_queries"] = float(out.queries.float().mean())
        assert torch.equal(out.success.cpu(), ok.cpu()), "trustvision's verdicts disagree with the classifier"
    return res, x_adv


def table(results: list[dict]) -> str:
    head = ("| th (pixels) | population | generations | lib | n | s / image | ratio peer/ours | success "
            "| max L0 | mean queries |")
    lines = [head, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for e in results:
        for lib, r in e["libs"].items():
            ratio = "1 (ref)" if lib == "trustvision" else f"{r['ratio_peer_over_ours']:.2f}"
            q = f"{r['mean_queries']:.0f}" if "mean_queries" in r else "–"
            lines.append(f"| {e['th']} | {e['pop']} | {e['generations']} | {lib} | {r['n']} "
                         f"| {r['sec_per_image']:.3f} | {ratio} | {r['success']:.3f} | {r['max_l0']} | {q} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=16, help="images")
    p.add_argument("--th", default="1,3", help="comma list of pixel counts")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--forward-batch", type=int, default=None, help="ours (and torchattacks' inf_batch)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import art
    import torchattacks
    meta = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "torchattacks": torchattacks.__version__,
            "art": art.__version__, "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average_1min": load_average(), "n": args.n,
            "generations": args.generations, "forward_batch": args.forward_batch}
    print(f"# evolutionary benchmark {meta}", flush=True)
    clf, x, y = mnist(device, args.n)
    results = []
    t_all = time.perf_counter()
    for th in [int(v) for v in args.th.split(",")]:
        d = th * (2 + x.shape[1])
        pop = max(5, max(1, 400 // d) * d)                   # ART's rule, used by every library
        entry = {"model": "mnist", "th": th, "pop": pop, "generations": args.generations, "libs": {}}
        run = runners(clf, x, th, pop, args.generations, args.forward_batch)
        for lib, fn in run.items():
            if lib == "trustvision":
                fn(x[:1], y[:1])                              # warm-up (lazy init)
            r, _ = measure(fn, clf, x, y, verdicts=lib != "trustvision")
            entry["libs"][lib] = r
            print(f"  th={th} pop={pop} {lib:12s} {r['sec_per_image']:.3f} s/img success={r['success']:.3f} "
                  f"max L0={r['max_l0']}", flush=True)
        ref = entry["libs"]["trustvision"]["sec_per_image"]
        ours = entry["libs"]["trustvision"]
        fb = args.forward_batch or (4096 if device.type == "cuda" else 256)
        floor = floor_rates(clf, x[torch.arange(fb) % len(x)], repeats=3, backward=False)["forward"]
        rate = ours["mean_queries"] / ours["attack_only_sec_per_image"]          # candidate images forwarded / s
        ours.update(forward_floor_per_s=floor, forwards_per_s=rate, share_of_floor=rate / floor)
        print(f"  th={th} trustvision forwards {rate:.0f} img/s at batch {fb}: {share(rate, floor)} "
              f"({floor:.0f} img/s)", flush=True)
        for lib, r in entry["libs"].items():
            if lib != "trustvision":
                r["ratio_peer_over_ours"] = r["sec_per_image"] / ref
        results.append(entry)
    meta["total_seconds"] = round(time.perf_counter() - t_all, 1)
    md = table(results) + "\n\n" + "\n".join(
        f"- th={e['th']}: trustvision forwards {e['libs']['trustvision']['forwards_per_s']:.0f} candidate images/s, "
        f"{100 * e['libs']['trustvision']['share_of_floor']:.0f} % of the forward floor "
        f"({e['libs']['trustvision']['forward_floor_per_s']:.0f} img/s, bench/floor.py)" for e in results)
    print("\n" + md)
    write_results(args.out, "evolutionary", meta, device,
        f"# Evolutionary (pixel) attack benchmark {meta['date']}\n\n"
        f"- device: {meta['device_name']} ({meta['device']}, {meta['threads']} threads, "
        f"load average {meta['load_average_1min']} at start)\n"
        f"- torch {meta['torch']}, torchattacks {meta['torchattacks']}, ART {meta['art']}\n"
        f"- MNIST CNN, the first {args.n} correctly classified test images, {args.generations} generations; "
        f"population = ART's fixed rule max(1, 400 // D) * D for every library; total {meta['total_seconds']} s\n"
        "- s / image = time until adversarials *and* verdicts exist (peers: + one timed forward on x_adv); "
        "ratio = peer / trustvision (> 1: trustvision faster); success judged by the same classifier\n"
        "- algorithms: trustvision DE/rand/1, F = 0.5, Gaussian colours (Su et al.), stops an image when any "
        "candidate fools; ART and torchattacks: scipy-style best1bin, F dithered in [0.5, 1), stop when the "
        "fittest candidate fools, one image at a time\n\n" + md + "\n", results)


if __name__ == "__main__":
    np.random.seed(0)                                         # the peers' DE draws from NumPy's global RNG
    torch.manual_seed(0)
    main()
