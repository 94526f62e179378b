"""``trustvision explain``: CAMs, faithfulness, clusters of attention and attention under attack.

Runs the ``clean`` and ``explain`` audit sections on images (N, C, H, W) in [0, 1] and writes
``results.json``, ``report.html``, the figures and ``explain_maps.npz`` into ``--out``.  See ``docs/explain.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import note, run_audit
from ..options import (MAX_PIXELS, BatchOpt, DataArgs, DataOpt, MaxPixelsOpt, ModelArgs, NoResumeOpt, OutOpt, OutputArgs,
                       SeedOpt, SkipBadOpt)


def explain(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-explain"),
            groups: Annotated[Optional[Path], typer.Option(help="CSV 'image,group': row index or image path -> group")] = None,
            method: Annotated[str, typer.Option(help="gradcam | gradcam++ | layercam | hirescam")] = "gradcam++",
            clusters: Annotated[str, typer.Option(help="'auto' (silhouette) or a number of clusters")] = "auto",
            layer: Annotated[Optional[str], typer.Option(help="target layer, dotted path (default: last conv block)")] = None,
            target: Annotated[str, typer.Option(help="what the maps explain: pred (predicted class) | label (true "
                                                     "class) | class:K | margin (predicted class minus the best "
                                                     "other) | margin:label | score:K (regression output K) | adv "
                                                     "(the class --attack pushes each image to)")] = "pred",
            attack: Annotated[str, typer.Option(help="attack for attention under attack (pgd, fgsm, pgd-l2, cw, "
                                                     "deepfool...) or 'none'")] = "pgd",
            eps: Annotated[Optional[str], typer.Option(help="attack budget, e.g. 8/255 (default: the attack's)")] = None,
            steps: Annotated[int, typer.Option(help="deletion/insertion steps")] = 28,
            batch_size: BatchOpt = 128, n: Annotated[int, typer.Option("--n", help="images to explain")] = 500,
            seed: SeedOpt = 0, no_resume: NoResumeOpt = False, max_pixels: MaxPixelsOpt = MAX_PIXELS,
            skip_bad_images: SkipBadOpt = False, output: OutputArgs = OutputArgs()) -> None:
    """Explain the model: Grad-CAM++ maps (of the --target: predicted class by default), deletion/insertion
    faithfulness, k-means clusters of attention (per class and per --groups), attention shift under attack;
    results.json + report.html."""
    from ... import AuditConfig
    from ...evaluation.sections.explain import ExplainConfig
    from ...explain import parse_target, read_groups
    spec = parse_target(target)
    if spec.kind == "adv" and attack.lower() == "none":     # refused before any work
        raise TrustVisionError("--target adv explains the class of an adversarial example: give an --attack")
    classifier = model.load()
    if spec.index is not None and spec.index >= classifier.num_classes:
        raise TrustVisionError(f"--target {target}: the model has {classifier.num_classes} outputs "
                               f"(0..{classifier.num_classes - 1})")
    ds = DataArgs(data, max_pixels=max_pixels, skip_bad=skip_bad_images).load(classifier)
    labels_per_image = read_groups(groups, len(ds), ds.paths) if groups else None
    idx = ds.sample_indices(n, seed)      # keep the indices so group labels follow their images
    ds = ds.subset(idx)
    budget = parse_numbers(eps, "--eps")
    if budget is not None and len(budget) != 1:
        raise TrustVisionError(f"--eps: expected one number, got {eps!r}")
    cfg_explain = ExplainConfig(method=method, layer=layer, target=target, max_images=None, clusters=clusters,
                                steps=steps, attack=None if attack.lower() == "none" else attack,
                                attack_options={} if budget is None else {"eps": budget[0]}, seed=seed,
                                groups=None if labels_per_image is None else [labels_per_image[i] for i in idx.tolist()],
                                groups_source=str(groups) if groups else "")
    cfg = AuditConfig(sections=["clean", "explain"], n_images=None, batch_size=batch_size, seed=seed,
                      explain=cfg_explain, resume=not no_resume)
    code = run_audit(classifier, ds, cfg, out, data, output=output)
    note(output, f"explain maps, clusters and figures: {out}")
    raise typer.Exit(code)
