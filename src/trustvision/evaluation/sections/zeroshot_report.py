"""Summarise Raw Zero-Shot records (:func:`.zeroshot.run_arch`) into a :class:`SectionResult`.

Kotyan, Matsuki & Vargas, PLOS ONE 2022 (e0266060): per-architecture means and spreads of DBM / AM
(plus entropy and silhouette), attack success of each full model, the correlation between the two
(Pearson / Spearman with p-values, per architecture and per (architecture, class)), tables, figures
and soundness flags.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...results import Figure, Flag, SectionResult, Table
from .. import zeroshot_metrics as zm

MAIN = ("dbm", "am", "entropy", "silhouette")
METRICS = (*zm.DBM_VARIANTS, *zm.AM_VARIANTS, "entropy", "silhouette")
LOW_ACCURACY = 0.9


def _vals(rec: dict, key: str) -> np.ndarray:
    return np.array([np.nan if c.get(key) is None else c[key] for c in rec["per_class"]], dtype=float)


def _mean(v: np.ndarray) -> float | None:
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _std(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else (0.0 if len(v) else None)


def _r(v: Any, nd: int = 4) -> Any:
    return round(v, nd) if isinstance(v, float) else v


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {0.0 if std is None else std:.3f}"


def _ci(ci: Any) -> str:
    return "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def summarise(records: list[dict], labels: list[str], cfg, out: Path) -> SectionResult:
    """Tables, metrics, correlation, figures (written into ``out``) and flags of a Raw Zero-Shot run.

    ``records``: one :func:`.zeroshot.run_arch` record per architecture; ``labels``: the N class names;
    ``cfg``: the :class:`.zeroshot.ZeroShotConfig` (its ``attacks`` name the success columns).
    """
    archs = [r["arch"] for r in records]
    attacks = list(cfg.attacks)
    agg = _aggregate(records)
    rzs_acc = {r["arch"]: _mean(_vals(r, "rzs_accuracy")) for r in records}
    success = {a: {r["arch"]: r["attacks"][a]["success_rate"] for r in records} for a in attacks}
    corr, scatter = _correlations(records, archs, agg, success, attacks)
    dbm_means = {a: v for a, v in agg["dbm_mean"].items() if v is not None}
    am_means = {a: v for a, v in agg["am_mean"].items() if v is not None}
    metrics: dict[str, Any] = {
        "architectures": archs, "classes": list(labels),
        "densest_architecture": min(dbm_means, key=dbm_means.get) if dbm_means else None,
        "best_by_variant": _best_by_variant(agg, archs),
        "lowest_am_architecture": min(am_means, key=am_means.get) if am_means else None,
        "models_trained_this_run": int(sum(r["trained"] for r in records)),
        "clean_accuracy": {r["arch"]: r["clean_accuracy"] for r in records},
        "rzs_accuracy": rzs_acc, **agg, "attack_success": success, "correlation": corr,
    }
    tables = _tables(records, agg, rzs_acc, success, corr, attacks)
    figures = _figures(records, labels, archs, agg, scatter, corr, attacks, out)
    flags = _flags(records, archs, corr)
    caps = _capsnet_flag(metrics["best_by_variant"], archs)
    if caps is not None:
        flags.append(caps)
    return SectionResult(name="zeroshot", title="Raw Zero-Shot feature transferability (Kotyan et al. 2022)",
                         metrics=metrics, tables=tables, figures=figures, flags=flags,
                         examples=[{"arch": r["arch"], "per_class": r["per_class"]} for r in records])


def _best_by_variant(agg: dict, archs: list[str]) -> dict[str, dict[str, Any]]:
    """Per DBM/AM reading: the best (lowest-mean) architecture and each architecture's rank (1 = best)."""
    out = {}
    for m in (*zm.DBM_VARIANTS, *zm.AM_VARIANTS):
        vals = {a: agg[f"{m}_mean"][a] for a in archs if agg[f"{m}_mean"][a] is not None}
        order = sorted(vals, key=vals.get)
        out[m] = {"best": order[0] if order else None, "rank": {a: i + 1 for i, a in enumerate(order)}}
    return out


def _capsnet_flag(best: dict, archs: list[str]) -> Flag | None:
    """Info flag when CapsNet (the paper's densest) is densest under no DBM reading: its best rank named."""
    if "capsnet" not in archs or len(archs) < 2:
        return None
    ranks = {m: best[m]["rank"].get("capsnet") for m in zm.DBM_VARIANTS}
    if any(r == 1 for r in ranks.values()):
        return None
    closest = min((m for m in ranks if ranks[m] is not None), key=lambda m: ranks[m], default=None)
    return Flag("zeroshot_capsnet_not_densest", "info",
                f"CapsNet is densest under no DBM reading (the paper found it densest); its best rank is "
                f"{ranks.get(closest)} of {len(archs)} under {closest}.", {"ranks": ranks})


