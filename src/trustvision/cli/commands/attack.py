"""``trustvision attack NAME``: one attack on a sample, saved as ``.npz`` + PNG grid + JSON summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import torch
import typer

from ...errors import TrustVisionError
from ..console import console
from ..options import MAX_PIXELS, BatchOpt, DataArgs, DataOpt, MaxPixelsOpt, ModelArgs, OutOpt, SeedOpt

if TYPE_CHECKING:
    from ...data import Dataset
    from ...models import Classifier


def attack(name: Annotated[str, typer.Argument(help="fgsm | pgd | cw | deepfool")], model: ModelArgs, data: DataOpt,
           out: OutOpt = Path("trustvision-attack"),
           eps: Annotated[Optional[float], typer.Option(help="budget (fgsm/pgd)")] = None,
           norm: Annotated[Optional[str], typer.Option(help="linf | l2")] = None,
           steps: Annotated[Optional[int], typer.Option(help="iterations")] = None,
           target: Annotated[Optional[int], typer.Option(help="target class (targeted attack)")] = None,
           batch_size: BatchOpt = 128, n: Annotated[int, typer.Option("--n", help="images to attack")] = 64,
           seed: SeedOpt = 0, max_pixels: MaxPixelsOpt = MAX_PIXELS) -> None:
    """Run one attack; save adversarial examples (.npz) and a PNG grid (original | adversarial | perturbation)."""
    classifier = model.load()
    opts = {k: v for k, v in {"eps": eps, "norm": norm, "steps": steps, "seed": seed}.items() if v is not None}
    ds = DataArgs(data, n=n, seed=seed, max_pixels=max_pixels).load(classifier)
    summary = run_single_attack(name, opts, classifier, ds, out, target=target, batch_size=batch_size)
    console.print(summary)


def run_single_attack(name: str, options: dict, classifier: "Classifier", data: "Dataset", out: Path, *,
                      target: int | None = None, batch_size: int = 128) -> dict:
    """Attack every image of ``data`` (N, C, H, W) and write ``OUT/NAME.npz``, ``OUT/NAME.png``, ``OUT/NAME.json``.

    The ``.npz`` holds ``x``, ``x_adv`` (N, C, H, W), ``y``, ``pred_clean``, ``pred_adv``, ``success`` and
    ``norms`` (N,).  Returns the summary dictionary (success rate, clean/robust accuracy, mean norm, queries).
    """
    from ...attacks import ATTACKS, make_attack, run_batched
    from ...report import figures
    from ...results import clean_json
    accepted = getattr(ATTACKS.get(name), "__dataclass_fields__", {})     # unknown name: a one-line error
    opts = {k: v for k, v in options.items() if k in accepted or k != "seed"}
    attack = make_attack(name, **opts)
    if target is not None and not 0 <= target < classifier.num_classes:
        raise TrustVisionError(f"--target {target}: must lie in [0, {classifier.num_classes - 1}]")
    out.mkdir(parents=True, exist_ok=True)
    targets = None if target is None else torch.full_like(data.y, target)
    res = run_batched(attack, classifier, data.x, data.y, batch_size, target=targets)
    with torch.inference_mode():
        p_clean = classifier.predict(data.x).softmax(1).cpu()
        p_adv = classifier.predict(res.x_adv).softmax(1).cpu()
    pred_clean, pred_adv = p_clean.argmax(1), p_adv.argmax(1)
    np.savez_compressed(out / f"{name}.npz", x=data.x.numpy(), x_adv=res.x_adv.numpy(), y=data.y.numpy(),
                        pred_clean=pred_clean.numpy(), pred_adv=pred_adv.numpy(), success=res.success.numpy(),
                        norms=res.norms.numpy())
    figures.example_grid(data.x, res.x_adv, data.y, pred_clean, pred_adv, p_clean.amax(1), p_adv.amax(1),
                         classifier.labels, out / f"{name}.png")
    correct = pred_clean == data.y
    summary = {"attack": attack.describe(), "target": target, "n": len(data),
               "clean_accuracy": float(correct.float().mean()),
               "robust_accuracy": float((correct & (pred_adv == data.y)).float().mean()),
               "success_rate": float(res.success.float().mean()),
               "mean_norm_successful": float(res.norms[res.success].mean()) if bool(res.success.any()) else None,
               "queries_per_image": float(res.queries.float().mean()),
               "files": [f"{name}.npz", f"{name}.png", f"{name}.json"]}
    (out / f"{name}.json").write_text(json.dumps(clean_json(summary), indent=2))
    return summary
