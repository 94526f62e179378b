"""Universal adversarial perturbations (UAPs): one image-agnostic ``v`` that fools a model on most images.

Three generators, untargeted and targeted, L∞ and L2, all mini-batched on the device:

* ``method="fgsm"`` — the simple iterative method of Hirano & Takemoto, "Simple iterative method for
  generating targeted universal adversarial perturbations", Algorithms 13(11) 268, 2020 (also used by
  Minagi, Hirano & Takemoto, J. Imaging 2022, with non-domain natural images): for each image not yet
  fooled, an FGSM step from ``x_i + v``; if the step fools the image, ``v <- p(clip(x_i + v + step) - x_i)``.
  Per mini-batch of B images, one forward/backward gives the B steps (all from the mini-batch's starting
  ``v``) and one forward tells which of them fool their image; two candidates are formed — (1) the
  paper's update *replayed in order* for those images (no forward pass; L∞: folded in log2 B vector steps,
  :mod:`.universal_steps`) and (2) ``p(v + Σ steps of the unfooled images)`` — and the best of ``v``, (1), (2)
  on the mini-batch is kept (success, ties: mean cross-entropy).  Forwards per mini-batch: the stepped images
  fused with (2) (2B), then (1) (B).  Default step ``0.25 * eps``.
  ``step_rule="art"`` is the authors' own use of ART's ``FastGradientMethod`` with only ``eps`` set: a
  fixed L∞ sign step ``step · sign(∇)`` (also for L2 UAPs), only the in-order replay kept (no sum
  candidate, no selection); with ``batch_size=1`` it is ART's per-image loop exactly.  The preset
  ``hirano2020`` (:data:`UAP_PRESETS`) adds their ``delta = 1e-6`` (``stop_rate = 1``: every pass runs).
* ``method="deepfool"`` — Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial
  perturbations", CVPR 2017, Algorithm 1 (``v <- P(v + Δv_i)`` for each unfooled image, ``Δv_i`` the
  DeepFool perturbation of ``x_i + v``), untargeted only: the batched :class:`~.deepfool.DeepFool`
  gives all ``Δv_i`` of a mini-batch, then the same two candidates and the same choice as ``fgsm``.
* ``method="sgd"`` — Shafahi, Najibi, Xu, Dickerson, Davis & Goldstein, "Universal adversarial
  training", AAAI 2020: sign-gradient (L∞) / normalised-gradient (L2) ascent on the mini-batch sum of
  a clamped cross-entropy ``min(CE(x + v, ŷ), β)`` (targeted: ``-max(CE(x + v, t), β_t)``).

Why the batched rule is "best of replay and sum", with the measurements against ART that chose it,
is in docs/universal.md.

Budget: absolute ``eps`` or ``zeta`` (ζ), the ratio ``||v|| / mean_i ||x_i||`` over *reference*
images — the evaluation images by convention (Hirano & Takemoto) — in the same norm.  ``v`` always
satisfies ``||v|| <= eps`` exactly in fp32; images are perturbed as ``clip(x + v, 0, 1)``.

Untargeted labels are the model's clean predictions ``ŷ`` (source images may be unlabelled).
Under torchrun each rank runs its rows of every mini-batch and the updates are all-reduced
(docs/distributed.md).  Shapes: build images ``x`` (N, C, H, W) in [0, 1]; ``v`` (1, C, H, W).  The fooling rate (or targeted
success) on the build images is measured after every pass (one host sync per pass); the loop stops at
``max_passes`` or once it reaches ``stop_rate``.  With ``out_dir`` the state (``v`` + pass index) is
checkpointed after every pass to ``uap_checkpoint.npy``/``.json`` (atomic writes, keyed by a
:func:`~trustvision.persist.digest` of the settings, images and weights) and a later call resumes from it.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..persist import atomic_write, digest, write_json_atomic
from ..scale.dist import current
from .base import perturbation_norms
from .deepfool import DeepFool
from .gradient import check_number
from .norms import BALL_NORMS, as_norm
from .universal_steps import Split, choose, forward, masked_sum, predict_rows, project_v, replay

METHODS = ("fgsm", "deepfool", "sgd")
STEP_RULES = ("batched", "art")
SHUFFLES = ("torch", "python")
ART_STEP = 0.0015
"""The fixed L∞ step of ``step_rule="art"`` when ``step`` is None: Hirano & Takemoto's FGSM ``eps = 0.006`` in
standardised CIFAR-10 units times CIFAR-10's pixel standard deviation (about 0.25) in [0, 1] units."""

