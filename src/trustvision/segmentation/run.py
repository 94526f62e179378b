"""Run the ``segment`` section for one or several segmenters and write ``results.json`` + ``report.html``.

The flow is the audit's (``docs/architecture.md``): segmenters + data -> :func:`~.section.segment_section`
-> :class:`~trustvision.results.SectionResult` -> ``results.json`` (:func:`~trustvision.results.envelope`)
-> :func:`~trustvision.report.render_report`.  Every finished section is written at once to
``OUT/sections/NAME.json``, stamped (:func:`~trustvision.resume.write_stamped`) with a
:func:`~trustvision.persist.digest` fingerprint of the weights, the segmenter's settings, the data, the
section configuration and the software; a rerun with the same fingerprint resumes instead of recomputing.
Several segmenters (U-Net vs Feedback U-Net, with and without the leak prior) also get a ``segment-compare``
section: one table and one robust-mIoU plot for all of them.  The weights are hashed before and after:
a change is an error (the user's model is never modified).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ModelModifiedError, TrustVisionError
from ..persist import digest, write_json_atomic
from ..progress import Progress, Quiet
from ..results import Figure, SectionResult, Table, clean_json, envelope
from ..resume import environment, read_stamped, write_stamped
from .base import SegDataset, Segmenter
from .leak import LeakPrior
from .section import SegmentConfig, metric_key, segment_section

Say = Callable[[str], None]


def section_name(key: str, single: bool) -> str:
    """``segment`` for a single segmenter, ``segment-<key>`` for each of several."""
    return "segment" if single else f"segment-{key}"


def _resume_or_run(seg: Segmenter, data: SegDataset, cfg: SegmentConfig, out: Path, name: str, fp: str,
                   resume: bool, progress: Progress, say: Say) -> SectionResult:
    """The section saved under ``out/sections/name.json`` with fingerprint ``fp``, else computed and saved."""
    path = out / "sections" / f"{name}.json"
    if resume:
        payload, why = read_stamped(path, fp)
        if why:
            say(f"section {name!r}: {path} {why}; recomputing it")
        if payload is not None:
            try:
                sec = SectionResult.from_dict(payload)
                say(f"resumed section {name!r} from {path}")
                return sec
            except (TypeError, ValueError, KeyError):
                say(f"section {name!r}: {path} does not hold a readable section; recomputing it")
    sec = segment_section(seg, data, cfg, out, name=name, progress=progress)
    sec.config = {**sec.config, "fingerprint": fp}
    write_stamped(path, fp, sec.to_dict())
    return sec


def compare_section(sections: dict[str, SectionResult], labels: list[str], out: Path) -> SectionResult:
    """One table and one robust-mIoU figure over several segmenters' ``segment-*`` sections."""
    from ..report.figures import segmentation as figs
    keys = list(sections)
    eps = sections[keys[0]].config.get("eps_linf", [])
    rounds = max(len(s.metrics.get("miou_per_round", [])) for s in sections.values())
    cols = ["model", "mIoU", *[f"round {r + 1}" for r in range(rounds)], "boundary F1",
            *[f"robust @{e * 255:.3g}/255" for e in eps]]
    rows = []
    for k, s in sections.items():
        m = s.metrics
        per_round = list(m.get("miou_per_round", [])) + [None] * (rounds - len(m.get("miou_per_round", [])))
        rows.append([k, m.get("miou"), *per_round, m.get("boundary_f1"),
                     *[m.get(metric_key(e)) for e in eps]])
    curves = {k: (eps, [s.metrics.get(metric_key(e)) for e in eps]) for k, s in sections.items()}
    figs.robust_miou_curves(curves, out / "figures/segment-compare-robust.png", title="robust mIoU (PGD)")
    figs.per_class_iou_bars({k: list(s.metrics.get("per_class_iou", {}).values()) for k, s in sections.items()},
                            labels, out / "figures/segment-compare-per-class.png", title="per-class IoU")
    metrics = {f"{k}/{what}": s.metrics.get(what) for k, s in sections.items() for what in ("miou", "boundary_f1")}
    n_att = sections[keys[0]].metrics.get("n_attacked")
    return SectionResult(
        name="segment-compare", title="Segmentation: models compared", metrics=metrics,
        tables=[Table(f"mIoU and boundary F1 on all evaluated images; robust mIoU (PGD) on the first {n_att} "
                      "(@0/255: those images, clean)", cols, rows)],
        figures=[Figure("robust mIoU vs L∞ budget, all models", "figures/segment-compare-robust.png",
                        "PGD on the per-pixel cross-entropy; the same images and budgets for every model."),
                 Figure("per-class IoU, all models", "figures/segment-compare-per-class.png", "")],
        config={"models": keys})


