"""Our inspection metrics beside anomalib's (the library MVTec AD users report with).

PatchCore (Roth et al., CVPR 2022; ours, ``fast`` preset, the demo backbone) is fitted on the synthetic
``bundled:textures`` set; its maps (N, H, W) and image scores (N,) are then scored by ``trustvision.anomaly.metrics``
and by ``anomalib.metrics`` (``AUPRO(fpr_limit=0.3)``: Bergmann et al.'s per-region overlap up to FPR 0.3,
normalised; ``AUROC`` at image and pixel level) on the same tensors, and the differences are printed and written to
``bench/results/anomaly-anomalib-DATE-DEVICE.md``.

anomalib pulls Lightning, timm, OpenCV-free kornia and more, and upgrades ``click``/``typing_extensions``, so it is
not in the ``test`` extra: run this in a separate virtual environment that sees the project's packages::

    python -m venv --system-site-packages /tmp/anomalib-venv && /tmp/anomalib-venv/bin/pip install anomalib
    OMP_NUM_THREADS=1 /tmp/anomalib-venv/bin/python bench/anomaly_anomalib.py --date 2026-11-30
    # GPU: /tmp/anomalib-venv/bin/python bench/anomaly_anomalib.py --device cuda --date 2026-11-30
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def compare(res, data) -> list[tuple[str, float, float]]:
    """(metric, ours, anomalib) for image AUROC, pixel AUROC and AUPRO on ``res`` (an AnomalyResult)."""
    from anomalib.metrics import AUPRO, AUROC
    from anomalib.data import ImageBatch

    from trustvision.anomaly.metrics import aupro, auroc
    maps, masks, labels = res.maps.float(), data.masks.bool(), data.labels.long()
    ours = {"image_auroc": auroc(res.scores, labels), "pixel_auroc": auroc(maps.flatten(), masks.flatten()),
            "aupro": aupro(maps, masks, 0.3)}
    batch = ImageBatch(image=data.test, pred_score=res.scores.float(), gt_label=labels,
                       anomaly_map=maps, gt_mask=masks)
    theirs = {}
    for key, metric in (("image_auroc", AUROC(fields=["pred_score", "gt_label"])),
                        ("pixel_auroc", AUROC(fields=["anomaly_map", "gt_mask"])),
                        ("aupro", AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3))):
        metric.update(batch)
        theirs[key] = float(metric.compute())
    return [(k, float(ours[k]), theirs[k]) for k in ours]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--date", default="2026-11-30")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = ap.parse_args()
    import anomalib

    from trustvision.anomaly.backbone import load_backbone
    from trustvision.anomaly.patchcore import PatchCore
    from trustvision.anomaly.section import PATCHCORE_PRESETS, score_all
    from trustvision.anomaly.textures import make_textures
    rows = []
    backbone = load_backbone("demo").to(a.device)
    for seed in a.seeds:
        data = make_textures(seed=seed)
        pc = PatchCore(backbone, seed=seed, **PATCHCORE_PRESETS["fast"]).fit(data.train.to(a.device))
        res = score_all(pc, data.test.to(a.device), 32)
        for key, ours, theirs in compare(res, data):
            rows.append({"seed": seed, "metric": key, "trustvision": ours, "anomalib": theirs, "diff": ours - theirs})
            print(f"seed {seed} {key:12s} ours {ours:.5f}  anomalib {theirs:.5f}  diff {ours - theirs:+.5f}", flush=True)
    out = Path(__file__).parent / "results" / f"anomaly-anomalib-{a.date}-{a.device.split(':')[0]}"
    meta = {"anomalib": anomalib.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": a.device, "data": "bundled:textures (synthetic), 360 train / 126 test, 64x64",
            "maps": "PatchCore, fast preset, demo backbone",
            "command": f"OMP_NUM_THREADS=1 python bench/anomaly_anomalib.py --date {a.date} --seeds "
                       + " ".join(map(str, a.seeds))}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Inspection metrics: trustvision vs anomalib {anomalib.__version__} ({a.date}, {a.device})", "",
             f"Command: `{meta['command']}` (in a venv with anomalib; see the script's docstring).", "",
             f"Maps: {meta['maps']}; data: {meta['data']}.", "",
             "| seed | metric | trustvision | anomalib | difference |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['metric']} | {r['trustvision']:.5f} | {r['anomalib']:.5f} | {r['diff']:+.5f} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
