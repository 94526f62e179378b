"""The ``patch`` audit section: a universal adversarial patch (Brown et al. 2017) judged on held-out images.

The audited images are split (seeded) into a *training* half, on which one patch is trained with EOT over
location, rotation and scale (and photometric transforms when ``eot`` is set;
:class:`~trustvision.attacks.patch.AdversarialPatch`), and a *held-out* half the patch never saw, on which
it is judged under fresh draws: at several areas (the same patch printed smaller or larger), at several
transformation strengths, against two controls of the same shape and area — a uniform random-noise patch
and a natural-photo patch (a crop of the skimage photographs) — and against the clean baseline (no patch).

Targeted (``target``): success = share of held-out (image, draw) pairs predicted ``target`` among images
not of that class; the baseline is the clean share predicted ``target``.  Untargeted: success = error rate
under the patch; the baseline is the clean error rate.  Shapes: images (N, C, H, W) in [0, 1]; the patch
(C, p, p).  Opt-in (not in the default audit).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...attacks.patch import AdversarialPatch, parse_scale, patch_success, photometric, scaled
from ...attacks.patch_render import LUMA, apply_patch, check_fits, parse_print_size, patch_side, sample_placement
from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Figure, Flag, SectionResult, Table

CONTROLS = ("noise", "natural")


@dataclass
class PatchConfig:
    """What the patch section runs (the attack's arguments: :class:`~trustvision.attacks.patch.AdversarialPatch`).

    ``areas``: areas at which the trained patch is judged (the success-vs-area curve); ``strengths``:
    multipliers of the rotation range and of the scale jitter (0 = upright, nominal size; location stays
    random) for the success-vs-strength curve; ``train_fraction``: share of the audited images the patch
    is trained on (the rest is held out); ``eval_draws``: fresh placements per held-out image;
    ``print_size``/``dpi``: side of ``patch.png`` when printed (``5cm`` at 300 dpi = 591 pixels).
    """

    target: int | None = None
    area: float = 0.05
    areas: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2])
    shape: str = "square"
    rotation: float = 22.5
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    eot: str | None = None
    strengths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    steps: int = 300
    batch_size: int = 32
    draws: int = 4
    lr: float = 0.05
    tv: float = 0.0
    nps: float = 0.0
    palette: str | None = None
    train_fraction: float = 0.5
    eval_draws: int = 4
    print_size: str = "5cm"
    dpi: float = 300.0
    n_examples: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        self.scale = list(parse_scale(self.scale, "scale"))
        if not 0 < self.train_fraction < 1:
            raise TrustVisionError(f"train_fraction must lie in (0, 1), got {self.train_fraction!r}")
        for a in self.areas:
            if isinstance(a, bool) or not 0 < a < 1:
                raise TrustVisionError(f"--areas must lie in (0, 1) (fractions of the image), got {a!r}")
        if any(k < 0 for k in self.strengths):
            raise TrustVisionError(f"--strengths must be >= 0, got {self.strengths}")
        if self.eval_draws < 1:
            raise TrustVisionError(f"eval_draws must be >= 1, got {self.eval_draws}")
        parse_print_size(self.print_size, self.dpi)
        self.attack()                                      # bad options fail now, before any work

    def attack(self) -> AdversarialPatch:
        return AdversarialPatch(area=self.area, shape=self.shape, rotation=self.rotation, scale=tuple(self.scale),
                                eot=self.eot, steps=self.steps, batch_size=self.batch_size, draws=self.draws,
                                lr=self.lr, tv=self.tv, nps=self.nps, palette=self.palette, seed=self.seed)


def natural_patch(channels: int, p: int, seed: int = 0) -> Tensor:
    """(channels, p, p) crop of a skimage photograph (luminance for one channel): the natural-image control."""
    from ...data.bundled import natural_images
    x = natural_images(1, p, seed + 7)[0]
    if channels == 1:
        return (x * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True).clamp(0, 1)
    return x if channels == 3 else x[:1].repeat(channels, 1, 1)


def split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (train, held-out) index split of ``n`` images; one-line error when either side would be empty."""
    k = int(round(n * fraction))
    if k < 1 or k >= n:
        raise TrustVisionError(f"patch: {n} image(s) cannot be split into training and held-out images; give more")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k], perm[k:]


def _strength(cfg: PatchConfig, k: float, fit: float) -> dict:
    """Placement and photometric settings at strength ``k``: rotation × k (<= 180°), scale jitter around 1 × k
    (the largest scale capped at ``fit``, where the patch still fits the image), ``eot`` ranges × k."""
    lo, hi = cfg.scale
    return {"rotation": min(180.0, cfg.rotation * k), "eot": scaled(photometric(cfg.eot), k),
            "scale": (max(0.05, 1 - (1 - lo) * k), min(fit, 1 + (hi - 1) * k))}


