"""The ``explain`` audit section: CAMs, faithfulness, clusters of attention, attention under attack.

Steps (each documented in its module):

1. Grad-CAM++ (or another :data:`~.cam.METHODS` entry) maps of the evaluated images for ``target``: the
   predicted or true class, a fixed class, a margin, a regression output or the class of an adversarial
   example (:func:`~trustvision.explain.targets.parse_target`) — :mod:`.cam`;
2. deletion/insertion AUCs of those maps against a seeded random map (Petsiuk et al. 2018) —
   :mod:`.faithfulness`;
3. k-means clusters of the maps, their mean maps, and the chi-square test of whether classes
   (and user-given groups) fall into different clusters (Sakaguchi et al. 2022) — :mod:`.clustering`;
4. attention under attack: maps of clean and adversarial images (a preset attack of the
   robustness section) and the IoU of their top-``top_fraction`` regions.

Shapes: images (N, C, H, W) in [0, 1], maps (N, H, W).  Opt-in (not in the default audit).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...configs import check_config
from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Figure, Flag, SectionResult, Table
from ...explain.cam import METHODS, compute_cams, find_layer
from ...explain.clustering import cluster_maps, group_test
from ...explain.faithfulness import deletion_insertion, random_saliency
from ...explain.targets import build_target, parse_target


@dataclass
class ExplainConfig:
    """What the explain section runs.

    ``clusters`` is ``"auto"`` (silhouette over ``k_range``) or an int; ``groups`` is one group
    label per evaluated image (e.g. from :func:`~.clustering.read_groups`); ``attack`` is a
    robustness preset (``pgd``, ``fgsm``, ``pgd-l2``, ``cw``, ``deepfool``...) with ``attack_options``;
    ``target`` is what the maps explain: ``pred`` (``predicted``), ``label`` (``true``), ``class:K``, ``margin``,
    ``margin:label``, ``score:K`` (a regression output; faithfulness then follows the raw output) or ``adv``
    (the class ``attack`` pushes each image to).
    """

    method: str = "gradcam++"
    layer: str | None = None
    target: str = "predicted"
    max_images: int | None = 500
    clusters: str | int = "auto"
    k_range: list[int] = field(default_factory=lambda: [2, 8])
    faithfulness_images: int = 128
    steps: int = 28
    deletion_baseline: str = "zero"
    attack: str | None = "pgd"
    attack_options: dict = field(default_factory=dict)
    attack_images: int = 64
    top_fraction: float = 0.2
    n_examples: int = 8
    groups: list[str] | None = None
    groups_source: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)                  # every key's type, named in the error
        if self.method not in METHODS:
            raise TrustVisionError(f"explain method {self.method!r} unknown; choose from {', '.join(METHODS)}")
        if parse_target(self.target, "explain target").kind == "adv" and self.attack is None:
            raise TrustVisionError("explain target 'adv' explains the class of an adversarial example: it needs an "
                                   "attack (not 'none')")
        if isinstance(self.clusters, str) and self.clusters != "auto":
            try:
                self.clusters = int(self.clusters)
            except ValueError:
                raise TrustVisionError(f"--clusters must be 'auto' or an integer, got {self.clusters!r}") from None
        if not 0 < self.top_fraction <= 1:
            raise TrustVisionError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")
        if self.attack is not None:
            self.build_attack()

    def build_attack(self):
        """The attack for 'attention under attack' (a robustness preset with ``attack_options``)."""
        from .robustness import RobustnessConfig
        rob = RobustnessConfig(attacks=[self.attack], attack_options={self.attack: dict(self.attack_options)},
                               seed=self.seed)
        return rob.build(self.attack)

    def describe(self) -> dict:
        """Config for the section record (group labels summarised, not listed)."""
        d = asdict(self)
        d["groups"] = None if self.groups is None else f"{len(self.groups)} labels, {len(set(self.groups))} groups"
        return d


def top_region_iou(a: Tensor, b: Tensor, fraction: float = 0.2) -> Tensor:
    """IoU (N,) of the top-``fraction`` pixels of maps ``a`` and ``b`` (N, H, W) (ties by position order)."""
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    k = max(1, int(round(fraction * flat_a.shape[1])))
    ma = torch.zeros_like(flat_a, dtype=torch.bool).scatter_(1, flat_a.topk(k, 1).indices, True)
    mb = torch.zeros_like(flat_b, dtype=torch.bool).scatter_(1, flat_b.topk(k, 1).indices, True)
    return (ma & mb).sum(1).float() / (ma | mb).sum(1).float()


def _attention_under_attack(cfg: ExplainConfig, clf: Classifier, data: Dataset, correct: Tensor, batch_size: int):
    from ...attacks.runner import run_batched
    idx = correct.nonzero()[:cfg.attack_images, 0]
    if cfg.attack is None or len(idx) == 0:
        return None
    x, y = data.x[idx], data.y[idx]
    res = run_batched(cfg.build_attack(), clf, x, y, batch_size)
    clean = compute_cams(clf, x, y, method=cfg.method, layer=cfg.layer, batch_size=batch_size)
    adv = compute_cams(clf, res.x_adv, None, method=cfg.method, layer=cfg.layer, batch_size=batch_size)
    iou = top_region_iou(clean.maps, adv.maps, cfg.top_fraction)
    return {"index": idx, "x": x, "x_adv": res.x_adv, "cam": clean.maps, "cam_adv": adv.maps,
            "pred": clean.target, "pred_adv": adv.target, "success": res.success, "iou": iou}


def explain_section(clf: Classifier, data: Dataset, clean_logits: Tensor, cfg: ExplainConfig | None = None, *,
                    out_dir: Path | None = None, batch_size: int = 128,
                    progress: Progress | None = None) -> SectionResult:
    """Run the explain section on ``data`` (x (N, C, H, W), y (N,) CPU); ``clean_logits`` (N, K)."""
    cfg = cfg or ExplainConfig()
    progress = progress or Quiet()
    t0 = time.perf_counter()
    if cfg.groups is not None and len(cfg.groups) != len(data):
        raise TrustVisionError(f"explain groups: {len(cfg.groups)} labels but {len(data)} evaluated images "
                               "(set n_images to None or give one label per evaluated image)")
    n = len(data) if cfg.max_images is None else min(cfg.max_images, len(data))
    x, y = data.x[:n], data.y[:n]
    advance = progress.task(f"explain ({cfg.method})", 4)
    cams = compute_cams(clf, x, _cam_target(cfg, clf, x, y, clean_logits[:n], batch_size), method=cfg.method,
                        layer=cfg.layer, batch_size=batch_size)
    layer_name = find_layer(clf.module, cfg.layer)[0]
    advance(1)
    nf = min(cfg.faithfulness_images, n)
    fa, fr = _faithfulness(clf, x[:nf], cams, cfg, batch_size)
    advance(1)
    cl, by_class, by_group = _clusters(clf, cams, cfg, n)
    advance(1)
    shift = _attention_under_attack(cfg, clf, data, clean_logits.argmax(1) == data.y, batch_size)
    advance(1)

    metrics = {"method": cfg.method, "layer": layer_name, "target": cfg.target, "n_images": n,
               "faithfulness_images": nf, "faithfulness_output": _output(cfg),
               "deletion_auc": float(fa.deletion_auc.mean()), "insertion_auc": float(fa.insertion_auc.mean()),
               "random_deletion_auc": float(fr.deletion_auc.mean()),
               "random_insertion_auc": float(fr.insertion_auc.mean()),
               "clusters": cl.k, "silhouette": {str(k_): v for k_, v in cl.silhouette.items()},
               "class_cluster_p_value": by_class.p_value, "class_cluster_cramers_v": by_class.cramers_v}
    tables = [Table("Clusters of attention", ["cluster", "images", "share"],
                    [[c, int(s), float(s) / n] for c, s in enumerate(cl.sizes)]),
              _group_table(f"Explained class × cluster (chi-square p = {_p(by_class.p_value)})", by_class)]
    flags = [] if by_group is None else _add_groups(cfg, by_group, metrics, tables)
    if metrics["deletion_auc"] >= metrics["random_deletion_auc"]:
        flags.append(Flag("explain_unfaithful", "warning",
                          f"{cfg.method} maps are no more faithful than random maps (deletion AUC "
                          f"{metrics['deletion_auc']:.3f} vs random {metrics['random_deletion_auc']:.3f}); "
                          "try another target layer (--layer) or method before reading the maps.",
                          {"layer": layer_name}))
    neg = float(cams.negative_fraction.mean()) if cams.negative_fraction is not None else 0.0
    metrics["negative_activation_fraction"] = neg
    if cfg.method == "gradcam++" and neg > 0:
        flags.append(Flag("explain_negative_activations", "warning",
                          f"the CAM layer {layer_name!r} has negative activations ({neg:.1%} of values): Grad-CAM++'s "
                          "denominator 2 + S·g can cross zero there (near-zero ones are guarded, α = 0); choose the "
                          "layer after the activation (--layer) or use gradcam.", {"layer": layer_name}))
    if shift is not None:
        _add_shift(cfg, shift, metrics, tables)
    sec = SectionResult("explain", f"Explanations ({cfg.method}) and attention", metrics, tables, flags=flags,
                        config=cfg.describe())
    sec.examples = [{"cluster": c, "members": m[:cfg.n_examples]} for c, m in enumerate(cl.members)]
    if out_dir is not None:
        _write(sec, out_dir, clf, x, cams, cl, fa, fr, shift, cfg)
    sec.seconds = time.perf_counter() - t0
    return sec


def _cam_target(cfg: ExplainConfig, clf: Classifier, x: Tensor, y: Tensor, logits: Tensor, batch_size: int):
    """What the maps explain (``cfg.target``, see :func:`~...explain.targets.parse_target`) for x (n, C, H, W):
    ``adv`` runs the section's attack on every explained image and takes the adversarial prediction."""
    spec = parse_target(cfg.target, "explain target")
    adv = None
    if spec.kind == "adv":
        from ...attacks.runner import run_batched
        res = run_batched(cfg.build_attack(), clf, x, y, batch_size)
        adv = clf.predict(res.x_adv).argmax(1).cpu()
    return build_target(spec, pred=logits.argmax(1).cpu(), label=y.cpu(), num_outputs=clf.num_classes, adv=adv,
                        what="explain target")