UAP_PRESETS: dict[str, dict] = {
    "hirano2020": {"method": "fgsm", "step_rule": "art", "step": ART_STEP, "stop_rate": 1.0, "max_passes": 10},
}
"""Named generator settings: ``hirano2020`` is Hirano & Takemoto's (Algorithms 2020) call of ART's
``(Targeted)UniversalPerturbation`` (attacker ``fgsm`` with only ``eps``, ``delta = 1e-6``, ``max_iter = 10``);
deviations in docs/universal.md."""


def mean_norm(x: Tensor, norm: str) -> float:
    """Mean over images of ``||x_i||`` (``x`` (N, C, H, W)) in ``norm`` — the denominator of ζ."""
    if norm not in BALL_NORMS:
        raise TrustVisionError(f"norm must be one of {BALL_NORMS}, got {norm!r}")
    if len(x) == 0:
        raise TrustVisionError("zeta needs reference images, got none")
    return float(perturbation_norms(x.float(), norm).mean())


@dataclass
class UAPResult:
    """A universal perturbation and how it was made.

    Attributes:
        v: (1, C, H, W) the perturbation (on the classifier's device); apply as ``clip(x + v, 0, 1)``.
        eps: absolute budget ``||v|| <= eps`` in ``norm``.  zeta: ζ if the budget was given as ζ, else
            ``eps / reference_norm`` when a reference was given, else None.
        curve: fooling rate (untargeted) or targeted success (targeted) on the build images after each pass
            (``curve[0]`` is before the first pass, i.e. at ``v`` of the starting point).
        passes: passes done in total (including resumed ones).  converged: reached ``stop_rate``.
    """

    v: Tensor
    norm: str
    eps: float
    zeta: float | None
    budget: str
    method: str
    target: int | None
    curve: list[float]
    passes: int
    converged: bool
    seconds: float
    seconds_per_pass: list[float] = field(default_factory=list)
    reference_norm: float | None = None
    resumed_from: int = 0

    def describe(self) -> dict:
        """JSON-ready summary (without ``v``)."""
        d = {k: v for k, v in asdict(self).items() if k != "v"}
        d["v_norm"] = float(perturbation_norms(self.v, self.norm)[0])
        return d