def _judge(clf: Classifier, x: Tensor, y: Tensor, patches: dict[str, Tensor], mask: Tensor, cfg: PatchConfig, *,
           area: float, rotation: float, scale: tuple[float, float], batch_size: int, eot=None) -> dict[str, float]:
    """Success of every patch (same draws: same seed) at one area and transformation setting."""
    scale = (min(scale[0], scale[1]), scale[1])
    return {name: patch_success(clf, x, p, mask, area=area, y=y, target=cfg.target, rotation=rotation, scale=scale,
                                eot=eot, draws=cfg.eval_draws, seed=cfg.seed + 1000, batch_size=batch_size,
                                shape=cfg.shape)["success"] for name, p in patches.items()}


def _baseline(clean_pred: Tensor, y: Tensor, target: int | None) -> float:
    """Clean share predicted ``target`` among non-target images (targeted), or the clean error rate."""
    if target is None:
        return float((clean_pred != y).float().mean())
    keep = y != target
    return float((clean_pred[keep] == target).float().mean()) if bool(keep.any()) else float("nan")


def patch_section(clf: Classifier, data: Dataset, clean_logits: Tensor, cfg: PatchConfig | None = None, *,
                  out_dir: Path | None = None, batch_size: int = 128, progress: Progress | None = None
                  ) -> SectionResult:
    """Train a patch on part of ``data`` (x (N, C, H, W), y (N,)), judge it on the rest; see the module docstring.

    ``clean_logits`` (N, K): the clean section's logits.  Writes (with ``out_dir``) ``patch.npy`` (C, p, p),
    ``patch.png`` at the print size and the figures.
    """
    cfg = cfg or PatchConfig()
    progress = progress or Quiet()
    t0 = time.perf_counter()
    hw = tuple(data.x.shape[-2:])
    for a in sorted({cfg.area, *cfg.areas}):
        check_fits(a, hw, cfg.shape, cfg.scale[1], "--area" if a == cfg.area else "--areas")
    tr, ho = split(len(data), cfg.train_fraction, cfg.seed)
    advance = progress.task(f"patch ({'target ' + str(cfg.target) if cfg.target is not None else 'untargeted'})", 3)
    res = cfg.attack().generate(clf, data.x[tr], target=cfg.target)
    advance(1)
    x, y = data.x[ho], data.y[ho]
    clean_pred = clean_logits.argmax(1).cpu()[ho]
    c, p = res.patch.shape[0], res.patch.shape[-1]
    g = torch.Generator().manual_seed(cfg.seed + 99)
    patches = {"patch": res.patch.cpu(), "noise": torch.rand(c, p, p, generator=g),
               "natural": natural_patch(c, p, cfg.seed)}
    mask = res.mask.cpu()
    areas = sorted({cfg.area, *cfg.areas})
    photo = photometric(cfg.eot)
    by_area = {a: _judge(clf, x, y, patches, mask, cfg, area=a, rotation=cfg.rotation, scale=tuple(cfg.scale),
                         batch_size=batch_size, eot=photo) for a in areas}
    advance(1)
    fit = min(hw) / patch_side(cfg.area, hw, cfg.shape)
    by_strength = {k: _judge(clf, x, y, patches, mask, cfg, area=cfg.area, batch_size=batch_size,
                             **_strength(cfg, k, fit)) for k in cfg.strengths}
    advance(1)
    base = _baseline(clean_pred, y, cfg.target)
    main = by_area[cfg.area]
    px = parse_print_size(cfg.print_size, cfg.dpi)
    metrics = {"success": main["patch"], "controls": {k: main[k] for k in CONTROLS}, "clean_baseline": base,
               "kind": "targeted success" if cfg.target is not None else "error rate (untargeted)",
               "target": cfg.target, "area": cfg.area, "n_train": len(tr), "n_heldout": len(ho),
               "success_vs_area": [{"area": a, **r} for a, r in by_area.items()],
               "success_vs_strength": [{"strength": k, **r} for k, r in by_strength.items()],
               "generator": res.describe(), "seconds_per_step": res.seconds_per_step,
               "print": {"size": cfg.print_size, "dpi": cfg.dpi, "pixels": px,
                         "scene_width": f"the patch covers {cfg.area:.0%} of the view when the camera frames "
                                        f"{1 / np.sqrt(cfg.area):.2f} x the printed side"}}
    sec = SectionResult("patch", "Adversarial patch", metrics, _tables(cfg, by_area, by_strength, base),
                        flags=_flags(cfg, by_area, base, len(ho)), config=asdict(cfg))
    if out_dir is not None:
        _write_figures(sec, Path(out_dir), cfg, clf, res, x, clean_pred, by_area, by_strength, base, px)
    sec.seconds = time.perf_counter() - t0
    return sec


