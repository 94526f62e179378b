"""``trustvision anomaly`` as a function: data spec -> the anomaly section -> results.json -> report.html.

Like the audit (:mod:`trustvision.auditor`): the finished section is written to ``OUT/sections/anomaly.json``
with a fingerprint (:func:`trustvision.persist.digest` of the images, labels, masks and the configuration)
and a rerun with the same fingerprint resumes from it; trained models live in ``OUT/models`` and are reused
(``resume=False`` recomputes and retrains everything).  Files are written atomically.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..persist import digest, write_json_atomic
from ..progress import Progress
from ..results import SectionResult, envelope
from .data import AnomalyDataset, load_anomaly_data
from .section import METRIC_KEYS, AnomalyConfig, anomaly_section


def data_fingerprint(data: AnomalyDataset) -> str:
    """:func:`~trustvision.persist.digest` of train, test, labels and masks."""
    return digest(data.train, data.test, data.labels, data.masks if data.masks is not None else "no-masks",
                  data.defect_types)


def summary(section: SectionResult) -> dict[str, Any]:
    """Flat headline metrics: ``METHOD.image_auroc`` ... and ``METHOD.miss_rate@EPS`` at the largest budget."""
    out: dict[str, Any] = {}
    for m, v in section.metrics.items():
        if not isinstance(v, dict):
            continue
        out.update({f"{m}.{k}": v[k] for k in METRIC_KEYS if v.get(k) is not None})
        c = v.get("attack")
        if c and c["budgets"]:
            out[f"{m}.miss_rate@{c['budgets'][-1]:.4g}"] = c["miss_rate"][-1]
    return out


def run_anomaly(data: str | AnomalyDataset, out: str | Path = "anomaly-out", config: AnomalyConfig | None = None, *,
                size: int | None = None, resume: bool = True, progress: Progress | None = None,
                console=None) -> dict[str, Any]:
    """Run the anomaly section on ``data`` (a spec — MVTec folder or ``bundled:textures`` — or a dataset) and
    write ``out/results.json`` and ``out/report.html``; returns the results dictionary."""
    from ..report import render_report
    cfg = config or AnomalyConfig()
    spec = data if isinstance(data, str) else data.name
    ds = load_anomaly_data(data, size=size, seed=cfg.seed) if isinstance(data, str) else data
    out = Path(out)
    (out / "sections").mkdir(parents=True, exist_ok=True)
    fp = digest(data_fingerprint(ds), asdict(cfg))
    path = out / "sections" / "anomaly.json"
    sec = _resumed(path, fp) if resume else None
    if sec is not None and console is not None:
        console.print(f"[dim]resumed section 'anomaly' from {path}[/dim]")
    if sec is None:
        sec = anomaly_section(ds, cfg, out, resume=resume, progress=progress)
        sec.config = {**sec.config, "fingerprint": fp}
        write_json_atomic(path, {"fingerprint": fp, "section": sec.to_dict()})
    results = envelope(model={"name": "inspection: " + ", ".join(cfg.methods), "methods": cfg.methods,
                              "device": cfg.device},
                       data={"spec": spec, "name": ds.name, "n": int(len(ds.test)), "n_train": int(len(ds.train)),
                             "n_defective": int(ds.labels.sum()), "masks": ds.masks is not None,
                             "synthetic": ds.synthetic, "defect_types": ds.kinds, "sha256": data_fingerprint(ds)},
                       config=asdict(cfg), summary=summary(sec), sections={"anomaly": sec}, gates=[])
    write_json_atomic(out / "results.json", results)
    render_report(results, out)
    return results


def _resumed(path: Path, fingerprint: str) -> SectionResult | None:
    """The saved section if its fingerprint matches and its figures still exist, else None."""
    try:
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") != fingerprint:
            return None
        sec = SectionResult.from_dict(saved["section"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return sec if all((path.parent.parent / f.path).exists() for f in sec.figures) else None
