"""The ``segment`` section: clean segmentation quality and robust mIoU against the L∞ budget, with soundness flags.

Clean metrics come from :func:`~.metrics.evaluate_segmentation` (mIoU, mIoU per feedback round, per-class
IoU, Dice, pixel accuracy, boundary F1).  Robustness: :class:`~.attacks.SegmentationAttack` (PGD, and FGSM
as the single-step reference) at every budget of ``eps_linf``; robust mIoU is the mIoU of the predictions on
the adversarial images (Arnab, Miksik & Torr, "On the Robustness of Semantic Segmentation Models to
Adversarial Attacks", CVPR 2018).  Soundness (Carlini et al. 2019, sec. 5): the curve must not rise with the
budget (``non-monotonic``) and PGD must be at least as strong as FGSM (``weaker-than-fgsm``), both checked
with the classifier audit's functions of :mod:`trustvision.evaluation.soundness`.

Shapes: ``data.x`` (N, C, H, W) in [0, 1], ``data.masks`` (N, H, W) int64.  The section computes and writes
PNG figures (:mod:`trustvision.report.figures.segmentation`); it never renders HTML.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluation.soundness import fgsm_vs_pgd_flags, monotonic_flags
from ..progress import Progress, Quiet
from ..results import Figure, Flag, SectionResult, Table
from .attacks import SegmentationAttack
from .base import SegDataset, Segmenter
from .metrics import confusion_matrix, evaluate_segmentation, mean_iou

DEFAULT_EPS_LINF = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of the ``segment`` section.

    Args:
        eps_linf: L∞ budgets of the robust-mIoU curve (0 = clean).
        steps: PGD steps per budget (step size ``2.5 * eps / steps``, Madry et al.).
        restarts: PGD random restarts (per image the highest loss is kept).
        fgsm: also run FGSM, the single-step reference of the ``weaker-than-fgsm`` check.
        attack_rounds: ``"last"`` (attack the final feedback round) or ``"all"`` (the mean loss of every round).
        n_attack: images attacked (the first ``n_attack`` of the evaluated set; None: all).
        batch_size: images per device batch.
        examples: images shown in the overlay and adversarial figures.
        seed: seeds the PGD random starts.
    """

    eps_linf: tuple[float, ...] = DEFAULT_EPS_LINF
    steps: int = 10
    restarts: int = 1
    fgsm: bool = True
    attack_rounds: str = "last"
    n_attack: int | None = 64
    batch_size: int = 32
    examples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps_linf", tuple(sorted({float(e) for e in self.eps_linf})))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RobustCurves:
    """Robust mIoU per attack and budget, plus one adversarial batch for the figure.

    ``miou``: attack name (``"pgd"``, ``"fgsm"``) -> list of mIoU, one per ``eps``; ``example``: tensors
    ``x_adv`` (E, C, H, W), ``pred`` (E, H, W) of PGD at ``example_eps`` for the first E images.
    """

    eps: list[float]
    miou: dict[str, list[float]]
    n: int
    example: dict[str, Tensor] = field(default_factory=dict)
    example_eps: float = 0.0


def metric_key(eps: float) -> str:
    """``robust_miou_linf@<eps>`` with eps rounded to 6 decimals (stable in results.json)."""
    return f"robust_miou_linf@{round(eps, 6):g}"


def robust_miou(segmenter: Segmenter, data: SegDataset, attack: SegmentationAttack, batch_size: int,
                keep: int = 0, advance=None) -> tuple[float, dict[str, Tensor]]:
    """mIoU of ``segmenter`` on ``attack``'s adversarial images of ``data`` (batched; eps 0 = clean predictions).

    The confusion matrix accumulates on the device; one host sync at the end.  Returns (mIoU, the first
    ``keep`` adversarial images ``x_adv`` (keep, C, H, W) and predictions ``pred`` (keep, H, W) on the CPU).
    """
    k = segmenter.num_classes
    cm = torch.zeros(k, k, dtype=torch.long, device=segmenter.device)
    kept: dict[str, list[Tensor]] = {"x_adv": [], "pred": []}
    for i in range(0, len(data), batch_size):
        x = data.x[i:i + batch_size].to(segmenter.device)
        m = data.masks[i:i + batch_size].to(segmenter.device)
        if attack.eps > 0:
            res = attack(segmenter, x, m)
            x_adv, pred = res.x_adv, res.pred
        else:
            with torch.inference_mode():
                x_adv, pred = x, segmenter(x).argmax(1)
        cm += confusion_matrix(pred, m, k, data.ignore_index)
        if i < keep:
            kept["x_adv"].append(x_adv[:keep - i].detach().cpu())
            kept["pred"].append(pred[:keep - i].cpu())
        if advance:
            advance(1)
    return float(mean_iou(cm)), {key: torch.cat(v) for key, v in kept.items() if v}


