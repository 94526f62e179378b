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

The models are independent jobs (:func:`job_list`: every full model with its attacks, then every
held-out model): under ``torchrun --nproc-per-node N -m trustvision zeroshot ...`` rank ``r`` runs jobs
``i`` with ``i % N == r`` (:func:`run_jobs`), the small outputs (logits, soft labels, attack results)
are gathered, and rank 0 computes the metrics and writes the files — the same numbers as one process
(``docs/distributed.md``).  Images are (N, C, H, W) in [0, 1]; the architectures are :data:`trustvision.models.zoo.small.ARCHS` names.
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
from .zeroshot_attacks import attack_success, make_attacks

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
        try:
            torch.device(self.device)
        except RuntimeError:
            raise TrustVisionError(f"--device {self.device!r}: expected cpu, cuda, cuda:N or mps") from None
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
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                                 metadata={"key": model_key, "arch": arch, "held_out": str(held)}))
    except OSError as e:
        raise TrustVisionError(f"cannot write the {arch} model to {path}: {e.strerror or e}") from None
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


def _test_order(test: Dataset, cfg: ZeroShotConfig) -> Tensor:
    """The seeded order (n_test,) in which test images are picked (held-out, seen and attacked images)."""
    return torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.seed))


# ------------------------------------------------------------------ jobs: one model each
def job_list(archs: list[str], n_cls: int) -> list[tuple[str, int | None]]:
    """The independent jobs of a run: every architecture's full model (``(arch, None)``, with its attacks)
    first, then its held-out models ``(arch, k)``.  Under torchrun job ``i`` runs on rank ``i % world``."""
    return [(a, None) for a in archs] + [(a, k) for a in archs for k in range(n_cls)]


