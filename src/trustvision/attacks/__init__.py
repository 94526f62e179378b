"""Adversarial attacks behind one contract (see :mod:`.base`).

* fixed budget: :class:`FGSM` (Goodfellow et al. 2015), :class:`PGD` (Madry et al. 2018), L∞ and L2;
* minimal perturbation: :class:`CW` (Carlini & Wagner 2017, L2), :class:`DeepFool`
  (Moosavi-Dezfooli et al. 2016, L2 and L∞);
* black-box, by differential evolution: :class:`PixelAttack` (Su et al. 2019, L0) and
  :class:`ThresholdAttack` (Kotyan & Vargas 2022, L∞);
* universal perturbations: :class:`~.universal.UniversalPerturbation` (its own ``generate`` contract).

Around them: :mod:`.norms` (one :class:`~.norms.Norm` strategy per threat model), :mod:`.runner`
(:func:`run_batched` over device batches, :func:`sweep_budgets` over a budget list,
:func:`minimal_budget` per image) and
:mod:`.presets` (the named attack configurations of the robustness section).

``make_attack("pgd", eps=0.3, norm="linf")`` builds one by registry name; ``ATTACKS`` lists them, and
each attack class carries its capabilities (``family``, ``uses_gradients``, ``single_step``, ``norm``).
"""
from __future__ import annotations

from .base import (ATTACKS, AttackResult, Attack, FixedBudgetAttack, MinimalAttack, fooled, input_gradient,
                   make_attack, margin_loss, perturbation_norms)
from .gradient import FGSM, PGD     # registration order = listing order: fgsm, pgd, cw, deepfool, pixel, threshold
from .cw import CW
from .deepfool import DeepFool
from .evolutionary import PixelAttack, ThresholdAttack
from .fab import FAB, FABMinimal         # FAB / FAB-T (Croce & Hein 2020)
from .square import Square              # Square Attack (Andriushchenko et al. 2020)
from .apgd import APGD                  # Auto-PGD (Croce & Hein 2020)
from .autoattack import AutoAttack      # the AutoAttack ensemble (Croce & Hein 2020)
from .eot import EOT, EOTClassifier, transformed_accuracy   # Expectation over Transformation (Athalye et al. 2018)
from .norms import NORMS, Norm
from .presets import PRESETS, Preset
from .runner import BudgetSweep, minimal_budget, run_batched, sweep_budgets


__all__ = ["APGD", "ATTACKS", "Attack", "AttackResult", "AutoAttack", "BudgetSweep", "CW", "DeepFool", "EOT", "EOTClassifier", "FAB", "FABMinimal", "FGSM",
           "FixedBudgetAttack", "Square",
           "MinimalAttack", "NORMS", "Norm", "PGD", "PRESETS", "PixelAttack", "Preset", "ThresholdAttack", "fooled",
           "input_gradient", "make_attack", "margin_loss", "minimal_budget", "perturbation_norms", "run_batched",
           "sweep_budgets", "transformed_accuracy"]
