"""``trustvision list WHAT``: what exists, read from the registries, with each entry's one-line help.

``WHAT`` is one of :data:`KINDS` (attacks, presets, sections, models, cams, defences, corruptions, norms);
``--json`` prints ``{name: help}``.  Attack entries also name their constructor arguments (what
``trustvision attack NAME --opt KEY=VALUE`` accepts).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Callable

import typer

from ...errors import TrustVisionError
from ..console import console

MODEL_SPECS = {"torchvision:NAME": "a torchvision architecture (+ --weights FILE; never downloaded)",
               "timm:NAME": "a timm architecture, if timm is installed (+ --weights FILE)",
               "FILE.safetensors|.pt|.pth": "a state dict, with --arch SPEC and --num-classes",
               "FILE.ts|.jit": "TorchScript", "FILE.onnx": "ONNX through onnx2torch (gradients work)",
               "module.py:factory": "imports and runs that file: needs --trust-code"}


def _attacks() -> dict[str, str]:
    from ...attacks import ATTACKS
    return {n: f"{ATTACKS.help(n)} [--opt: {', '.join(f.name for f in dataclasses.fields(ATTACKS.get(n)))}]"
            for n in ATTACKS.names()}


def _presets() -> dict[str, str]:
    from ...attacks.presets import PRESETS
    return {n: PRESETS.help(n) for n in PRESETS.names()}


def _sections() -> dict[str, str]:
    from ...evaluation.sections import SECTIONS
    return {n: SECTIONS.help(n) + (" (default)" if s.default else "") for n, s in SECTIONS.items()}


def _models() -> dict[str, str]:
    from ...models.zoo.registry import ARCHITECTURES
    return {**{f"trustvision:{n}": ARCHITECTURES.help(n) for n in ARCHITECTURES.names()}, **MODEL_SPECS}


def _registry(module: str, name: str) -> Callable[[], dict[str, str]]:
    def read() -> dict[str, str]:
        import importlib
        reg = getattr(importlib.import_module(module, "trustvision"), name)
        return {n: reg.help(n) for n in reg.names()}
    return read


KINDS: dict[str, Callable[[], dict[str, str]]] = {
    "attacks": _attacks, "presets": _presets, "sections": _sections, "models": _models,
    "cams": _registry(".explain.cam", "METHODS"), "defences": _registry(".defenses.transforms", "DEFENCES"),
    "corruptions": _registry(".physical.corruptions", "CORRUPTIONS"), "norms": _registry(".attacks.norms", "NORMS")}
ALIASES = {"defenses": "defences", "cam": "cams", "architectures": "models", "attack": "attacks"}


def list_entries(what: Annotated[str, typer.Argument(help=" | ".join(KINDS))],
                 json_out: Annotated[bool, typer.Option("--json", help="print {name: help} as JSON")] = False) -> None:
    """List what exists: attacks, presets, sections, models, CAM methods, defences, corruptions, norms."""
    kind = ALIASES.get(what.lower(), what.lower())
    if kind not in KINDS:
        raise TrustVisionError(f"list {what!r}: choose from {', '.join(KINDS)}")
    entries = KINDS[kind]()
    if json_out:
        console.print(json.dumps(entries, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    width = max(map(len, entries), default=0)
    for name, text in entries.items():
        console.print(f"{name:<{width}}  {text}", markup=False, highlight=False, soft_wrap=True)


list_entries.command_name = "list"          # type: ignore[attr-defined]