def _output(cfg: ExplainConfig) -> str:
    """Faithfulness follows the softmax probability of a class, or the raw output for ``score:K``."""
    return "probability" if parse_target(cfg.target).has_class else "raw"


def _faithfulness(clf: Classifier, x: Tensor, cams, cfg: ExplainConfig, batch_size: int):
    """Deletion/insertion of the CAMs and of a seeded random map for images ``x`` (nf, C, H, W)."""
    nf = len(x)
    spec = parse_target(cfg.target)
    tgt = cams.target[:nf] if spec.has_class else torch.full((nf,), spec.index, dtype=torch.long)
    kw = dict(steps=cfg.steps, deletion_baseline=cfg.deletion_baseline, batch_size=batch_size, seed=cfg.seed,
              output=_output(cfg))
    fa = deletion_insertion(clf, x, cams.maps[:nf], tgt, **kw)
    fr = deletion_insertion(clf, x, random_saliency((nf, *x.shape[-2:]), cfg.seed), tgt, **kw)
    return fa, fr


def _clusters(clf: Classifier, cams, cfg: ExplainConfig, n: int):
    """k-means clusters of the maps (N, H, W); chi-square tests of class (and group) against cluster."""
    k = None if cfg.clusters == "auto" else int(cfg.clusters)
    cl = cluster_maps(cams.maps, k, k_range=tuple(cfg.k_range), seed=cfg.seed)
    by_class = group_test(cl.labels, [clf.labels[int(t)] if t >= 0 else "(no class)" for t in cams.target.tolist()],
                          cl.k)
    by_group = None
    if cfg.groups is not None:              # images the groups file does not mention stay out of the test
        keep = np.array([g != "(none)" for g in cfg.groups[:n]], dtype=bool)
        by_group = group_test(cl.labels[keep], [g for g, k_ in zip(cfg.groups[:n], keep) if k_], cl.k)
    return cl, by_class, by_group


