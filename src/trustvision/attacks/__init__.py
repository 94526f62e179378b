"""Adversarial attacks behind one contract (see :mod:`.base`).

* fixed budget: :class:`FGSM` (Goodfellow et al. 2015), :class:`PGD` (Madry et al. 2018), L∞ and L2;
* minimal perturbation: :class:`CW` (Carlini & Wagner 2017, L2), :class:`DeepFool`
  (Moosavi-Dezfooli et al. 2016, L2 and L∞);
* black-box, by differential evolution: :class:`PixelAttack` (Su et al. 2019, L0) and
  :class:`ThresholdAttack` (Kotyan & Vargas 2022, L∞); :func:`minimal_budget` per image.

``make_attack("pgd", eps=0.3, norm="linf")`` builds one by registry name.
"""
from __future__ import annotations

import dataclasses

from ..errors import TrustVisionError
from .base import (AttackResult, Attack, FixedBudgetAttack, MinimalAttack, fooled, input_gradient, margin_loss,
                   perturbation_norms)
from .cw import CW
from .deepfool import DeepFool
from .evolutionary import PixelAttack, ThresholdAttack, minimal_budget
from .gradient import FGSM, PGD

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "cw": CW, "deepfool": DeepFool,
                                    "pixel": PixelAttack, "threshold": ThresholdAttack}


def make_attack(name: str, **kwargs) -> Attack:
    """The registered attack ``name`` built with constructor arguments ``kwargs``.

    Raises :class:`TrustVisionError` (one line) for an unknown attack, an argument the attack
    does not take, or an invalid value.

    Example::

        pgd = make_attack("pgd", eps=8 / 255, steps=20, restarts=2)
    """
    cls = ATTACKS.get(str(name).lower())
    if cls is None:
        raise TrustVisionError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TrustVisionError(f"attack {name!r} has no argument {unknown[0]!r}; it takes {', '.join(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as e:      # e.g. a value of a type the constructor cannot use
        raise TrustVisionError(f"attack {name!r}: {e}") from None


__all__ = ["ATTACKS", "Attack", "AttackResult", "CW", "DeepFool", "FGSM", "FixedBudgetAttack", "MinimalAttack", "PGD",
           "PixelAttack", "ThresholdAttack", "fooled", "input_gradient", "make_attack", "margin_loss",
           "minimal_budget", "perturbation_norms"]
