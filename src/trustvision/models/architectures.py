"""Architecture specs -> ``nn.Module``: ``torchvision:NAME``, ``timm:NAME``, ``trustvision:NAME`` and ``module.py:factory``.

Models are built without pretrained weights.  ``trustvision:NAME`` resolves through the zoo's
:data:`~trustvision.models.zoo.registry.ARCHITECTURES` registry, reading ``width`` (and for fixed-size
models, ``size`` and ``hidden``) back from a state dict when one is given.  :func:`probe_architecture`
runs one blank image (1, C, H, W) to find the number of classes and channels of a model whose head is
unknown; :func:`fixed_input_size` finds the (H, W) a vision transformer insists on.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..persist import digest
from .provenance import USER_MODULE_PREFIX
from .weights import one_line
from .zoo import ARCHITECTURES

PREFIXES = ("torchvision", "timm", "trustvision")


def _call_factory(fn: Callable[..., Any], where: str, **kw: Any) -> nn.Module:
    """Call ``fn`` with the keyword arguments it accepts (None values dropped)."""
    try:
        params = inspect.signature(fn).parameters
        any_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, any_kw = {}, False
    kw = {k: v for k, v in kw.items() if v is not None and (k in params or any_kw)}
    try:
        out = fn(**kw)
    except Exception as e:
        raise TrustVisionError(f"{where}: building the model failed ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(out, nn.Module):
        raise TrustVisionError(f"{where} returned {type(out).__name__}, not a torch.nn.Module")
    return out


def _import_factory(file: str, name: str) -> Callable[..., Any]:
    path = Path(file)
    if not path.is_file():
        raise TrustVisionError(f"{file}: no such file")
    mod_name = f"{USER_MODULE_PREFIX}{path.stem}_{digest(str(path.resolve()), length=12)}"   # stable across runs
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise TrustVisionError(f"{file}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))     # let it import its siblings
    try:
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise TrustVisionError(f"{file}: importing failed ({type(e).__name__}: {one_line(e)})") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TrustVisionError(f"{file} has no callable {name!r}")
    return fn


def parse_arch(spec: str) -> tuple[str, str] | None:
    """``("torchvision"|"timm"|"trustvision", NAME)``, ``("py", "file.py:fn")`` or None."""
    if re.fullmatch(r".+\.py:[A-Za-z_]\w*", spec):
        return "py", spec
    prefix, sep, name = spec.partition(":")
    if sep and prefix in PREFIXES and name:
        return prefix, name
    return None


def code_file(spec: str) -> str | None:
    """The Python file a spec would import and run (``module.py:factory``, also as ``ARCH@WEIGHTS``), else None."""
    for candidate in (spec, spec.partition("@")[0], spec.rpartition("@")[0]):
        parsed = parse_arch(candidate) if candidate else None
        if parsed and parsed[0] == "py":
            return parsed[1].rpartition(":")[0]
    return None


def require_code_trust(spec: str, trust_code: bool, where: str = "") -> None:
    """Refuse a ``module.py:factory`` spec unless the caller passed ``trust_code`` (never read from a config file)."""
    file = code_file(spec)
    if file is not None and not trust_code:
        raise TrustVisionError(f"{where}{file}: the model spec {spec!r} imports and runs this Python file; "
                               "pass --trust-code to run it (only for code you trust)")


def build_architecture(arch: str, nc: int | None, ch: int | None, sd: dict[str, Tensor] | None,
                       input_size: tuple[int, int] | None, *, trust_code: bool = False
                       ) -> tuple[nn.Module, int | None, tuple[int, int] | None]:
    """Build ``arch`` for ``nc`` classes and ``ch`` channels (None: the factory's default / from ``sd``).

    A ``module.py:factory`` arch runs that file, so it needs ``trust_code=True`` (``--trust-code``).
    Returns (module, channels it was built for or None, the (H, W) it needs or None).
    """
    require_code_trust(arch, trust_code)
    parsed = parse_arch(arch)
    if parsed is None and ":" not in arch:          # bare names: the zoo first, then torchvision
        parsed = ("trustvision", arch) if arch in ARCHITECTURES else ("torchvision", arch)
    if parsed is None:
        raise TrustVisionError(f"--arch {arch!r}: use torchvision:NAME, timm:NAME, trustvision:NAME "
                               "or module.py:factory")
    kind, name = parsed
    if kind == "torchvision":
        import torchvision
        if name not in torchvision.models.list_models():
            raise TrustVisionError(f"{arch}: torchvision has no model {name!r}")
        kw = {"num_classes": nc} if nc else {}
        return _call_factory(torchvision.models.get_model, arch, name=name, weights=None, **kw), None, None
    if kind == "timm":
        try:
            import timm
        except ImportError:
            raise TrustVisionError(f"{arch}: timm is not installed; pip install timm") from None
        return _call_factory(timm.create_model, arch, model_name=name, pretrained=False,
                             num_classes=nc, in_chans=ch), ch, None
    if kind == "trustvision":
        return _zoo_model(arch, name, nc, ch, sd, input_size)
    file, _, fn_name = name.rpartition(":")
    return _call_factory(_import_factory(file, fn_name), arch, num_classes=nc, channels=ch), ch, None


def _zoo_model(arch: str, name: str, nc: int | None, ch: int | None, sd: dict[str, Tensor] | None,
               input_size: tuple[int, int] | None) -> tuple[nn.Module, int, tuple[int, int] | None]:
    """``trustvision:NAME`` from the registry, ``width``/``size``/``hidden`` read back from ``sd`` when given."""
    if name not in ARCHITECTURES:
        raise TrustVisionError(f"{arch}: unknown trustvision model; choose one of {', '.join(ARCHITECTURES)}")
    fn = ARCHITECTURES.get(name)
    params = inspect.signature(fn).parameters
    ch = ch or params["channels"].default
    size = None
    if "size" in params:                        # fixed-size models (mlp): size from the weights
        size = input_size[0] if input_size else params["size"].default
        first = next((v for v in (sd or {}).values() if v.ndim == 2), None)
        if first is not None and not input_size:
            side = math.isqrt(int(first.shape[1]) // ch)
            size = side if side * side * ch == first.shape[1] else size
    width = next((int(v.shape[0]) for v in (sd or {}).values() if v.ndim == 4), None)
    hidden = next((int(v.shape[0]) for v in (sd or {}).values() if v.ndim == 2), None)
    module = _call_factory(fn, arch, num_classes=nc, channels=ch, size=size, width=width,
                           hidden=hidden if "hidden" in params else None)
    return module, ch, (size, size) if size else None


def fixed_input_size(module: nn.Module) -> tuple[int, int] | None:
    """Input size a model cannot do without (torchvision/timm vision transformers)."""
    size = getattr(module, "image_size", None)
    pe = getattr(module, "patch_embed", None)
    if size is None and pe is not None and getattr(pe, "strict_img_size", False):
        size = getattr(pe, "img_size", None)
    if isinstance(size, int):
        return size, size
    return tuple(size[:2]) if isinstance(size, (tuple, list)) and len(size) >= 2 else None


def probe_architecture(module: nn.Module, name: str, ch: int | None, size: tuple[int, int] | None,
                       device: torch.device) -> tuple[int, int] | BaseException:
    """(num_classes, channels) from one forward pass on a blank image (1, C, H, W), or why it would not run.

    Tries ``ch`` (else 1 then 3 channels) at ``size`` (else 28x28 / 32x32, then 224x224).
    """
    if ch:
        tries = [(ch, size)] if size else [(ch, (28, 28) if ch == 1 else (32, 32)), (ch, (224, 224))]
    else:
        tries = [(c, size) for c in (3, 1)] if size else [(1, (28, 28)), (3, (32, 32)), (3, (224, 224))]
    err: BaseException | None = None
    for c, (h, w) in tries:
        try:
            with torch.inference_mode():
                out = module(torch.zeros(1, c, h, w, device=device))
        except Exception as e:
            err = e
            continue
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise TrustVisionError(f"{name} returned {shape} on a blank image, expected logits (N, classes)")
        if not torch.isfinite(out).all():
            raise TrustVisionError(f"{name} returned NaN/Inf logits on a blank {c}x{h}x{w} image")
        return int(out.shape[1]), c
    return err if err is not None else RuntimeError("no input to try")