def _add_groups(cfg: ExplainConfig, by_group, metrics: dict, tables: list[Table]) -> list[Flag]:
    """Add the group × cluster test to ``metrics`` and ``tables``; return its flag (if groups differ)."""
    metrics.update(group_cluster_p_value=by_group.p_value, group_cluster_cramers_v=by_group.cramers_v)
    tables.append(_group_table(f"Group × cluster ({cfg.groups_source or 'groups'}; chi-square p = "
                               f"{_p(by_group.p_value)})", by_group))
    if by_group.p_value is not None and by_group.p_value < 0.05:
        return [Flag("explain_groups_differ", "info",
                     f"groups fall into different attention clusters (chi-square p = {by_group.p_value:.3g}, "
                     f"Cramér's V = {by_group.cramers_v:.2f}): the model looks at different regions per group.",
                     {"p_value": by_group.p_value})]
    return []


def _add_shift(cfg: ExplainConfig, shift: dict, metrics: dict, tables: list[Table]) -> None:
    """Add the attention-under-attack summary (IoU of clean vs adversarial top regions) to the section."""
    ok, iou = shift["success"], shift["iou"]
    metrics["attention_shift"] = {"attack": cfg.attack, "images": len(iou), "attack_success": float(ok.float().mean()),
                                  "iou_mean": float(iou.mean()),
                                  "iou_fooled": float(iou[ok].mean()) if ok.any() else None,
                                  "iou_not_fooled": float(iou[~ok].mean()) if (~ok).any() else None}
    s = metrics["attention_shift"]
    tables.append(Table(f"Attention under attack ({cfg.attack}; IoU of top {cfg.top_fraction:.0%} regions)",
                        ["images", "count", "mean IoU"],
                        [["all", len(iou), s["iou_mean"]], ["attack succeeded", int(ok.sum()), s["iou_fooled"]],
                         ["attack failed", int((~ok).sum()), s["iou_not_fooled"]]]))


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def _group_table(title: str, g) -> Table:
    return Table(title, ["group"] + [f"cluster {c}" for c in range(g.table.shape[1])],
                 [[name] + row.tolist() for name, row in zip(g.groups, g.table)])