def summary_metrics(sections: dict[str, SectionResult], single: bool) -> dict[str, Any]:
    """Flat headline numbers: mIoU, boundary F1 and robust mIoU at the largest budget (per model when several)."""
    out: dict[str, Any] = {}
    for key, s in sections.items():
        m = s.metrics
        eps = max(s.config.get("eps_linf", [0.0]))
        prefix = "" if single else f"{key}/"
        out[f"{prefix}miou"] = m.get("miou")
        out[f"{prefix}boundary_f1"] = m.get("boundary_f1")
        if eps > 0:
            out[f"{prefix}{metric_key(eps)}"] = m.get(metric_key(eps))
    return out


def run_segmentation(segmenters: dict[str, Segmenter], data: SegDataset, cfg: SegmentConfig | None = None,
                     out_dir: str | Path = "trustvision-segment", *, data_spec: str = "", resume: bool = True,
                     progress: Progress | None = None, say: Say | None = None,
                     extra: dict[str, Any] | None = None) -> dict:
    """Evaluate and attack every segmenter on ``data``; write ``results.json`` and ``report.html`` into ``out_dir``.

    Args:
        segmenters: key (e.g. ``"unet"``, ``"feedback-unet"``) -> :class:`Segmenter`.
        data: images (N, C, H, W) in [0, 1] and masks (N, H, W).
        cfg: the section settings (budgets, PGD steps, images attacked).
        extra: more top-level keys of results.json (e.g. ``training``: each model's training history).
    Returns: the results dictionary (the content of results.json).
    """
    cfg, say, progress = cfg or SegmentConfig(), say or (lambda s: None), progress or Quiet()
    if not segmenters:
        raise TrustVisionError("no segmenter to evaluate")
    if len(data) == 0:
        raise TrustVisionError(f"dataset {data.name!r} is empty")
    for key, seg in segmenters.items():
        if seg.num_classes != data.num_classes or seg.channels != data.channels:
            raise TrustVisionError(f"segmenter {key!r} takes {seg.channels} channel(s) and {seg.num_classes} classes "
                                   f"but {data.name} has {data.channels} and {data.num_classes}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrustVisionError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    single = len(segmenters) == 1
    hashes = {k: s.weights_hash() for k, s in segmenters.items()}
    data_fp = digest(data.x, data.masks)
    sections: dict[str, SectionResult] = {}
    for key, seg in segmenters.items():
        name = section_name(key, single)
        fp = digest(hashes[key], seg.describe(), data_fp, data.describe(), cfg.to_dict(), environment(), name)
        sections[name] = _resume_or_run(seg, data, cfg, out, name, fp, resume, progress, say)
    by_key = {k: sections[section_name(k, single)] for k in segmenters}
    if not single:
        sections["segment-compare"] = compare_section(by_key, data.labels, out)
    models = {k: {**s.describe(), "weights_sha256": hashes[k]} for k, s in segmenters.items()}
    model = next(iter(models.values())) if single else {
        "name": " vs ".join(models), "num_classes": data.num_classes, "channels": data.channels, "models": models}
    results = envelope(model=model,
                       data={"spec": data_spec or data.name, **data.describe(), "sha256": data_fp},
                       config=cfg.to_dict(), summary=summary_metrics(by_key, single), sections=sections,
                       **(extra or {}))
    write_json_atomic(out / "results.json", results)
    from ..report import render_report
    render_report(json.loads(json.dumps(clean_json(results))), out)
    for key, seg in segmenters.items():
        if seg.weights_hash() != hashes[key]:
            raise ModelModifiedError(f"segmenter {key!r}: weights changed during the evaluation "
                                     f"(results kept in {out})")
    return results


def fit_segmenter(kind: str, data: SegDataset, out: str | Path | None = None, *, rounds: int = 2,
                  leak_k: int | None = None, embedder: Segmenter | None = None, depth: int = 3, width: int = 16,
                  epochs: int = 10, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, device: str = "cpu",
                  precision: str = "fp32", resume: bool = True, progress: Progress | None = None,
                  name: str | None = None, class_weighting: str = "none") -> tuple[Segmenter, list[dict]]:
    """Train a ``unet`` / ``feedback-unet`` on ``data`` (N, C, H, W) + (N, H, W), optionally with the annotation leak.

    With ``leak_k`` (``--leak knn:K``) the leak's embedder is ``embedder`` (a segmenter trained without a
    prior) or, when None, the same network first trained without the leak (into ``out/embedder``); the
    final network gets K prior channels and is trained on priors retrieved from the *other* training images
    (:meth:`~.leak.LeakPrior.bank_prior`).  Weights are seeded by ``seed``; files as
    :func:`~.train.train_segmenter` (``model.safetensors``, ``checkpoint.safetensors``, ``history.json``,
    ``leak.safetensors``).  ``class_weighting``: the loss's class weights (:func:`~.train.class_weights`).
    Returns the segmenter (``rounds`` rounds at inference) and the training history.
    """
    from .train import build_network, train_segmenter
    out = Path(out) if out is not None else None
    opts = dict(depth=depth, width=width, rounds=rounds)
    train_kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, precision=precision,
                    resume=resume, progress=progress, class_weighting=class_weighting)
    leak = None
    if leak_k:
        if embedder is None:
            embedder, _ = fit_segmenter(kind, data, out / "embedder" if out is not None else None, **opts, **train_kw)
        leak = LeakPrior(embedder.module, data.x, data.masks, data.num_classes, k=leak_k,
                         ignore_index=data.ignore_index, device=device)
    with torch.random.fork_rng():                 # seeded initial weights; the caller's RNG state is kept
        torch.manual_seed(seed)
        net = build_network(kind, data.channels, data.num_classes, prior_channels=data.num_classes if leak else 0,
                            **opts)
    res = train_segmenter(net, data, out=out, leak=leak, **train_kw)
    label = name or (kind + (f" + leak knn:{leak_k}" if leak else ""))
    seg = Segmenter(res.module, num_classes=data.num_classes, channels=data.channels, labels=data.labels,
                    device=device, leak=leak, rounds=rounds if kind == "feedback-unet" else 1, name=label)
    if out is not None:
        write_json_atomic(out / "model.json", {"architecture": kind, "config": res.module.config, "name": label,
                                               "labels": data.labels, "ignore_index": data.ignore_index,
                                               "leak": {"k": leak_k, "file": "leak.safetensors"} if leak else None,
                                               "weights": "model.safetensors"})
    return seg, res.history



