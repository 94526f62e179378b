"""``trustvision explain``: CAMs, faithfulness, clusters of attention and attention under attack.

Registered on :data:`trustvision.cli.app.app` (imported at the end of :mod:`trustvision.cli.app`).
Runs the ``clean`` and ``explain`` audit sections and writes ``results.json``, ``report.html``,
the figures and ``explain_maps.npz`` into ``--out``.  See ``docs/explain.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..app import (ArchOpt, BatchOpt, ChannelsOpt, ClassesOpt, CLOpt, CompileOpt, DataOpt, DeviceOpt, LabelsOpt, MeanOpt,
                  ModelOpt, OutOpt, PickleOpt, PrecisionOpt, SeedOpt, SizeOpt, StdOpt, WeightsOpt, _load, _run_audit,
                  app, console, user_errors)


@app.command()
@user_errors
def explain(model: ModelOpt, data: DataOpt, out: OutOpt = Path("trustvision-explain"),
            groups: Annotated[Optional[Path], typer.Option(help="CSV 'image,group': row index or image path -> group")] = None,
            method: Annotated[str, typer.Option(help="gradcam | gradcam++ | layercam | hirescam")] = "gradcam++",
            clusters: Annotated[str, typer.Option(help="'auto' (silhouette) or a number of clusters")] = "auto",
            layer: Annotated[Optional[str], typer.Option(help="target layer, dotted path (default: last conv block)")] = None,
            target: Annotated[str, typer.Option(help="explain the 'predicted' or the 'true' class")] = "predicted",
            attack: Annotated[str, typer.Option(help="attack for attention under attack (pgd, fgsm, pgd-l2, cw, "
                                                     "deepfool...) or 'none'")] = "pgd",
            eps: Annotated[Optional[str], typer.Option(help="attack budget, e.g. 8/255 (default: the attack's)")] = None,
            steps: Annotated[int, typer.Option(help="deletion/insertion steps")] = 28,
            weights: WeightsOpt = None, arch: ArchOpt = None, num_classes: ClassesOpt = None,
            channels: ChannelsOpt = None, input_size: SizeOpt = None, mean: MeanOpt = None, std: StdOpt = None,
            labels: LabelsOpt = None, trust_pickle: PickleOpt = False, device: DeviceOpt = "cpu",
            precision: PrecisionOpt = "fp32", channels_last: CLOpt = False, compile: CompileOpt = False,
            batch_size: BatchOpt = 128, n: Annotated[int, typer.Option("--n", help="images to explain")] = 500,
            seed: SeedOpt = 0,
            no_resume: Annotated[bool, typer.Option("--no-resume", help="recompute finished sections")] = False):
    """Explain the model: Grad-CAM++ maps, deletion/insertion faithfulness, k-means clusters of attention
    (per class and per --groups), attention shift under attack; results.json + report.html."""
    from ...auditor import AuditConfig
    from ..app import _floats
    from ...data import load_dataset
    from ...explain import read_groups
    from ...evaluation.sections.explain import ExplainConfig
    clf = _load(model, weights, arch, num_classes, channels, input_size, mean, std, labels, trust_pickle, device,
                precision, channels_last, compile)
    ds = load_dataset(data, size=clf.input_size).conform(clf.channels, clf.num_classes)
    labels_per_image = read_groups(groups, len(ds), ds.paths) if groups else None
    idx = ds.sample_indices(n, seed)      # keep the indices so group labels follow their images
    ds = ds.subset(idx)
    opts = {}
    if eps is not None:
        opts["eps"] = _floats(eps, "--eps")[0]
    cfg_explain = ExplainConfig(method=method, layer=layer, target=target, max_images=None, clusters=clusters,
                                steps=steps, attack=None if attack.lower() == "none" else attack,
                                attack_options=opts, seed=seed,
                                groups=None if labels_per_image is None else [labels_per_image[i] for i in idx.tolist()],
                                groups_source=str(groups) if groups else "")
    cfg = AuditConfig(sections=["clean", "explain"], n_images=None, batch_size=batch_size, seed=seed,
                      explain=cfg_explain, resume=not no_resume)
    code = _run_audit(clf, ds, cfg, out, data)
    console.print(f"explain maps, clusters and figures: {out}")
    raise typer.Exit(code)