def full_job(arch: str, train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path) -> dict:
    """Train/load ``arch``'s full model; its test logits (n_test, N) float64 and the success of every attack.

    Depends only on ``cfg.seed`` and the job's own data (the trainer re-seeds torch before each model, the
    attacks use their own seeded generators), never on what ran before it in the process.
    """
    n_cls, ch = test.num_classes, int(test.x.shape[1])
    full, trained, key = trained_model(arch, train, None, cfg, out)
    clf = Classifier(full, num_classes=n_cls, channels=ch, device=cfg.device, name=f"{arch}-full")
    logits = clf.predict(test.x).double().cpu()
    order = _test_order(test, cfg)
    ok = order[(logits.argmax(1) == test.y)[order]]
    per = max(1, -(-cfg.attack_images // n_cls))
    aidx = _first_per_class(test.y, ok, per, list(range(n_cls))) if cfg.attack_images else ok[:0]
    attacks = {name: attack_success(name, opts, clf, test, aidx, seed=cfg.seed, batch_size=cfg.batch_size,
                                    resume=cfg.resume, out=out, arch=arch, model_key=key)
               for name, opts in cfg.attacks.items()}
    return {"trained": int(trained), "logits": logits, "attacks": attacks}


def heldout_job(arch: str, k: int, train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path) -> dict:
    """Train/load the model of ``arch`` that never saw class ``k``; soft labels of class ``k``'s test images
    (n_k, N-1) and of up to ``cfg.seen_images`` images per seen class (with their re-indexed labels)."""
    n_cls, ch = test.num_classes, int(test.x.shape[1])
    model, trained, _ = trained_model(arch, heldout_split(train, k), k, cfg, out)
    clf = Classifier(model, num_classes=n_cls - 1, channels=ch, device=cfg.device, name=f"{arch}-held{k}")
    order = _test_order(test, cfg)
    idx = _first_per_class(test.y, order, cfg.heldout_images or len(test), [k])
    seen = _first_per_class(test.y, order, cfg.seen_images, [c for c in range(n_cls) if c != k])
    return {"trained": int(trained), "idx": idx, "soft": _soft(clf, test.x[idx]).numpy(),
            "seen_soft": _soft(clf, test.x[seen]), "seen_y": test.y[seen] - (test.y[seen] > k).long()}


def assemble(arch: str, full: dict, held: list[dict], test: Dataset, cfg: ZeroShotConfig) -> dict:
    """The record of one architecture from its full job and its N held-out jobs (in class order).

    Returns ``{"arch", "clean_accuracy", "trained", "per_class": [metrics of each held-out class],
    "attacks": {name: {"success_rate", "per_class", "n"}}, "soft": [(n_k, N-1) arrays],
    "full_soft": [(n_k, N-1) arrays]}`` (the two soft-label lists are NumPy, not JSON).
    """
    logits = full["logits"]
    rec: dict[str, Any] = {"arch": arch, "clean_accuracy": float((logits.argmax(1) == test.y).float().mean()),
                           "per_class": [], "soft": [], "full_soft": [], "attacks": full["attacks"],
                           "trained": full["trained"] + sum(h["trained"] for h in held)}
    for k, h in enumerate(held):
        idx, soft, seen_soft, seen_y = h["idx"], h["soft"], h["seen_soft"], h["seen_y"]
        known = test.labels[:k] + test.labels[k + 1:]
        rec["soft"].append(soft)
        rec["full_soft"].append(zm.drop_and_renormalise(logits[idx], k))
        some = len(idx) > 0
        readings = zm.variants(soft, seen_soft, seen_y, logits[idx], k, cfg.dbm_q) if some else \
            dict.fromkeys(zm.DBM_VARIANTS + zm.AM_VARIANTS)
        rec["per_class"].append({
            "class": test.labels[k], "n": len(idx), **readings,
            "entropy": zm.soft_entropy(soft) if some else None,
            "silhouette": zm.heldout_silhouette(soft, seen_soft, seen_y) if some else None,
            "rzs_accuracy": float((seen_soft.argmax(1) == seen_y).double().mean()) if len(seen_y) else None,
            "top_known_class": known[int(soft.mean(0).argmax())] if len(soft) else None})
    return rec


def _run_job(job: tuple[str, int | None], train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path) -> dict:
    arch, k = job
    return full_job(arch, train, test, cfg, out) if k is None else heldout_job(arch, k, train, test, cfg, out)


def run_arch(arch: str, train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path,
             progress: Progress | None = None) -> dict:
    """All N + 1 jobs of ``arch`` in this process, assembled (see :func:`assemble` for the record)."""
    jobs = job_list([arch], test.num_classes)
    advance = (progress or Quiet()).task(f"zeroshot {arch}", len(jobs))
    outs = []
    for job in jobs:
        outs.append(_run_job(job, train, test, cfg, out))
        advance()
    return assemble(arch, outs[0], outs[1:], test, cfg)


def run_jobs(train: Dataset, test: Dataset, cfg: ZeroShotConfig, out: Path,
             progress: Progress | None = None) -> list[dict]:
    """Every architecture's record, its jobs shared among the torchrun ranks (:func:`trustvision.scale.dist.current`).

    Each rank runs the jobs it owns (``Dist.owns``: round-robin over :func:`job_list`); an error on any rank is
    raised on every rank (``Dist.raise_together``) before the outputs — CPU tensors: logits (n_test, N), soft
    labels (n_k, N-1) — are gathered, so every rank assembles the same records as a single process would.
    """
    from ...scale.dist import current, local
    dist = current()
    jobs = job_list(cfg.archs, test.num_classes)
    mine = [i for i in range(len(jobs)) if dist.owns(i)]
    where = f" on rank {dist.rank}/{dist.world}" if dist.world > 1 else ""
    advance = (progress or Quiet()).task(f"zeroshot: {len(mine)} of {len(jobs)} models{where}", len(mine))
    done: list[tuple[int, dict]] = []
    error: Exception | None = None
    try:
        for i in mine:
            with local():               # a job is one rank's alone: nothing inside may wait for the others
                done.append((i, _run_job(jobs[i], train, test, cfg, out)))
            advance()
    except Exception as e:          # noqa: BLE001 - re-raised on every rank by raise_together
        error = e
    dist.raise_together(error)
    outs = dict(pair for part in dist.gather(done) for pair in part)
    records = []
    for arch in cfg.archs:
        mine_arch = [outs[i] for i, (a, _) in enumerate(jobs) if a == arch]     # full first, then held 0..N-1
        records.append(assemble(arch, mine_arch[0], mine_arch[1:], test, cfg))
    return records


# ------------------------------------------------------------------ the section
def zeroshot_section(data: Dataset, cfg: ZeroShotConfig, out_dir: str | Path,
                     progress: Progress | None = None) -> SectionResult | None:
    """Run the protocol for every ``cfg.archs`` on ``data`` and summarise it as a :class:`SectionResult`.

    Under torchrun the models are shared among the ranks (:func:`run_jobs`); rank 0 summarises and returns
    the section, the other ranks return None.  Figures (metric bars, soft-label PCA per architecture,
    correlation scatter) are written into ``out_dir``; per-architecture raw records stay in memory only
    (``SectionResult.examples`` holds the per-class metrics).
    """
    from ...scale.dist import current
    from .zeroshot_report import summarise
    t0 = time.time()
    dist = current()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_attacks(cfg.attacks, cfg.seed)
    train, test = prepare(data, cfg)
    run_cfg = dataclasses.replace(cfg, device=str(dist.device)) if dist.active and dist.device.type != "cpu" else cfg
    records = run_jobs(train, test, run_cfg, out, progress)
    if not dist.main:
        return None
    sec = summarise(records, test.labels, cfg, out)
    sec.config = {**asdict(cfg), "n_train": len(train), "n_test": len(test), "processes": dist.world}
    sec.seconds = time.time() - t0
    return sec


def run_zeroshot(data: Dataset, cfg: ZeroShotConfig, out_dir: str | Path, *, data_spec: str = "",
                 progress: Progress | None = None) -> dict | None:
    """The whole run: the section, then ``OUT/results.json`` and ``OUT/report.html``; returns the results
    (on rank 0 under torchrun; None on the other ranks, which write only their models and attack files)."""
    from ...report import render_report
    out = Path(out_dir)
    sec = zeroshot_section(data, cfg, out, progress)
    if sec is None:
        return None
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