def demo_segmenters(spec: str = "bundled:cells", out: str | Path | None = None, *, n_train: int = 96,
                    n_test: int = 48, epochs: int = 8, width: int = 8, depth: int = 3, lr: float = 1e-2, k: int = 3,
                    batch_size: int = 8,
                    seed: int = 0, device: str = "cpu", resume: bool = True, progress: Progress | None = None
                    ) -> tuple[dict[str, Segmenter], SegDataset, dict[str, list[dict]]]:
    """The demo's three segmenters on a bundled set: U-Net, Feedback U-Net (2 rounds) and Feedback U-Net with the
    annotation leak (``knn:k``, the Feedback U-Net as its embedder), each trained into ``out/<key>``.

    Returns (key -> segmenter, the test split (n_test images), key -> training history).
    """
    from .data import load_segmentation
    train = load_segmentation(spec, "train", n=n_train, seed=seed)
    test = load_segmentation(spec, "test", n=n_test, seed=seed)
    kw = dict(depth=depth, width=width, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
              resume=resume, progress=progress)
    sub = (lambda key: Path(out) / key) if out is not None else (lambda key: None)
    unet, h_unet = fit_segmenter("unet", train, sub("unet"), name="U-Net", **kw)
    fb, h_fb = fit_segmenter("feedback-unet", train, sub("feedback-unet"), rounds=2, name="Feedback U-Net", **kw)
    leak, h_leak = fit_segmenter("feedback-unet", train, sub("feedback-unet-leak"), rounds=2, leak_k=k, embedder=fb,
                                 name=f"Feedback U-Net + leak (knn:{k})", **kw)
    models = {"unet": unet, "feedback-unet": fb, "feedback-unet-leak": leak}
    return models, test, {"unet": h_unet, "feedback-unet": h_fb, "feedback-unet-leak": h_leak}
