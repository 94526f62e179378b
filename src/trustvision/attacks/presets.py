"""Named attack configurations: the attacks the robustness section (and ``explain --attack``) runs by name.

A :class:`Preset` is a registry attack (:data:`~.base.ATTACKS`) plus fixed constructor arguments —
``"pgd-l2"`` is PGD (Madry et al. 2018) with ``norm="l2"``, ``"deepfool-linf"`` is DeepFool
(Moosavi-Dezfooli et al. 2016) in its L∞ variant.  Its capabilities (``family``, ``uses_gradients``,
``single_step``, ``norm``) are read off the attack class, so callers (the adaptive pass, the soundness
checks) never compare names.

Example::

    PRESETS.get("pgd-l2").build(steps=20, seed=0)      # -> PGD(norm="l2", steps=20, seed=0)
    [p.name for p in map(PRESETS.get, PRESETS) if p.uses_gradients]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry
from .base import ATTACKS, Attack, make_attack


@dataclass(frozen=True)
class Preset:
    """A named attack configuration.

    Attributes:
        name: the preset's name (``"pgd-l2"``).  attack: the :data:`~.base.ATTACKS` name (``"pgd"``).
        fixed: constructor arguments that define the preset (``{"norm": "l2"}``); user options override them.
    """

    name: str
    attack: str
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[Attack]:
        return ATTACKS.get(self.attack)

    @property
    def norm(self) -> str:
        """The threat model: the fixed ``norm`` or the attack's default."""
        return self.fixed.get("norm", self.cls.norm)

    @property
    def family(self) -> str:
        return self.cls.family

    @property
    def uses_gradients(self) -> bool:
        return self.cls.uses_gradients

    @property
    def single_step(self) -> bool:
        return self.cls.single_step

    def takes(self, argument: str) -> bool:
        """Whether the attack's constructor takes ``argument`` (e.g. ``"seed"``)."""
        return argument in {f.name for f in dataclasses.fields(self.cls)}

    def build(self, **options: Any) -> Attack:
        """The attack with the fixed arguments and ``options`` (which win); one-line errors as :func:`make_attack`."""
        return make_attack(self.attack, **{**self.fixed, **options})


PRESETS: Registry[Preset] = Registry("attack preset")


def _preset(name: str, attack: str, help: str, **fixed: Any) -> None:
    PRESETS.add(name, Preset(name, attack, fixed), help=help)


_preset("fgsm", "fgsm", "FGSM, L∞ (one step)", norm="linf")
_preset("pgd", "pgd", "PGD, L∞", norm="linf")
_preset("fgsm-l2", "fgsm", "FGSM, L2 (one step)", norm="l2")
_preset("pgd-l2", "pgd", "PGD, L2", norm="l2")
_preset("cw", "cw", "Carlini-Wagner L2 (minimal perturbation)")
_preset("deepfool", "deepfool", "DeepFool, L2 (minimal perturbation)", norm="l2")
_preset("deepfool-linf", "deepfool", "DeepFool, L∞ (minimal perturbation)", norm="linf")
_preset("pixel", "pixel", "few-pixel L0 attack by differential evolution (black-box; budgets are pixel counts)")
_preset("threshold", "threshold", "threshold L∞ attack by differential evolution (black-box)")
_preset("kotyan2022", "threshold", "threshold L∞ attack as Kotyan & Vargas (PLOS ONE 2022) run it: CMA-ES, "
        "population 400, 100 generations, minimal threshold 1..127/255, 8-bit (black-box, minimal)",
        optimizer="cmaes", pop_size=400, generations=100, minimal=True, max_threshold=127, quantize=True)
_preset("fab-t", "fab", "FAB-T, L∞: targeted FAB over the top-9 classes as in AutoAttack (fixed budget)", norm="linf",
        targets=9)
_preset("fab-t-l2", "fab", "FAB-T, L2: targeted FAB over the top-9 classes as in AutoAttack (fixed budget)", norm="l2",
        targets=9)
_preset("square", "square", "Square Attack, L∞ (black-box random search, 5000 queries)", norm="linf")
_preset("square-l2", "square", "Square Attack, L2 (black-box random search, 5000 queries)", norm="l2")
_preset("apgd-ce", "apgd", "APGD-CE, L∞: Auto-PGD with cross-entropy (Croce & Hein 2020; 100 iterations)", norm="linf",
        loss="ce")
_preset("apgd-dlr", "apgd", "APGD-DLR, L∞: Auto-PGD with the DLR loss (Croce & Hein 2020)", norm="linf", loss="dlr")
_preset("apgd-t", "apgd", "APGD-T, L∞: targeted DLR over the top-9 classes (Croce & Hein 2020)", norm="linf",
        loss="dlr", targets=9)
_preset("apgd-ce-l2", "apgd", "APGD-CE, L2", norm="l2", loss="ce")
_preset("apgd-dlr-l2", "apgd", "APGD-DLR, L2", norm="l2", loss="dlr")
_preset("apgd-t-l2", "apgd", "APGD-T, L2: targeted DLR over the top-9 classes", norm="l2", loss="dlr", targets=9)
_preset("autoattack", "autoattack", "AutoAttack standard, L∞: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020)",
        norm="linf", version="standard")
_preset("autoattack-l2", "autoattack", "AutoAttack standard, L2", norm="l2", version="standard")
_preset("autoattack-rand", "autoattack", "AutoAttack rand, L∞: APGD-CE and APGD-DLR with EOT over 20 draws "
        "(randomised models)", norm="linf", version="rand")
_preset("autoattack-rand-l2", "autoattack", "AutoAttack rand, L2", norm="l2", version="rand")
