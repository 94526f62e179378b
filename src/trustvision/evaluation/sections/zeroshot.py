"""Raw Zero-Shot: transferability of features and its link to adversarial robustness.

Kotyan, Matsuki & Vargas, "Transferability of features for neural networks links to adversarial
attacks and defences", PLOS ONE 17(4) e0266060, 2022.  For an N-class dataset and each architecture:

1. train one *full* classifier on all N classes, and N *Raw Zero-Shot* classifiers, the k-th on the
   training images of every class but k with labels re-indexed to 0..N-2 (``y -> y - [y > k]``);
2. feed the test images of class k to the k-th classifier (which never saw the class) and keep their
   soft labels, (n_k, N-1), rows summing to one;
3. score them (:mod:`.zeroshot_metrics`): DBM (cluster scatter; lower = denser), AM (distance to the
   full model's view of the class without its own entry), each in its several readings
   (:func:`~.zeroshot_metrics.variants`), plus entropy and silhouette; per architecture, the mean and
   spread over held-out classes;
4. attack the full model (any registered attacks, by default the paper's few-pixel and threshold
   attacks) and correlate the metrics with attack success (Pearson and Spearman, with p-values), per
   architecture and per (architecture, class).

Training is :func:`trustvision.training.trainer.train_classifier` through
:func:`~trustvision.training.cache.cached_model` (seeded, cached); every model is also written atomically
(:func:`~trustvision.persist.atomic_write`) to ``OUT/models/ARCH-heldK.safetensors`` (``ARCH-full``) stamped
with a key (:func:`~trustvision.persist.digest`), and attack results to ``OUT/attacks/``, so an interrupted
run resumes.  ``OUT/results.json`` is the shared :func:`~trustvision.results.envelope` document.
Images are (N, C, H, W) in [0, 1]; the architectures are :data:`trustvision.models.zoo.small.ARCHS` names.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...models.zoo.paper import PAPER_ARCHS
from ...persist import atomic_write, digest, write_json_atomic
from ...progress import Progress, Quiet
from ...results import SectionResult, envelope
from ...training.cache import cached_model
from ...training.trainer import train_classifier
from .. import zeroshot_metrics as zm

PAPER_PRESET = "kotyan2022"     # the threshold attack as its authors run it (attacks/presets.py), when present


def _default_attacks() -> dict[str, dict[str, Any]]:
    """The paper's few-pixel and threshold attacks.  The threshold attack takes the ``kotyan2022`` preset's
    options (CMA-ES, minimal threshold, 8-bit values) when that preset is registered, else today's small
    DE budget (``eps`` 0.3, population 30, 30 generations)."""
    from ...attacks.presets import PRESETS
    attacks: dict[str, dict[str, Any]] = {"pixel": {"th": 10, "pop_size": 50, "generations": 30},
                                          "threshold": {"eps": 0.3, "pop_size": 30, "generations": 30}}
    if PAPER_PRESET in PRESETS:
        preset = PRESETS.get(PAPER_PRESET)
        if preset.attack == "threshold":
            attacks["threshold"] = json.loads(json.dumps(dict(preset.fixed)))
    return attacks


DEFAULT_ATTACKS: dict[str, dict[str, Any]] = _default_attacks()
MIN_SIDE = 28          # smaller images (e.g. the 8x8 digits) are upsampled: LeNet and CapsNet need >= 17


@dataclass
class ZeroShotConfig:
    """What a Raw Zero-Shot run depends on.

    ``attacks`` maps a registered attack name (``make_attack``) to its constructor options; ``seed`` is
    added where the attack takes one.  ``classes`` selects (and re-indexes) a subset of the classes.
    """

    archs: list[str] = field(default_factory=lambda: list(PAPER_ARCHS))
    classes: list[int] | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 5e-3
    test_fraction: float = 0.2
    train_images: int | None = None
    heldout_images: int | None = None
    seen_images: int = 50
    attacks: dict[str, dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_ATTACKS)))
    attack_images: int = 100
    dbm_q: float = 2.0
    seed: int = 0
    device: str = "cpu"
    resume: bool = True

    def __post_init__(self) -> None:
        from ...models.zoo import small as zoo
        bad = [a for a in self.archs if a not in zoo.ARCHS]
        if bad or not self.archs:
            raise TrustVisionError(f"--archs: unknown architecture(s) {bad or '(none given)'}; choose from "
                                   f"{', '.join(zoo.ARCHS)}")
        for name, val, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                               ("--attack-images", self.attack_images, 0), ("--seen-images", self.seen_images, 1)):
            if int(val) < low:
                raise TrustVisionError(f"{name} must be >= {low}, got {val}")
        if not 0 < self.test_fraction < 1:
            raise TrustVisionError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")


# ------------------------------------------------------------------ data
def prepare(data: Dataset, cfg: ZeroShotConfig) -> tuple[Dataset, Dataset]:
    """Select ``cfg.classes`` (re-indexed 0..N-1), upsample small images, seeded train/test split."""
    if cfg.classes is not None:
        cls = [int(c) for c in cfg.classes]
        if len(set(cls)) != len(cls) or min(cls) < 0 or max(cls) >= data.num_classes:
            raise TrustVisionError(f"--classes {cls}: must be distinct classes of {data.name!r} "
                                   f"(0..{data.num_classes - 1})")
        keep = torch.isin(data.y, torch.tensor(cls))
        remap = torch.full((data.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(cls)] = torch.arange(len(cls))
        data = Dataset(data.x[keep], remap[data.y[keep]], [data.labels[c] for c in cls], data.name)
    if data.num_classes < 3:
        raise TrustVisionError(f"Raw Zero-Shot needs >= 3 classes (a held-out model needs 2), "
                               f"{data.name!r} has {data.num_classes}")
    if min(data.x.shape[-2:]) < MIN_SIDE:
        h, w = data.x.shape[-2:]
        s = MIN_SIDE / min(h, w)
        x = F.interpolate(data.x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        data = Dataset(x.clamp(0, 1), data.y, data.labels, data.name)
    missing = [data.labels[c] for c in range(data.num_classes) if not bool((data.y == c).any())]
    if missing:
        raise TrustVisionError(f"dataset {data.name!r} has no images of class(es) {missing}")
    train, test = data.split(cfg.test_fraction, cfg.seed)
    return train.sample(cfg.train_images, cfg.seed), test


def heldout_split(train: Dataset, k: int) -> Dataset:
    """Training set without class ``k``, labels re-indexed ``y -> y - [y > k]`` to 0..N-2, names without k."""
    keep = train.y != k
    y = train.y[keep]
    return Dataset(train.x[keep], y - (y > k).long(), train.labels[:k] + train.labels[k + 1:], train.name)


def data_digest(data: Dataset) -> str:
    """:func:`~trustvision.persist.digest` of the images (N, C, H, W) and labels (N,)."""
    return digest(data.x, data.y)


# ------------------------------------------------------------------ models
def trained_model(arch: str, train: Dataset, held: int | None, cfg: ZeroShotConfig,
                  out: Path) -> tuple[nn.Module, bool, str]:
    """The ``arch`` classifier for ``train`` (held-out class ``held`` or None for the full model).

    Loads ``OUT/models/ARCH-heldK.safetensors`` when its key matches, else trains (or takes the cache of)
    :func:`~trustvision.training.cache.cached_model` and writes the file atomically.
    Returns (module in eval mode, whether it was trained now, key digest).
    """
    from safetensors.torch import save_file

    from ...models.zoo import small as zoo
    nc, ch = train.num_classes, int(train.x.shape[1])
    tag = "full" if held is None else f"held{held}"
    key = {"name": f"zeroshot-{arch}-{tag}", "arch": arch, "held_out": held, "num_classes": nc, "channels": ch,
           "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
           "data": data_digest(train), "v": 1, "torch": torch.__version__.split("+")[0]}
    model_key = digest(key)
    path = out / "models" / f"{arch}-{tag}.safetensors"

    def build() -> nn.Module:
        return zoo.ARCHS[arch](num_classes=nc, channels=ch)

    if cfg.resume and path.is_file():
        module = _load_persisted(path, model_key, build)
        if module is not None:
            return module.to(cfg.device).eval(), False, model_key
    trained = []

    def train_fn(m: nn.Module) -> nn.Module:
        trained.append(True)
        return train_classifier(m, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                device=cfg.device)

    module, _, _ = cached_model(key, build, train_fn)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                             metadata={"key": model_key, "arch": arch, "held_out": str(held)}))
    return module.to(cfg.device).eval(), bool(trained), model_key


def _load_persisted(path: Path, model_key: str, build) -> nn.Module | None:
    """The module saved at ``path`` if its stamped key is ``model_key``; None if stale or unreadable."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != model_key:
                return None
        module = build()
        module.load_state_dict(load_file(str(path)))
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError):
        return None
    return module