def _write(sec: SectionResult, out: Path, clf, x, cams, cl, fa, fr, shift, cfg: ExplainConfig) -> None:
    """Save the figures and ``explain_maps.npz`` (maps as float16) into ``out``; list them in ``sec.figures``."""
    from ...report.figures import explain as figs
    from ...report.figures.common import pick_examples
    out.mkdir(parents=True, exist_ok=True)
    figs.cluster_centers(cl.centers, cl.sizes, cl.members, x, cams.maps, out / "explain_clusters.png")
    sec.figures.append(Figure("Clusters of attention", "explain_clusters.png",
                              "Each row: a cluster's mean map (its representative region of attention), then the "
                              "members closest to it with their maps."))
    figs.faithfulness_curves(fa.fractions, {cfg.method: (fa.deletion, fa.insertion),
                                            "random": (fr.deletion, fr.insertion)}, out / "explain_faithfulness.png")
    sec.figures.append(Figure("Deletion and insertion curves", "explain_faithfulness.png",
                              "Probability of the explained class as the most salient pixels are removed (left) or "
                              "restored from a blurred image (right); a faithful map beats the random one."))
    saved = {"maps": cams.maps.numpy().astype(np.float16), "target": cams.target.numpy(),
             "cluster": cl.labels, "centers": cl.centers.numpy()}
    if shift is not None:                  # fooled images first, one class after another
        pick = torch.from_numpy(pick_examples(shift["pred"].cpu(), shift["success"].cpu(), cfg.n_examples))
        figs.cam_grid(*(shift[k][pick] for k in ("x", "cam", "x_adv", "cam_adv", "pred", "pred_adv", "iou")),
                      clf.labels, out / "explain_attack.png", max_examples=cfg.n_examples)
        sec.figures.append(Figure(f"Attention under attack ({cfg.attack})", "explain_attack.png",
                                  "Original | its map | adversarial | its map (for the adversarial prediction); "
                                  "IoU of the top regions of the two maps. Fooled images first, from as many "
                                  "classes as there are."))
        sec.examples.append({"attention_under_attack": shift["index"][pick].tolist(),
                             "fooled": shift["success"][pick].tolist()})
        saved.update(adv_index=shift["index"].numpy(), adv_iou=shift["iou"].numpy(),
                     adv_maps=shift["cam_adv"].numpy().astype(np.float16))
    np.savez_compressed(out / "explain_maps.npz", **saved)
