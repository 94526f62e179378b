"""Benchmark: the demo's two costliest parts, CW and the convergence check, in variants (CPU seconds, results).

Runs on the demo's audit sample (the cached demo CNN, 200 held-out digits, seed 0; the correctly classified
ones are attacked), one torch thread, and prints CPU seconds (``time.process_time``), gradient counts and
robust accuracies (of all 200 images) so that cheaper demo settings can be judged by their conclusions
(docs/speed.md, "The demo"):

    python bench/demo_parts.py cw '{"binary_search_steps":5,"steps":100,"lr":0.05}' \
        '{"binary_search_steps":3,"steps":100,"lr":0.05,"initial_const":0.1}'
    python bench/demo_parts.py conv 0.1 200x3 100x2 80x2 120x1    # base PGD-40 at eps 0.1 vs strong STEPSxRESTARTS
    python bench/demo_parts.py earlystop 0.05 0.1 0.3              # PGD-40 L-inf with and without early stop

GPU: add ``--device cuda`` support before using it there (CPU only today).
"""
import sys, time, json, torch
torch.set_num_threads(1)
from trustvision.training import mnist_demo_model
from trustvision.models import Classifier
from trustvision.attacks import PGD, CW
from trustvision.attacks.runner import run_batched
module, _, test, path, cached = mnist_demo_model(seed=0)
assert cached
clf = Classifier(module, num_classes=10, channels=1, labels=[str(i) for i in range(10)], device="cpu", name="demo")
data = test.conform(1, 10).sample(200, 0)
with torch.inference_mode():
    pred = clf(data.x).argmax(1)
correct = pred == data.y
idx = correct.nonzero()[:, 0]
xs, ys = data.x[idx], data.y[idx]
print("clean", float(correct.float().mean()), len(idx), flush=True)
what = sys.argv[1]
eps_l2 = [0.5, 1.0, 1.5, 2.0, 3.0]
if what == "cw":
    for spec in sys.argv[2:]:
        kw = json.loads(spec)
        t = time.process_time()
        res = run_batched(CW(**kw), clf, xs, ys, 128, keep=("const",))
        cpu = time.process_time() - t
        accs = [round(float(res.robust_at(e, torch.ones(len(idx), dtype=torch.bool)).sum()) / 200, 3) for e in eps_l2]
        c = res.extras["const"][res.success]
        print("CW", kw, "cpu %.1f" % cpu, "succ", int(res.success.sum()), "grads", int(res.gradients.sum()),
              "acc", accs, "const q", [round(float(v), 4) for v in c.quantile(torch.tensor([0., .1, .5, .9, 1.]))], flush=True)
elif what == "conv":
    e = float(sys.argv[2])
    t = time.process_time()
    base = ~run_batched(PGD(eps=e, norm="linf", steps=40, seed=0), clf, xs, ys, 128).success
    print("base", e, float(base.float().mean()), "cpu %.1f" % (time.process_time() - t), flush=True)
    for spec in sys.argv[3:]:
        steps, restarts = map(int, spec.split("x"))
        t = time.process_time()
        r = run_batched(PGD(eps=e, norm="linf", steps=steps, restarts=restarts, seed=1), clf, xs, ys, 128)
        strong = float((~r.success).float().mean())
        print("strong", spec, strong, "diff %.3f" % (float(base.float().mean()) - strong), "grads", int(r.gradients.sum()),
              "cpu %.1f" % (time.process_time() - t), flush=True)
elif what == "earlystop":
    for e in map(float, sys.argv[2:]):
        for early in (False, True):
            t = time.process_time()
            r = run_batched(PGD(eps=e, norm="linf", steps=40, seed=0, early_stop=early), clf, xs, ys, 128)
            print("eps", e, "early_stop", early, "succ", int(r.success.sum()), "grads", int(r.gradients.sum()),
                  "cpu %.2f" % (time.process_time() - t), flush=True)