def _soft(clf: Classifier, x: Tensor) -> Tensor:
    """Soft labels (n, K) = softmax of the classifier's logits, on the CPU in float64."""
    return torch.softmax(clf.predict(x).double(), 1).cpu()


def _first_per_class(y: Tensor, order: Tensor, per_class: int, classes: list[int]) -> Tensor:
    """Sorted indices: the first ``per_class`` of each class in ``classes`` along ``order``."""
    picks = [order[y[order] == c][:per_class] for c in classes]
    return torch.cat(picks).sort().values if picks else torch.empty(0, dtype=torch.long)


# ------------------------------------------------------------------ one architecture
def run_arch(arch: str, train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path,
             progress: Progress | None = None) -> dict:
    """Train/load the N + 1 models of ``arch``, compute its Raw Zero-Shot metrics and attack its full model.

    Returns ``{"arch", "clean_accuracy", "trained", "per_class": [metrics of each held-out class],
    "attacks": {name: {"success_rate", "per_class", "n"}}, "soft": [(n_k, N-1) arrays],
    "full_soft": [(n_k, N-1) arrays]}`` (the two soft-label lists are NumPy, not JSON).
    """
    progress = progress or Quiet()
    n_cls, ch = test.num_classes, int(test.x.shape[1])
    advance = progress.task(f"zeroshot {arch}", n_cls + 1 + len(cfg.attacks))
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.seed))
    full, trained, full_key = trained_model(arch, train, None, cfg, out)
    advance()
    clf_full = Classifier(full, num_classes=n_cls, channels=ch, device=cfg.device, name=f"{arch}-full")
    full_logits = clf_full.predict(test.x).double().cpu()
    correct = full_logits.argmax(1) == test.y
    rec: dict[str, Any] = {"arch": arch, "clean_accuracy": float(correct.float().mean()), "per_class": [],
                           "soft": [], "full_soft": [], "attacks": {}}
    n_trained = int(trained)
    for k in range(n_cls):
        model, trained, _ = trained_model(arch, heldout_split(train, k), k, cfg, out)
        n_trained += int(trained)
        clf = Classifier(model, num_classes=n_cls - 1, channels=ch, device=cfg.device, name=f"{arch}-held{k}")
        idx = _first_per_class(test.y, order, cfg.heldout_images or len(test), [k])
        soft = _soft(clf, test.x[idx]).numpy()
        seen = _first_per_class(test.y, order, cfg.seen_images, [c for c in range(n_cls) if c != k])
        seen_y = test.y[seen] - (test.y[seen] > k).long()
        seen_soft = _soft(clf, test.x[seen])
        known = test.labels[:k] + test.labels[k + 1:]
        rec["soft"].append(soft)
        rec["full_soft"].append(zm.drop_and_renormalise(full_logits[idx], k))
        some = len(idx) > 0
        readings = zm.variants(soft, seen_soft, seen_y, full_logits[idx], k, cfg.dbm_q) if some else \
            dict.fromkeys(zm.DBM_VARIANTS + zm.AM_VARIANTS)
        rec["per_class"].append({
            "class": test.labels[k], "n": len(idx), **readings,
            "entropy": zm.soft_entropy(soft) if some else None,
            "silhouette": zm.heldout_silhouette(soft, seen_soft, seen_y) if some else None,
            "rzs_accuracy": float((seen_soft.argmax(1) == seen_y).double().mean()) if len(seen) else None,
            "top_known_class": known[int(soft.mean(0).argmax())] if len(soft) else None})
        advance()
    rec["trained"] = n_trained
    per = max(1, -(-cfg.attack_images // n_cls))
    ok = order[correct[order]]
    aidx = _first_per_class(test.y, ok, per, list(range(n_cls))) if cfg.attack_images else ok[:0]
    for name, opts in cfg.attacks.items():
        rec["attacks"][name] = _attack(name, opts, clf_full, test, aidx, cfg, out, arch, full_key)
        advance()
    return rec


def _attack_opts(name: str, opts: dict[str, Any], seed: int) -> dict[str, Any]:
    from ...attacks import ATTACKS
    cls = ATTACKS.get(str(name).lower())
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None and dataclasses.is_dataclass(cls) else set()
    return {**({"seed": seed} if "seed" in fields else {}), **opts}


def make_attacks(cfg: ZeroShotConfig) -> dict[str, Any]:
    """Build every configured attack once (so a bad name or option fails before any training)."""
    from ...attacks import make_attack
    return {name: make_attack(name, **_attack_opts(name, opts, cfg.seed)) for name, opts in cfg.attacks.items()}


def _attack(name: str, opts: dict[str, Any], clf: Classifier, test: Dataset, idx: Tensor, cfg: ZeroShotConfig,
            out: Path, arch: str, model_key: str) -> dict[str, Any]:
    """Success of attack ``name`` on the full model over images ``idx``: overall and per class (cached)."""
    from ...attacks import make_attack
    full_opts = _attack_opts(name, opts, cfg.seed)
    fp = digest(model_key, name, full_opts, idx.tolist(), data_digest(test))
    path = out / "attacks" / f"{arch}-{name}.json"
    if cfg.resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fp:
                return saved["result"]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    attack = make_attack(name, **full_opts)
    success = torch.zeros(len(idx), dtype=torch.bool)
    step = max(cfg.batch_size, 1) * 2
    for i in range(0, len(idx), step):
        j = idx[i:i + step]
        res = attack(clf, test.x[j].to(clf.device), test.y[j].to(clf.device))
        success[i:i + len(j)] = res.success.cpu()
    y = test.y[idx]
    per_class = [float(success[y == c].float().mean()) if bool((y == c).any()) else None
                 for c in range(test.num_classes)]
    result = {"success_rate": float(success.float().mean()) if len(idx) else None, "per_class": per_class,
              "n": len(idx), "options": full_opts}
    write_json_atomic(path, {"fingerprint": fp, "result": result})
    return result


# ------------------------------------------------------------------ the section
def zeroshot_section(data: Dataset, cfg: ZeroShotConfig, out_dir: str | Path,
                     progress: Progress | None = None) -> SectionResult:
    """Run the protocol for every ``cfg.archs`` on ``data`` and summarise it as a :class:`SectionResult`.

    Figures (metric bars, soft-label PCA per architecture, correlation scatter) are written into
    ``out_dir``; per-architecture raw records stay in memory only (``SectionResult.examples`` holds the
    per-class metrics).
    """
    from .zeroshot_report import summarise
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_attacks(cfg)
    train, test = prepare(data, cfg)
    records = [run_arch(a, train, test, cfg, out, progress) for a in cfg.archs]
    sec = summarise(records, test.labels, cfg, out)
    sec.config = {**asdict(cfg), "n_train": len(train), "n_test": len(test)}
    sec.seconds = time.time() - t0
    return sec


def run_zeroshot(data: Dataset, cfg: ZeroShotConfig, out_dir: str | Path, *, data_spec: str = "",
                 progress: Progress | None = None) -> dict:
    """The whole run: the section, then ``OUT/results.json`` and ``OUT/report.html``; returns the results."""
    from ...report import render_report
    out = Path(out_dir)
    sec = zeroshot_section(data, cfg, out, progress)
    m = sec.metrics
    summary = {f"dbm@{a}": m["dbm_mean"][a] for a in cfg.archs}
    summary.update({f"am@{a}": m["am_mean"][a] for a in cfg.archs})
    results = envelope(
        model={"name": f"Raw Zero-Shot zoo ({', '.join(cfg.archs)})", "num_classes": len(m["classes"]),
               "channels": int(data.x.shape[1]), "device": cfg.device},
        data={"spec": data_spec or data.name, "name": data.name, "n": sec.config["n_train"] + sec.config["n_test"],
              "num_classes": len(m["classes"])},
        config={"zeroshot": asdict(cfg)}, summary=summary, sections={"zeroshot": sec}, gates=[])
    write_json_atomic(out / "results.json", results)
    render_report(results, out)
    return results