@dataclass
class UniversalPerturbation:
    """Generator of a universal adversarial perturbation (see the module docstring for the papers).

    Args:
        method: ``"fgsm"`` (Hirano & Takemoto 2020), ``"deepfool"`` (Moosavi-Dezfooli et al. 2017,
            untargeted only) or ``"sgd"`` (Shafahi et al. 2020).
        norm: ``"l2"`` or ``"linf"``.
        eps: absolute budget; or ``zeta``: budget as a share of the mean norm of the reference images.
        max_passes: passes over the build images at most (10).
        stop_rate: stop once the build-set fooling rate (targeted: success) reaches it (0.8, ART's
            ``1 - delta``).
        batch_size: images per mini-batch (64).
        step: FGSM step per image for ``fgsm``, step per mini-batch for ``sgd`` (None: ``0.25 * eps`` for
            ``fgsm``, ``0.5 * eps`` for ``sgd``; chosen on MNIST, see docs/universal.md).
        beta: clamp of the untargeted cross-entropy for ``sgd`` (9); ``beta_targeted`` (0.1) for targeted.
        deepfool_iter, overshoot: DeepFool's iterations (10) and overshoot (0.02) for ``deepfool``.
        seed: seeds the per-pass shuffles (pass ``k`` uses ``seed`` and ``k``, so resuming reproduces).
        step_rule: ``"batched"`` (an L2-normalised step for L2, best of replay and sum) or ``"art"`` (the
            authors' ART FGSM: a fixed L∞ sign step ``step`` (None: :data:`ART_STEP`), replay only); ``fgsm`` only.
        shuffle: ``"torch"`` (``torch.randperm``) or ``"python"``: pass ``k`` uses the ``k+1``-th
            ``random.sample(range(N), N)`` of ``random.Random(seed)`` — ART's shuffle after ``random.seed(seed)``.

    Example::

        res = UniversalPerturbation(method="fgsm", norm="l2", zeta=0.04).generate(clf, x_src, reference=x_eval)
        x_adv = (x_eval + res.v).clamp(0, 1)
    """

    name: ClassVar[str] = "uap"
    family: ClassVar[str] = "universal"          # capabilities, as on :class:`~.base.Attack`
    uses_gradients: ClassVar[bool] = True
    method: str = "fgsm"
    norm: str = "l2"
    eps: float | None = None
    zeta: float | None = None
    max_passes: int = 10
    stop_rate: float = 0.8
    batch_size: int = 64
    step: float | None = None
    beta: float = 9.0
    beta_targeted: float = 0.1
    deepfool_iter: int = 10
    overshoot: float = 0.02
    seed: int = 0
    step_rule: str = "batched"
    shuffle: str = "torch"

    @classmethod
    def preset(cls, name: str, **overrides) -> UniversalPerturbation:
        """The generator of preset ``name`` (:data:`UAP_PRESETS`), ``overrides`` winning (e.g. the budget)."""
        if name not in UAP_PRESETS:
            raise TrustVisionError(f"uap: unknown preset {name!r}; choose from {', '.join(UAP_PRESETS)}")
        return cls(**{**UAP_PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        if self.step_rule not in STEP_RULES:
            raise TrustVisionError(f"uap: step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")
        if self.step_rule == "art" and self.method != "fgsm":
            raise TrustVisionError(f"uap: step_rule 'art' is ART's FGSM step; it needs method 'fgsm', not {self.method!r}")
        if self.shuffle not in SHUFFLES:
            raise TrustVisionError(f"uap: shuffle must be one of {SHUFFLES}, got {self.shuffle!r}")
        if self.method not in METHODS:
            raise TrustVisionError(f"uap: method must be one of {METHODS}, got {self.method!r}")
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"uap: norm must be one of {BALL_NORMS}, got {self.norm!r}")
        if (self.eps is None) == (self.zeta is None):
            raise TrustVisionError("uap: give exactly one budget, eps (absolute) or zeta (relative)")
        check_number(self, "eps", strict=True, none_ok=True)
        check_number(self, "zeta", strict=True, none_ok=True)
        check_number(self, "max_passes", low=1, integer=True)
        check_number(self, "batch_size", low=1, integer=True)
        check_number(self, "step", strict=True, none_ok=True)
        check_number(self, "deepfool_iter", low=1, integer=True)
        check_number(self, "seed", integer=True)
        if not 0 < self.stop_rate <= 1:
            raise TrustVisionError(f"uap: stop_rate must lie in (0, 1], got {self.stop_rate}")

    # ------------------------------------------------------------------ budget
    def resolve_eps(self, reference: Tensor | None) -> tuple[float, float | None, float | None]:
        """(eps, zeta, reference mean norm) for this budget; ζ needs ``reference`` (N, C, H, W)."""
        ref = mean_norm(reference, self.norm) if reference is not None else None
        if self.zeta is not None:
            if ref is None:
                raise TrustVisionError("uap: a zeta budget needs reference (evaluation) images")
            return self.zeta * ref, self.zeta, ref
        return float(self.eps), (self.eps / ref if ref else None), ref

    # ------------------------------------------------------------------ steps
    def _fgsm(self, clf: Classifier, sp: Split, xb: Tensor, v: Tensor, lab: Tensor, t: Tensor | None, step: float,
              eps: float) -> Tensor:
        """One mini-batch of the ``fgsm`` generator on this rank's rows ``xb`` (n, C, H, W); returns the new ``v``.

        Cost per image: one forward+backward (its logits also say which images ``v`` already fools), one
        forward of ``x + v + step`` for the images not yet fooled (on the CPU; every image on an accelerator,
        :func:`~.universal_steps.predict_rows`) fused with the sum candidate's forward, and, for the batched
        rule, one forward of the replay candidate."""
        xv = (xb + v).clamp(0, 1).requires_grad_(True)
        with torch.enable_grad():
            logits = clf(xv)
            ce = F.cross_entropy(logits, t if t is not None else lab, reduction="none")
            (g,) = torch.autograd.grad((-ce if t is not None else ce).sum(), xv)
        with torch.no_grad():
            logits = logits.detach()
            pred = logits.argmax(1)
            todo = (pred != t) if t is not None else (pred == lab)
            art = self.step_rule == "art"                        # ART's FGSM: a fixed L-inf sign step
            r = step * (g.sign() if art else as_norm(self.norm).normalize(g))    # per-image FGSM steps from x + v
            stepped = (xb + v + r).clamp(0, 1)
            v_sum = None if art else masked_sum(sp, v, r, todo, eps, self.norm)
            p_step, l_sum = predict_rows(clf, stepped, todo, None if art else (xb + v_sum).clamp(0, 1))
            flips = todo & ((p_step == t) if t is not None else (p_step != lab))
            v_seq = replay(sp, xb, v, r, flips, eps, self.norm)  # H&T / ART: in order, the step must flip the image
            if art:
                return v_seq
            l_seq = forward(clf, (xb + v_seq).clamp(0, 1))
            return choose(sp, [v, v_seq, v_sum], [logits, l_seq, l_sum], lab, t)

    def _deepfool(self, clf: Classifier, sp: Split, xb: Tensor, v: Tensor, lab: Tensor, eps: float) -> Tensor:
        xv = (xb + v).clamp(0, 1)
        logits = forward(clf, xv)
        todo = logits.argmax(1) == lab
        if len(xb):
            res = DeepFool(norm=self.norm, max_iter=self.deepfool_iter, overshoot=self.overshoot)(clf, xv, lab)
            ok, r = todo & res.success, res.x_adv - xv
        else:
            ok, r = todo, torch.zeros_like(xv)
        with torch.no_grad():
            v_seq = replay(sp, xb, v, r, ok, eps, self.norm)     # Algorithm 1: v <- P(v + Δv_i), in order
            v_sum = masked_sum(sp, v, r, ok, eps, self.norm)
            l_c = forward(clf, torch.cat([(xb + v_seq).clamp(0, 1), (xb + v_sum).clamp(0, 1)]))
            return choose(sp, [v, v_seq, v_sum], [logits, l_c[:len(xb)], l_c[len(xb):]], lab, None)

    def _sgd(self, clf: Classifier, sp: Split, xb: Tensor, v: Tensor, lab: Tensor, t: Tensor | None, step: float,
             eps: float) -> Tensor:
        vv = v.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = clf((xb + vv).clamp(0, 1))
            if t is None:
                loss = F.cross_entropy(logits, lab, reduction="none").clamp(max=self.beta)
            else:
                loss = -F.cross_entropy(logits, t, reduction="none").clamp(min=self.beta_targeted)
            (g,) = torch.autograd.grad(loss.sum(), vv)
        return project_v(v + step * as_norm(self.norm).normalize(sp.sum(g)), eps, self.norm)

    # ------------------------------------------------------------------ main loop
    def _rate(self, clf: Classifier, x: Tensor, v: Tensor, lab: Tensor, t: Tensor | None) -> Tensor:
        """Device scalar: fooling rate (or targeted success) of ``v`` on all build images (each rank: its share)."""
        sp = Split(current(), len(x))
        hits = torch.zeros((), device=x.device)
        for i in range(sp.lo, sp.hi, self.batch_size * 4):
            j = min(i + self.batch_size * 4, sp.hi)
            pred = forward(clf, (x[i:j] + v).clamp(0, 1)).argmax(1)
            hits = hits + ((pred == t[i:j]) if t is not None else (pred != lab[i:j])).sum()
        return sp.sum(hits.float()) / len(x)

    def _labels(self, clf: Classifier, x: Tensor) -> Tensor:
        """(N,) the model's clean predictions (each rank predicts its share; one all-reduce)."""
        sp = Split(current(), len(x))
        part = [forward(clf, x[i:min(i + 256, sp.hi)]).argmax(1) for i in range(sp.lo, sp.hi, 256)]
        return sp.gather(torch.cat(part) if part else torch.zeros(0, dtype=torch.long, device=x.device)).clone()

    def generate(self, classifier: Classifier, x: Tensor, *, target: int | None = None,
                 reference: Tensor | None = None, out_dir: str | Path | None = None,
                 resume: bool = True) -> UAPResult:
        """Build a UAP from images ``x`` (N, C, H, W) in [0, 1] (labels: the model's clean predictions).

        Under torchrun (:func:`trustvision.scale.dist.current` active) every rank passes the same ``x`` and
        computes the steps of its rows of each mini-batch; the updates are all-reduced, so every rank returns
        the same ``v``; only rank 0 writes the checkpoint (docs/distributed.md).

        Args:
            target: target class for a targeted UAP (None: untargeted).
            reference: (M, C, H, W) images whose mean norm defines ζ (the evaluation images).
            out_dir: checkpoint folder (``uap_checkpoint.npy``/``.json`` written after every pass).
            resume: continue from a matching checkpoint in ``out_dir``.
        Returns: :class:`UAPResult` with ``v`` (1, C, H, W).
        """
        clf, dev, d = classifier, classifier.device, current()
        if x.ndim != 4 or len(x) == 0:
            raise TrustVisionError(f"uap: build images must be a non-empty N,C,H,W tensor, got {tuple(x.shape)}")
        if target is not None and not 0 <= int(target) < clf.num_classes:
            raise TrustVisionError(f"uap: --target must lie in [0, {clf.num_classes - 1}], got {target}")
        if target is not None and self.method == "deepfool":
            raise TrustVisionError("uap: method 'deepfool' is untargeted only; use fgsm or sgd with --target")
        eps, zeta, ref = self.resolve_eps(reference)
        step = self.step if self.step is not None else \
            ART_STEP if self.step_rule == "art" else (0.25 if self.method == "fgsm" else 0.5) * eps
        x = x.to(dev, torch.float32)
        x = x.clone() if x.is_inference() else x
        lab = self._labels(clf, x)
        t_all = None if target is None else torch.full((len(x),), int(target), dtype=torch.long, device=dev)
        v = torch.zeros(1, *x.shape[1:], device=dev)
        start, curve, times = 0, [], []
        ckpt = _Checkpoint(out_dir, self._fingerprint(clf, x, target, eps)) if out_dir is not None else None
        state = d.broadcast(ckpt.load() if ckpt is not None and resume and d.main else None)   # rank 0's file
        if state is not None:
            v, start, curve, times = state[0].to(dev), state[1], state[2], state[3]
        if not curve:       # v = 0: the clean predictions are the labels (untargeted 0; targeted: share of t)
            curve = [0.0 if t_all is None else float((lab == t_all).float().mean())]
        t0 = time.perf_counter()
        k = start
        while k < self.max_passes and curve[-1] < self.stop_rate:
            tp = time.perf_counter()
            v = self._pass(clf, x, v, lab, t_all, step, eps, self._order(len(x), k).to(dev), d)
            curve.append(float(self._rate(clf, x, v, lab, t_all)))   # the one host sync per pass
            k += 1
            times.append(time.perf_counter() - tp)
            if ckpt is not None and d.main:
                ckpt.save(v, k, curve, times)
        return UAPResult(v, self.norm, eps, zeta, "zeta" if self.zeta is not None else "eps", self.method,
                         target, curve, k, curve[-1] >= self.stop_rate, time.perf_counter() - t0, times, ref, start)

    def _pass(self, clf: Classifier, x: Tensor, v: Tensor, lab: Tensor, t_all: Tensor | None, step: float,
              eps: float, perm: Tensor, d) -> Tensor:
        """One pass over the build images in the order ``perm`` (N,): mini-batches of ``batch_size``, each split
        across the ranks (this rank runs its rows); returns the new ``v`` (1, C, H, W), the same on every rank."""
        for i in range(0, len(x), self.batch_size):
            idx = perm[i:i + self.batch_size]
            sp = Split(d, len(idx))
            mine = idx[sp.lo:sp.hi]
            xb, lb = x[mine], lab[mine]
            tb = None if t_all is None else t_all[:len(mine)]
            if self.method == "fgsm":
                v = self._fgsm(clf, sp, xb, v, lb, tb, step, eps)
            elif self.method == "deepfool":
                v = self._deepfool(clf, sp, xb, v, lb, eps)
            else:
                v = self._sgd(clf, sp, xb, v, lb, tb, step, eps)
        return v.detach()

    def _order(self, n: int, k: int) -> Tensor:
        """(n,) the image order of pass ``k`` (0-based), reproducible from ``seed`` and ``k`` alone."""
        if self.shuffle == "python":
            rng = random.Random(self.seed)
            for _ in range(k):                                   # replay: pass k is the (k+1)-th sample
                rng.sample(range(n), n)
            return torch.tensor(rng.sample(range(n), n), dtype=torch.long)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k))

    def _fingerprint(self, clf: Classifier, x: Tensor, target: int | None, eps: float) -> str:
        """Digest of the settings (``max_passes`` excluded: more passes resume), build images and weights."""
        return digest({**asdict(self), "max_passes": None, "target": target, "eps": eps}, x, clf.weights_hash())


class _Checkpoint:
    """``v`` + pass index + curve in ``out_dir/uap_checkpoint.{npy,json}``, keyed by a fingerprint."""

    def __init__(self, out_dir: str | Path, fingerprint: str) -> None:
        self.dir, self.fp = Path(out_dir), fingerprint
        self.npy, self.meta = self.dir / "uap_checkpoint.npy", self.dir / "uap_checkpoint.json"

    def load(self) -> tuple[Tensor, int, list[float], list[float]] | None:
        try:
            meta = json.loads(self.meta.read_text())
            if meta.get("fingerprint") != self.fp:
                return None
            return torch.from_numpy(np.load(self.npy)), int(meta["pass"]), list(meta["curve"]), list(meta["times"])
        except (OSError, ValueError, KeyError):
            return None

    def save(self, v: Tensor, k: int, curve: list[float], times: list[float]) -> None:
        arr = v.detach().cpu().numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:          # a file object: np.save would append ".npy" to a name
                np.save(f, arr)

        atomic_write(self.npy, write)
        write_json_atomic(self.meta, {"fingerprint": self.fp, "pass": k, "curve": curve, "times": times})