def robust_curves(segmenter: Segmenter, data: SegDataset, cfg: SegmentConfig,
                  progress: Progress | None = None) -> RobustCurves:
    """Robust mIoU of PGD (and FGSM) at every budget of ``cfg.eps_linf`` on the first ``cfg.n_attack`` images."""
    sub = data if cfg.n_attack is None or cfg.n_attack >= len(data) else data.subset(range(cfg.n_attack))
    attacks = {"pgd": SegmentationAttack(norm="linf", steps=cfg.steps, restarts=cfg.restarts, seed=cfg.seed,
                                         ignore_index=data.ignore_index, rounds=cfg.attack_rounds, eps=0.0)}
    if cfg.fgsm:
        attacks["fgsm"] = SegmentationAttack.fgsm(eps=0.0, ignore_index=data.ignore_index, rounds=cfg.attack_rounds)
    batches = -(-len(sub) // cfg.batch_size)
    advance = (progress or Quiet()).task(f"attacking {segmenter.name}", batches * len(cfg.eps_linf) * len(attacks))
    example_eps = next((e for e in cfg.eps_linf if e >= 4 / 255 - 1e-9), cfg.eps_linf[-1])
    curves = RobustCurves(list(cfg.eps_linf), {name: [] for name in attacks}, len(sub), example_eps=example_eps)
    clean = None
    for name, attack in attacks.items():
        for eps in cfg.eps_linf:
            if eps == 0 and clean is not None:        # the clean point is the same for every attack
                curves.miou[name].append(clean)
                advance(batches)
                continue
            keep = cfg.examples if (name == "pgd" and eps == example_eps) else 0
            value, kept = robust_miou(segmenter, sub, attack.with_eps(eps), cfg.batch_size, keep, advance)
            curves.miou[name].append(value)
            clean = value if eps == 0 else clean
            if kept:
                curves.example = kept
    return curves


def soundness(curves: RobustCurves) -> list[Flag]:
    """``non-monotonic`` (robust mIoU rising with the budget) and ``weaker-than-fgsm`` flags of the curves."""
    as_pairs = {name: (curves.eps, vals) for name, vals in curves.miou.items()}
    flags = monotonic_flags({"pgd": as_pairs["pgd"]}, "linf", curves.n)
    if "fgsm" in as_pairs:
        flags += fgsm_vs_pgd_flags(as_pairs, curves.n, single="fgsm", iterative="pgd")
    for f in flags:                                   # the shared messages speak of accuracy: say what it is here
        f.message = "robust mIoU (read 'accuracy' as mIoU): " + f.message
    return flags


def degenerate_flags(per_class_iou: dict[str, float | None]) -> list[Flag]:
    """``degenerate-model``: at most one class is ever predicted correctly (IoU > 0), so the model is close to a
    constant map and a flat robust-mIoU curve says nothing about robustness (nothing is left to break)."""
    hit = [k for k, v in per_class_iou.items() if v]
    if len(hit) > 1:
        return []
    return [Flag("degenerate-model", "warning",
                 f"Only {len(hit)} class(es) ({', '.join(hit) or 'none'}) ever predicted correctly: the segmenter is "
                 "close to a constant map, so its robust mIoU cannot fall and looks 'robust'. Train it longer (or "
                 "check the data) before reading the robustness numbers.", {"classes_hit": hit})]


def segment_section(segmenter: Segmenter, data: SegDataset, cfg: SegmentConfig, out_dir: str | Path, *,
                    name: str = "segment", progress: Progress | None = None) -> SectionResult:
    """Clean metrics, robust mIoU curves, flags and figures of one segmenter on ``data``.

    Metrics: ``miou``, ``miou_per_round``, ``per_class_iou`` (label -> IoU), ``dice``, ``pixel_accuracy``,
    ``boundary_f1`` and one ``robust_miou_linf@<eps>`` per budget (PGD), ``robust_miou_fgsm_linf@<eps>``.
    Figures go to ``out_dir/figures/<name>-*.png`` (paths in the result are relative to ``out_dir``).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    clean = evaluate_segmentation(segmenter, data, batch_size=cfg.batch_size)
    curves = robust_curves(segmenter, data, cfg, progress)
    metrics: dict[str, Any] = {
        "miou": clean["miou"], "miou_per_round": list(clean["miou_per_round"]),
        "per_class_iou": dict(clean["per_class_iou"]),
        **{k: clean[k] for k in ("mean_dice", "dice", "pixel_accuracy", "boundary_f1", "boundary_tolerance")},
        **{metric_key(e): v for e, v in zip(curves.eps, curves.miou["pgd"])},
        **{metric_key(e).replace("miou_", "miou_fgsm_"): v for e, v in zip(curves.eps, curves.miou.get("fgsm", []))},
        "n_images": len(data), "n_attacked": curves.n,
    }
    figures = _figures(segmenter, data, clean, curves, cfg, out_dir, name)
    rows = [[f"{e * 255:.3g}/255", *[curves.miou[a][i] for a in curves.miou]] for i, e in enumerate(curves.eps)]
    tables = [Table(f"robust mIoU vs L∞ budget ({curves.n} images, PGD {cfg.steps} steps)", ["eps", *curves.miou],
                    rows),
              Table("per-class IoU", ["class", "IoU"], [[lab, v] for lab, v in metrics["per_class_iou"].items()])]
    if len(metrics["miou_per_round"]) > 1:
        tables.append(Table("mIoU per feedback round", ["round", "mIoU"],
                            [[r + 1, v] for r, v in enumerate(metrics["miou_per_round"])]))
    flags = soundness(curves) + degenerate_flags(clean["per_class_iou"])
    if data.synthetic:
        flags.append(Flag("synthetic-data", "info", f"{data.name} is synthetic demonstration data: the numbers "
                          "show the method works, not how it does on real images."))
    config = {**cfg.to_dict(), "segmenter": segmenter.describe(), "data": data.describe()}
    return SectionResult(name=name, title=f"Segmentation: {segmenter.name}", metrics=metrics, tables=tables,
                         figures=figures, flags=flags, config=config, seconds=time.perf_counter() - t0)


def _figures(segmenter: Segmenter, data: SegDataset, clean: dict, curves: RobustCurves, cfg: SegmentConfig,
             out_dir: Path, name: str) -> list[Figure]:
    """Overlays per round, per-class IoU bars, the robust-mIoU curve and the adversarial example (PNG files)."""
    from ..report.figures import segmentation as figs
    e = min(cfg.examples, len(data))
    rel = lambda kind: f"figures/{name}-{kind}.png"            # noqa: E731
    rounds = segmenter.predict_rounds(data.x[:e], batch_size=cfg.batch_size)
    figs.overlay_grid(data.x[:e], data.masks[:e], rounds, data.labels, out_dir / rel("overlays"))
    figs.per_class_iou_bars({segmenter.name: list(clean["per_class_iou"].values())}, data.labels,
                            out_dir / rel("per-class-iou"))
    figs.robust_miou_curves({k.upper(): (curves.eps, v) for k, v in curves.miou.items()}, out_dir / rel("robust"),
                            title=f"{segmenter.name}: robust mIoU")
    out = [Figure("image, ground truth and prediction per round", rel("overlays"),
                  "Ground truth and each feedback round's predicted mask drawn over the image."),
           Figure("per-class IoU", rel("per-class-iou"), "IoU of every class on the evaluated images."),
           Figure("robust mIoU vs L∞ budget", rel("robust"),
                  f"PGD ({cfg.steps} steps) and FGSM on the per-pixel cross-entropy, {curves.n} images.")]
    if curves.example:
        ex = curves.example
        n = len(ex["pred"])
        pred_clean = segmenter.predict(data.x[:n], batch_size=cfg.batch_size)
        figs.adversarial_example(data.x[:n], ex["x_adv"], data.masks[:n], pred_clean, ex["pred"], data.labels,
                                 out_dir / rel("adversarial"), eps=curves.example_eps)
        out.append(Figure("adversarial example", rel("adversarial"),
                          f"PGD at L∞ eps={curves.example_eps * 255:.3g}/255 and the mask the model then predicts."))
    return out
