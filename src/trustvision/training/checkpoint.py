"""Training checkpoints as safetensors, written atomically.

One file holds everything a resumed run needs:

* ``model.<name>``: the module's state dict (the same tensors as a plain weights file);
* ``optim.<param index>.<key>``: the optimizer's per-parameter state (Adam moments, SGD momentum);
* ``extra.<name>``: further tensors the trainer needs to resume exactly (the ``onecycle`` recipe's
  random-generator states);
* metadata (strings): ``format``, ``epoch`` (epochs completed), ``fingerprint`` (of the training
  configuration) and ``history`` (JSON list of per-epoch metrics).

Writing goes through :func:`trustvision.persist.atomic_write` (a unique temporary file, then
:func:`os.replace`), so an interruption leaves either the old or the new checkpoint, never half of one.
No pickle is involved in either direction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import TrustVisionError
from ..persist import atomic_write

FORMAT = "trustvision-train-v1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``epoch`` epochs done, ``history`` so far, configuration ``fingerprint``, ``extra`` tensors."""

    epoch: int
    history: list[dict]
    fingerprint: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The module's state dict as a plain safetensors file (atomic)."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, history: list[dict],
         fingerprint: str, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write model + optimizer state + progress (+ ``extra`` tensors) to ``path`` atomically."""
    from safetensors.torch import save_file
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for key, value in (extra or {}).items():
        tensors[f"extra.{key}"] = value.detach().cpu().contiguous()
    meta = {"format": FORMAT, "epoch": str(epoch), "fingerprint": fingerprint, "history": json.dumps(history)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> Checkpoint:
    """Restore ``module`` and ``optimizer`` in place from ``path``; a damaged file is a one-line error."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:           # truncated / not safetensors
        raise TrustVisionError(f"{path}: cannot read checkpoint ({e}); delete it or pass --no-resume") from None
    if meta.get("format") != FORMAT:
        raise TrustVisionError(f"{path}: not a trustvision training checkpoint (format {meta.get('format')!r})")
    device = next(iter(module.parameters())).device
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        module.load_state_dict(model_state)
    except RuntimeError as e:
        raise TrustVisionError(f"{path}: checkpoint does not fit this architecture ({str(e).splitlines()[0]})") from None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v if key == "step" else v.to(device)
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return Checkpoint(int(meta["epoch"]), json.loads(meta["history"]), meta.get("fingerprint", ""), extra)


def fingerprint_of(path: Path) -> str | None:
    """The configuration fingerprint stored in a checkpoint, or None when unreadable."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:
        return None