def _tables(cfg: PatchConfig, by_area: dict, by_strength: dict, base: float) -> list[Table]:
    cols = ["patch", "noise patch", "natural patch", "clean (no patch)"]
    what = f"targeted success (class {cfg.target})" if cfg.target is not None else "error rate"
    return [Table(f"Held-out {what} vs patch area ({cfg.shape}, rotation ±{cfg.rotation:g}°, "
                  f"scale {cfg.scale[0]:g}-{cfg.scale[1]:g})", ["area"] + cols,
                  [[a, r["patch"], r["noise"], r["natural"], base] for a, r in by_area.items()]),
            Table(f"Held-out {what} vs transformation strength (area {cfg.area:g}; strength k: rotation "
                  f"±k·{cfg.rotation:g}°, scale jitter ×k" + (f", {cfg.eot} ranges ×k" if cfg.eot else "") + ")",
                  ["strength"] + cols,
                  [[k, r["patch"], r["noise"], r["natural"], base] for k, r in by_strength.items()])]


def _flags(cfg: PatchConfig, by_area: dict, base: float, n_heldout: int) -> list[Flag]:
    """Soundness: the patch must beat its controls; success should not fall as the patch grows."""
    flags = []
    main = by_area[cfg.area]
    best = max(main[k] for k in CONTROLS)
    if not main["patch"] > best + 0.02:
        flags.append(Flag("patch_not_above_control", "warning",
                          f"the patch's success ({main['patch']:.1%}) is not above a control patch of the same area "
                          f"({best:.1%}): train longer (--steps) or larger (--area) before reading it as a "
                          "vulnerability", {"patch": main["patch"], "control": best, "clean": base}))
    areas = sorted(by_area)
    drop = [(a, b) for a, b in zip(areas, areas[1:]) if by_area[b]["patch"] < by_area[a]["patch"] - 0.05]
    if drop:
        a, b = drop[0]
        flags.append(Flag("patch_success_falls_with_area", "warning",
                          f"success falls from {by_area[a]['patch']:.1%} at area {a:g} to {by_area[b]['patch']:.1%} "
                          f"at {b:g}: a larger patch should not do worse; check the optimisation (steps, lr)",
                          {"areas": [a, b]}))
    if n_heldout < 50:
        flags.append(Flag("patch_few_heldout", "info",
                          f"only {n_heldout} held-out images: rates are uncertain by about "
                          f"±{1 / np.sqrt(max(n_heldout, 1)):.0%}; audit more images", {"n_heldout": n_heldout}))
    return flags


def _write_figures(sec: SectionResult, out: Path, cfg: PatchConfig, clf: Classifier, res, x: Tensor,
                   clean_pred: Tensor, by_area: dict, by_strength: dict, base: float, px: int | None) -> None:
    """Save ``patch.npy``, ``patch.png`` (print size) and the figures into ``out``; list them in ``sec.figures``."""
    from ...report.figures import patch as pf
    out.mkdir(parents=True, exist_ok=True)
    patch, mask = res.patch.cpu(), res.mask.cpu()
    np.save(out / "patch.npy", patch.numpy())
    if px is not None:
        pf.printable_png(patch, mask, out / "patch.png", px, cfg.dpi)
    pf.patch_image(patch, mask, out / "patch_view.png", title=f"patch ({cfg.area:.0%} of the image)")
    k = min(cfg.n_examples, len(x))
    g = torch.Generator().manual_seed(cfg.seed + 5)
    pl = sample_placement(k, tuple(x.shape[-2:]), patch_side(cfg.area, tuple(x.shape[-2:]), cfg.shape),
                          rotation=cfg.rotation, scale=tuple(cfg.scale), generator=g, device="cpu")
    xp = apply_patch(x[:k].float(), patch, mask, pl)
    pred = clf.predict(xp).argmax(1).cpu()
    pf.patched_examples(x[:k], xp, clean_pred[:k], pred, clf.labels, out / "patch_examples.png", target=cfg.target)
    what = f"targeted success (class {cfg.target})" if cfg.target is not None else "error rate"
    pf.success_curve(by_area, base, out / "patch_area.png", xlabel="patch area (share of the image)", ylabel=what,
                     trained_at=cfg.area)
    pf.success_curve(by_strength, base, out / "patch_strength.png", xlabel="transformation strength k", ylabel=what)
    pf.training_curve(res.losses, out / "patch_training.png")
    sec.figures += [Figure("The patch", "patch_view.png", f"Printable file: patch.png ({cfg.print_size} at "
                                                            f"{cfg.dpi:g} dpi); raw pixels: patch.npy"),
                    Figure("Patched held-out images", "patch_examples.png",
                           "Top: clean with predictions; bottom: with the patch at a random placement."),
                    Figure("Success vs area", "patch_area.png", "The patch printed at each area vs the noise and "
                           "natural-photo controls of the same area and the clean baseline (held-out images)."),
                    Figure("Success vs transformation strength", "patch_strength.png",
                           "Rotation range and scale jitter multiplied by k (held-out images)."),
                    Figure("Training", "patch_training.png", "Mean EOT loss per Adam step.")]
