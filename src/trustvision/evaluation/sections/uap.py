"""The ``uap`` audit section: a universal adversarial perturbation from non-domain (or any) images.

Reproduces the protocol of Hirano & Takemoto (Algorithms 2020) and Minagi, Hirano & Takemoto
(J. Imaging 2022): build a UAP from *source* images (by default natural-photo crops from
``skimage.data``, never the evaluation data), evaluate it on the *evaluation* images against two
random controls of identical norm, sweep ζ, and optionally measure transfer to other models.
Generators: :mod:`trustvision.attacks.universal`; metrics: :mod:`.fooling`.

Shapes: source/evaluation images (N, C, H, W) in [0, 1]; the UAP (1, C, H, W).
Opt-in (in ``auditor.SECTIONS``, not in the default audit).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...attacks.universal import UniversalPerturbation
from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.architectures import require_code_trust
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Figure, Flag, SectionResult, Table
from .. import fooling

LUMA = (0.299, 0.587, 0.114)


def source_images(spec: str, *, n: int, size: tuple[int, int], channels: int, seed: int = 0) -> Tensor:
    """Source images (n, channels, H, W) in [0, 1] for building a UAP.

    ``spec`` is ``natural`` (random crops/flips of the skimage photographs, made at the model's input
    size) or anything :func:`trustvision.data.dataset.load_dataset` reads (folder, ``.npz``, ``mnist``...),
    resized to ``size`` and sampled (seeded) down to ``n``.  Colour is converted to one channel by
    luminance (ITU-R 601 weights) for 1-channel models: acceptable here because the images are only a
    *source* for the perturbation, never evaluation data.  One channel is replicated for 3-channel models.
    """
    from ...data.bundled import natural_images
    from ...data import load_dataset
    if spec == "natural":
        side = max(size)
        x = natural_images(n, side, seed)
        if tuple(size) != (side, side):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    else:
        ds = load_dataset(spec, size=tuple(size)).sample(n, seed)
        x = ds.x if tuple(ds.x.shape[-2:]) == tuple(size) else \
            F.interpolate(ds.x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 3 and channels == 1:
        return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).clamp(0, 1)
    if x.shape[1] == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    raise TrustVisionError(f"--source {spec}: images have {x.shape[1]} channels, the model takes {channels}")


@dataclass
class UAPConfig:
    """What the uap section runs (see :class:`~trustvision.attacks.universal.UniversalPerturbation`)."""

    source: str = "natural"
    n_source: int = 1000
    method: str = "fgsm"
    norm: str = "l2"
    zeta: float | None = 0.04
    eps: float | None = None
    target: int | None = None
    max_passes: int = 10
    stop_rate: float = 0.8
    step: float | None = None
    sweep: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.04, 0.08, 0.16])
    transfer: list[str] = field(default_factory=list)
    n_examples: int = 8
    seed: int = 0
    step_rule: str = "batched"

    def __post_init__(self) -> None:
        if self.eps is not None:
            self.zeta = None
        self.generator()                     # bad options fail now

    def generator(self) -> UniversalPerturbation:
        return UniversalPerturbation(method=self.method, norm=self.norm, eps=self.eps, zeta=self.zeta,
                                     max_passes=self.max_passes, stop_rate=self.stop_rate, step=self.step,
                                     seed=self.seed, step_rule=self.step_rule)


def _load_transfer(spec: str, clf: Classifier, trust_code: bool) -> Classifier:
    """``SPEC`` or ``ARCH@WEIGHTS`` loaded with the main model's classes, channels, size and normalisation.

    ``trust_code`` comes only from the caller (``--trust-code``), never from :class:`UAPConfig`: a config file
    cannot make a ``module.py:factory`` transfer model run its file.  Pickles are never unpickled here.
    """
    from ...models.loading import load_model
    arch, _, weights = spec.partition("@")
    d = clf.describe()
    return load_model(arch, weights=weights or None, num_classes=clf.num_classes, channels=clf.channels,
                      input_size=clf.input_size, mean=d["mean"], std=d["std"], device=clf.device,
                      trust_code=trust_code)


def uap_section(clf: Classifier, data: Dataset, clean_logits: Tensor, cfg: UAPConfig | None = None, *,
                out_dir: Path | None = None, batch_size: int = 128, progress: Progress | None = None,
                trust_code: bool = False) -> SectionResult:
    """Build a UAP from ``cfg.source``, evaluate it on ``data`` (N, C, H, W) against random controls.

    ``clean_logits`` (N, K) are the clean section's logits.  Writes (when ``out_dir`` is given)
    ``uap.npy`` (1, C, H, W), ``uap.png`` (amplified) and the figures; the generator checkpoints every
    pass to ``out_dir/uap/`` so an interrupted run resumes.  ``trust_code`` (from ``--trust-code`` only,
    never from a config) lets ``module.py:factory`` transfer models run their file; without it they are
    refused before any work starts.
    """
    cfg = cfg or UAPConfig()
    for spec in cfg.transfer:
        require_code_trust(spec, trust_code, where="[uap] transfer: ")
    progress = progress or Quiet()
    t0 = time.perf_counter()
    size = clf.input_size or tuple(data.x.shape[-2:])
    src = source_images(cfg.source, n=cfg.n_source, size=size, channels=clf.channels, seed=cfg.seed)
    x_eval = data.x if tuple(data.x.shape[-2:]) == tuple(size) else \
        F.interpolate(data.x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    advance = progress.task(f"UAP ({cfg.method}, {cfg.norm}) from {cfg.source}", 3)
    gen = cfg.generator()
    res = gen.generate(clf, src, target=cfg.target, reference=x_eval,
                       out_dir=None if out_dir is None else Path(out_dir) / "uap")
    advance(1)
    pc = clean_logits.argmax(1).cpu()
    rates = fooling.fooling_rates(clf, x_eval, res.v, norm=cfg.norm, y=data.y, target=cfg.target, seed=cfg.seed,
                                  batch_size=batch_size, pred_clean=pc)
    sweep = fooling.zeta_sweep(clf, x_eval, res.v, norm=cfg.norm, zetas=cfg.sweep, reference_norm=res.reference_norm,
                               target=cfg.target, seed=cfg.seed, batch_size=batch_size)
    advance(1)
    tm = _transfer(cfg, clf, src, x_eval, res.v, batch_size, trust_code) if cfg.transfer else None
    advance(1)
    key = "fooling_rate" if cfg.target is None else "targeted_success"
    controls = {c: rates[c][key] for c in fooling.CONTROLS}
    metrics = {key: rates["uap"][key], "controls": controls, "best_control": max(controls.values()),
               "budget": {"kind": res.budget, "norm": cfg.norm, "eps": res.eps, "zeta": res.zeta,
                          "zeta_reference": "mean norm of the evaluation images", "reference_norm": res.reference_norm},
               "source": cfg.source, "n_source": len(src), "n_eval": len(x_eval), "generator": res.describe(),
               "rates": rates, "zeta_sweep": sweep, "zeta_sweep_note": "the UAP rescaled to each zeta",
               "transfer": tm}
    sec = SectionResult("uap", "Universal adversarial perturbation", metrics, _tables(cfg, clf, res, rates, tm),
                        flags=_flags(rates, key), config=asdict(cfg))
    if out_dir is not None:
        _write_figures(sec, Path(out_dir), cfg, clf, res, x_eval, pc, data.y.cpu(), sweep, tm, batch_size)
    sec.seconds = time.perf_counter() - t0
    return sec


def _transfer(cfg: UAPConfig, clf: Classifier, src: Tensor, x_eval: Tensor, v: Tensor, batch_size: int,
              trust_code: bool = False) -> dict:
    """Build a UAP on every ``cfg.transfer`` model too and evaluate each UAP on every model."""
    models = {clf.name: clf, **{s: _load_transfer(s, clf, trust_code) for s in cfg.transfer}}
    uaps = {clf.name: v}
    for s, m in list(models.items())[1:]:
        uaps[s] = cfg.generator().generate(m, src, target=cfg.target, reference=x_eval).v
    return fooling.transfer_matrix(uaps, models, x_eval, target=cfg.target, batch_size=batch_size)


def _flags(rates: dict, key: str) -> list[Flag]:
    """``uap_not_above_control`` when the UAP does no better than a random perturbation of its norm."""
    best_ctrl = max(rates[c][key] for c in fooling.CONTROLS)
    if not rates["uap"][key] <= best_ctrl + 0.02:
        return []
    return [Flag("uap_not_above_control", "warning",
                 f"the UAP's {key} ({rates['uap'][key]:.1%}) is not above a random control of the same norm "
                 f"({best_ctrl:.1%}): raise the budget or the passes before reading it as a vulnerability",
                 {"uap": rates["uap"][key], "control": best_ctrl})]


def _tables(cfg: UAPConfig, clf: Classifier, res, rates: dict, tm: dict | None) -> list[Table]:
    """UAP vs controls, per-class fooling rate, and (with transfer models) the transfer matrix."""
    rows = [[name, rates[name]["fooling_rate"]] + ([rates[name]["targeted_success"]] if cfg.target is not None else [])
            for name in ("uap", *fooling.CONTROLS)]
    cols = ["perturbation", "fooling_rate"] + (["targeted_success"] if cfg.target is not None else [])
    tables = [Table(f"UAP vs random controls ({cfg.norm}, eps={res.eps:.4g}"
                    + (f", zeta={res.zeta:.4g})" if res.zeta is not None else ")"), cols, rows),
              Table("Per-class fooling rate", ["class", "uap", "permuted", "random"],
                    [[clf.labels[int(c)] if int(c) < len(clf.labels) else c, r,
                      rates["permuted"]["per_class_fooling_rate"].get(c), rates["random"]["per_class_fooling_rate"].get(c)]
                     for c, r in rates["uap"]["per_class_fooling_rate"].items()])]
    if tm:
        tables.append(Table(f"Transfer ({tm['metric']}): rows built on, columns evaluated on",
                            ["built on"] + tm["targets"], [[s] + row for s, row in zip(tm["sources"], tm["matrix"])]))
    return tables


def _write_figures(sec: SectionResult, out: Path, cfg: UAPConfig, clf: Classifier, res, x_eval: Tensor, pc: Tensor,
                   y: Tensor, sweep: dict, tm: dict | None, batch_size: int) -> None:
    """Save ``uap.npy`` (1, C, H, W) and the section's figures into ``out``; list them in ``sec.figures``.

    The before/after examples are fooled images first, one class after another (``y`` (N,): true labels).
    """
    from ...report.figures import uap as uf
    from ...report.figures.common import pick_examples
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "uap.npy", res.v.detach().cpu().numpy())
    uf.uap_image(res.v, out / "uap.png", title=f"UAP ({cfg.norm}, eps={res.eps:.3g}), amplified")
    pa = fooling._predict(clf, x_eval, res.v, batch_size)          # (N,) predictions with the UAP
    pick = torch.from_numpy(pick_examples(y, pa != pc, cfg.n_examples))   # fooled first, over the classes
    xa = (x_eval[pick] + res.v.cpu()).clamp(0, 1)
    uf.before_after(x_eval[pick], xa, pc[pick], pa[pick], clf.labels, out / "uap_examples.png")
    sec.examples = [{"index": pick.tolist(), "label": y[pick].tolist(), "pred_clean": pc[pick].tolist(),
                     "pred_uap": pa[pick].tolist(), "fooled": (pa[pick] != pc[pick]).tolist()}]
    label = "fooling rate" if cfg.target is None else f"targeted success (class {cfg.target})"
    uf.convergence(res.curve, out / "uap_convergence.png", ylabel=f"{label} (source images)",
                   stop_rate=cfg.stop_rate)
    uf.zeta_sweep_plot(sweep, out / "uap_zeta_sweep.png", ylabel=label, norm=cfg.norm)
    sec.figures += [Figure("Universal perturbation (amplified)", "uap.png", "grey = 0; saved as uap.npy"),
                    Figure("Before / after", "uap_examples.png", "Evaluation images, clean and with the UAP (red: the "
                           "prediction changed); fooled images first, from as many classes as there are."),
                    Figure("Convergence", "uap_convergence.png", "Rate on the source images after each pass."),
                    Figure("ζ sweep", "uap_zeta_sweep.png", "The UAP rescaled to each ζ vs random controls.")]
    if tm:
        uf.transfer_heatmap(tm, out / "uap_transfer.png")
        sec.figures.append(Figure("Transfer matrix", "uap_transfer.png"))