def _aggregate(records: list[dict]) -> dict[str, dict[str, Any]]:
    """``{"dbm_mean": {arch: value}, "dbm_std": {...}, ...}`` over the held-out classes of each architecture."""
    agg: dict[str, dict[str, Any]] = {f"{m}_{s}": {} for m in METRICS for s in ("mean", "std")}
    for r in records:
        for m in METRICS:
            v = _vals(r, m)
            agg[f"{m}_mean"][r["arch"]], agg[f"{m}_std"][r["arch"]] = _mean(v), _std(v)
    return agg


def _correlations(records: list[dict], archs: list[str], agg: dict, success: dict,
                  attacks: list[str]) -> tuple[dict, dict]:
    """Per attack and metric: the correlation statistics and the scatter-plot points."""
    corr: dict[str, dict[str, dict[str, Any]]] = {}
    scatter: dict[str, dict[str, dict[str, Any]]] = {}
    for a in attacks:
        corr[a], scatter[a] = {}, {}
        for m in METRICS:
            corr[a][m], scatter[a][m] = _metric_vs_success(records, archs, agg, success[a], a, m)
    return corr, scatter


def _metric_vs_success(records: list[dict], archs: list[str], agg: dict, success: dict, attack: str,
                       metric: str) -> tuple[dict, dict]:
    """Correlate ``metric`` with ``attack`` success per (architecture, class) and per architecture."""
    xs, ys, groups = [], [], []
    for r in records:
        v = _vals(r, metric)
        for k, s in enumerate(r["attacks"][attack]["per_class"]):
            if s is not None and np.isfinite(v[k]):
                xs.append(float(v[k]))
                ys.append(float(s))
                groups.append(r["arch"])
    ax_ = [agg[f"{metric}_mean"][x] for x in archs]
    ay_ = [success[x] for x in archs]
    pairs = [(x, y) for x, y in zip(ax_, ay_) if x is not None and y is not None]
    stats = {"per_architecture": zm.correlate([p[0] for p in pairs], [p[1] for p in pairs]),
             "per_class": zm.correlate(xs, ys)}
    points = {"x": xs, "y": ys, "group": groups, "archs": archs,
              "arch_x": [np.nan if v is None else v for v in ax_],
              "arch_y": [np.nan if v is None else v for v in ay_]}
    return stats, points


def _tables(records: list[dict], agg: dict, rzs_acc: dict, success: dict, corr: dict,
            att: list[str]) -> list[Table]:
    """Per-architecture summary, per held-out class, and correlation tables."""
    rows = []
    for r in records:
        a = r["arch"]
        rows.append([a, _r(r["clean_accuracy"]), _r(rzs_acc[a]),
                     *[_r(agg[f"{m}_{s}"][a]) for m in MAIN for s in ("mean", "std")],
                     *[_r(success[x][a]) for x in att]])
    cols = ["architecture", "clean acc (full)", "RZS acc (seen classes)",
            *[f"{m.upper() if m in ('dbm', 'am') else m} {s}" for m in MAIN for s in ("mean", "std")],
            *[f"{x} success" for x in att]]
    readings = (*zm.DBM_VARIANTS, *zm.AM_VARIANTS)
    var_rows = [[r["arch"], *[_pm(agg[f"{m}_mean"][r["arch"]], agg[f"{m}_std"][r["arch"]]) for m in readings]]
                for r in records]
    per_rows = [[r["arch"], c["class"], c["n"], *[_r(c[m]) for m in MAIN], _r(c["rzs_accuracy"]),
                 c["top_known_class"], *[_r(r["attacks"][x]["per_class"][k]) for x in att]]
                for r in records for k, c in enumerate(r["per_class"])]
    corr_rows = [[x, m, level, c["n"], _r(c["pearson_r"]), _ci(c.get("pearson_ci")), _r(c["pearson_p"]),
                  _r(c["spearman_rho"]), _r(c["spearman_p"])]
                 for x in att for m in METRICS for level, c in corr[x][m].items()]
    return [
        Table("Raw Zero-Shot metrics per architecture (mean / std over held-out classes; lower DBM, AM = "
              "better transfer of features)", cols, rows),
        Table("DBM and AM readings side by side (mean ± std over held-out classes; defaults: dbm, am; "
              "_2d = in the 2-D principal plane, _db = Davies-Bouldin ratio against the seen classes)",
              ["architecture", *readings], var_rows),
        Table("Per held-out class", ["architecture", "held-out class", "images", "DBM", "AM", "entropy",
                                     "silhouette", "RZS acc", "closest known class",
                                     *[f"{x} success (class)" for x in att]], per_rows),
        Table("Correlation of Raw Zero-Shot metrics with attack success on the full model",
              ["attack", "metric", "level", "n", "Pearson r", "95 % CI (Fisher z)", "p", "Spearman ρ", "p"],
              corr_rows),
    ]


def _figures(records: list[dict], labels: list[str], archs: list[str], agg: dict, scatter: dict, corr: dict,
             att: list[str], out: Path) -> list[Figure]:
    """Write the metric bars, one soft-label PCA per architecture and one scatter per attack into ``out``."""
    from ...report.figures import zeroshot as zf
    figures = []
    zf.metric_bars(archs, {"DBM": [agg["dbm_mean"][a] for a in archs], "AM": [agg["am_mean"][a] for a in archs]},
                   {"DBM": [agg["dbm_std"][a] for a in archs], "AM": [agg["am_std"][a] for a in archs]},
                   out / "zeroshot_metrics.png")
    figures.append(Figure("Raw Zero-Shot metrics per architecture", "zeroshot_metrics.png",
                          "Mean over held-out classes, error bars ±1 std; the best (lowest) bar is green."))
    for r in records:
        name = f"zeroshot_pca_{r['arch']}.png"
        zf.soft_label_pca(r["soft"], labels, [c["dbm"] for c in r["per_class"]], out / name,
                          title=f"{r['arch']}: held-out soft labels (PCA, shared scale)")
        figures.append(Figure(f"{r['arch']}: held-out soft-label clusters", name,
                              "Each panel: the test images of one class fed to the model trained without it, "
                              "soft labels projected on their two principal axes."))
    for x in att:
        name = f"zeroshot_corr_{x}.png"
        zf.correlation_scatter({m.upper(): scatter[x][m] for m in ("dbm", "am")}, out / name, attack=x,
                               stats={m.upper(): corr[x][m] for m in ("dbm", "am")})
        figures.append(Figure(f"DBM / AM against {x} success", name,
                              "Small dots: (architecture, held-out class); large: architecture means."))
    return figures


def _flags(records: list[dict], archs: list[str], corr: dict) -> list[Flag]:
    flags = []
    weak = {r["arch"]: r["clean_accuracy"] for r in records if r["clean_accuracy"] < LOW_ACCURACY}
    if weak:
        flags.append(Flag("zeroshot_undertrained", "warning",
                          f"full model(s) below {LOW_ACCURACY:.0%} clean test accuracy: "
                          f"{', '.join(f'{a} {v:.1%}' for a, v in weak.items())}; their soft labels say little "
                          "about learned features: raise --epochs or --train-images.", {"clean_accuracy": weak}))
    weak_rzs = {r["arch"]: float(np.nanmean(_vals(r, "rzs_accuracy"))) for r in records
                if np.nanmean(_vals(r, "rzs_accuracy")) < LOW_ACCURACY}
    if weak_rzs:
        flags.append(Flag("zeroshot_rzs_undertrained", "warning",
                          "held-out (Raw Zero-Shot) models below "
                          f"{LOW_ACCURACY:.0%} accuracy on their own classes: "
                          f"{', '.join(f'{a} {v:.1%}' for a, v in weak_rzs.items())}; raise --epochs.",
                          {"rzs_accuracy": weak_rzs}))
    few = [(r["arch"], c["class"], c["n"]) for r in records for c in r["per_class"] if c["n"] < 10]
    if few:
        flags.append(Flag("zeroshot_few_images", "warning",
                          f"{len(few)} held-out cluster(s) have fewer than 10 test images; DBM/AM are noisy: use more "
                          "data or a larger test fraction.", {"clusters": few[:20]}))
    if len(archs) < 3:
        flags.append(Flag("zeroshot_few_architectures", "info",
                          f"only {len(archs)} architecture(s): the per-architecture correlation needs at least 3; "
                          "the per-(architecture, class) correlation is reported instead.", {}))
    undefined = sorted({a for a, per in corr.items() for m, c in per.items()
                        if m in ("dbm", "am") and c["per_class"].get("note") == "constant input"})
    if undefined:
        flags.append(Flag("zeroshot_constant_success", "info",
                          f"attack success is the same for every (architecture, class) under {', '.join(undefined)}; "
                          "no correlation can be measured: change the attack budget.", {}))
    return flags
