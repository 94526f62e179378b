"""Model specs -> :class:`~trustvision.models.classifier.Classifier`, safely.

Specs understood by :func:`load_model`:

* ``torchvision:NAME`` / ``timm:NAME`` / ``trustvision:NAME`` (the small zoo of
  :mod:`trustvision.models.zoo.small`), built without pretrained weights; ``weights=FILE``
  loads a state dict into them;
* ``FILE.safetensors|.pt|.pth|.bin|.ckpt`` state dicts with ``arch=`` (any
  architecture spec above or ``module.py:factory``); ``module.``/``_orig_mod.``
  prefixes (DDP, ``torch.compile``) and ``{"state_dict": ...}``/``{"model": ...}``
  wrappers are accepted;
* pickled full models (``.pt``) only with ``trust_pickle=True``: unpickling runs
  arbitrary code, so ``torch.load(weights_only=True)`` is always tried first;
* TorchScript (``.ts``, ``.jit``, ``.torchscript`` or a ``.pt`` TorchScript archive);
* ``.onnx`` through ``onnx2torch`` (a real ``nn.Module``, so gradients work);
* ``module.py:factory``: the file is imported and ``factory()`` called.

Unknowns are inferred, never guessed silently: ``num_classes`` from the last
2-D weight of a state dict, else from one forward pass on a blank image;
``channels`` from the first convolution.  The blank image is ``input_size`` when
given, else 28x28 for one channel / 32x32 for three, then 224x224.  No
normalisation is assumed: ImageNet-trained weights need ``mean``/``std``
(``--mean 0.485 0.456 0.406 --std 0.229 0.224 0.225``).  Every problem is a
one-line :class:`TrustVisionError` naming the file or argument.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .zoo import small as zoo
from ..errors import TrustVisionError
from .classifier import Classifier

PREFIXES = ("torchvision", "timm", "trustvision")
TORCHSCRIPT_SUFFIXES = {".ts", ".jit", ".torchscript"}
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def _line(e: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.split("WeightsUnpickler error: ")[-1].split(" Check the documentation")[0]
    if len(text) > 200 and ". " in text[:200]:      # torch's long explanations: the first sentence
        text = text[:text.index(". ") + 1]
    return text if len(text) <= 200 else text[:197] + "..."


# ------------------------------------------------------------------ files
def _is_torchscript(path: Path) -> bool:
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; pickled objects only when trusted."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not unsafe and zipfile.is_zipfile(path):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:
                unsafe = []
        if not unsafe:
            raise TrustVisionError(f"{path}: not a readable PyTorch checkpoint ({_line(e)})") from None
    if not trust_pickle:
        raise TrustVisionError(f"{path} is a pickled model (it needs {unsafe[0]}); loading it runs arbitrary "
                               "code: pass --trust-pickle if you trust it")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrustVisionError(f"{path}: could not unpickle ({type(e).__name__}: {_line(e)}); make the code "
                               "that defines the model importable, or save a state dict") from None


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Unwrap checkpoints and strip DDP/compile prefixes."""
    for _ in range(3):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = list(obj)[:5] if isinstance(obj, dict) else []
        raise TrustVisionError(f"{path}: not a state dict (found {type(obj).__name__}"
                               + (f" with keys {keys}" if keys else "") + ")")
    sd = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "_orig_mod."):
        while all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_state_dict(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return _as_state_dict(load_file(str(path), device="cpu"), path)
        except TrustVisionError:
            raise
        except Exception as e:
            raise TrustVisionError(f"{path}: not a readable safetensors file ({_line(e)})") from None
    if _is_torchscript(path):
        raise TrustVisionError(f"{path} is a TorchScript archive, not a state dict; load it without --arch")
    return _as_state_dict(_torch_load(path, trust_pickle), path)


def _load_into(module: nn.Module, sd: dict[str, Tensor], path: Path, arch: str) -> None:
    """Strictly load ``sd``; mismatches become one line naming the first few keys."""
    own = module.state_dict()
    sd = dict(sd)
    for k in own:                       # old checkpoints lack BatchNorm counters: harmless
        if k not in sd and k.endswith("num_batches_tracked"):
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} in file vs {tuple(own[k].shape)} in model"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for what, v in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)) if v]
    if parts:
        raise TrustVisionError(f"{path} does not fit {arch}: {'; '.join(parts)}; "
                               "check --arch, --num-classes and --channels")
    try:
        module.load_state_dict(sd, strict=True)
    except Exception as e:
        raise TrustVisionError(f"{path} does not fit {arch}: {_line(e)}") from None


def _classes_in(sd: dict[str, Tensor]) -> int | None:
    """Output count = rows of the last 2-D ``*.weight`` (the classifier head)."""
    heads = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


def _channels_in(sd: dict[str, Tensor]) -> int | None:
    """Input channels = dim 1 of the first 4-D weight (the stem convolution)."""
    return next((int(v.shape[1]) for v in sd.values() if v.ndim == 4), None)


# ------------------------------------------------------------------ architectures
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
        raise TrustVisionError(f"{where}: building the model failed ({type(e).__name__}: {_line(e)})") from None
    if not isinstance(out, nn.Module):
        raise TrustVisionError(f"{where} returned {type(out).__name__}, not a torch.nn.Module")
    return out


def _import_factory(file: str, name: str) -> Callable[..., Any]:
    path = Path(file)
    if not path.is_file():
        raise TrustVisionError(f"{file}: no such file")
    mod_name = f"_trustvision_user_{path.stem}_{abs(hash(str(path.resolve())))}"
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
        raise TrustVisionError(f"{file}: importing failed ({type(e).__name__}: {_line(e)})") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TrustVisionError(f"{file} has no callable {name!r}")
    return fn


def _parse_arch(spec: str) -> tuple[str, str] | None:
    """``("torchvision"|"timm"|"trustvision", NAME)``, ``("py", "file.py:fn")`` or None."""
    if re.fullmatch(r".+\.py:[A-Za-z_]\w*", spec):
        return "py", spec
    prefix, sep, name = spec.partition(":")
    if sep and prefix in PREFIXES and name:
        return prefix, name
    return None


def _build(arch: str, nc: int | None, ch: int | None, sd: dict[str, Tensor] | None,
           input_size: tuple[int, int] | None) -> tuple[nn.Module, int | None, tuple[int, int] | None]:
    """Build an architecture; returns (module, channels it was built for, fixed input size)."""
    parsed = _parse_arch(arch)
    if parsed is None and ":" not in arch:          # bare names: the zoo first, then torchvision
        parsed = ("trustvision", arch) if arch in zoo.ARCHS else ("torchvision", arch)
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
        if name not in zoo.ARCHS:
            raise TrustVisionError(f"{arch}: unknown trustvision model; choose one of {', '.join(zoo.ARCHS)}")
        fn = zoo.ARCHS[name]
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
    file, _, fn_name = name.rpartition(":")
    return _call_factory(_import_factory(file, fn_name), arch, num_classes=nc, channels=ch), ch, None


def _fixed_size(module: nn.Module) -> tuple[int, int] | None:
    """Input size a model cannot do without (torchvision/timm vision transformers)."""
    size = getattr(module, "image_size", None)
    pe = getattr(module, "patch_embed", None)
    if size is None and pe is not None and getattr(pe, "strict_img_size", False):
        size = getattr(pe, "img_size", None)
    if isinstance(size, int):
        return size, size
    return tuple(size[:2]) if isinstance(size, (tuple, list)) and len(size) >= 2 else None


def _probe(module: nn.Module, name: str, ch: int | None, size: tuple[int, int] | None,
           device: torch.device) -> tuple[int, int] | BaseException:
    """(num_classes, channels) from one forward pass on a blank image, or why it would not run."""
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


# ------------------------------------------------------------------ public API
def load_model(spec: str, *, weights: str | None = None, arch: str | None = None,
               num_classes: int | None = None, channels: int | None = None,
               input_size: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, labels: Sequence[str] | None = None,
               trust_pickle: bool = False, device: str | torch.device = "cpu", precision: str = "fp32",
               channels_last: bool = False, compile: bool = False) -> Classifier:
    """Load a model spec (see the module docstring) as a :class:`Classifier` taking [0, 1] NCHW pixels.

    ``weights`` is a state-dict file for an architecture spec; ``arch`` the
    architecture for a state-dict file spec.  Unknown ``num_classes`` and
    ``channels`` are inferred (state dict, then a blank forward pass).
    """
    if num_classes is not None and num_classes < 2:
        raise TrustVisionError(f"--num-classes must be >= 2, got {num_classes}")
    if num_classes is None and labels:
        num_classes = len(labels)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise TrustVisionError(f"--device {device!r}: {_line(e)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrustVisionError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    size = tuple(input_size) if input_size else None
    arch_spec = _parse_arch(spec) is not None
    if arch_spec and arch:
        raise TrustVisionError(f"{spec} is already an architecture; --arch is for weights files")
    if not arch_spec and weights:
        raise TrustVisionError(f"--weights goes with an architecture spec, but {spec!r} is not one")
    file = Path(weights if arch_spec else spec) if (weights or not arch_spec) else None
    if file is not None and not file.is_file():
        hint = "" if arch_spec or Path(spec).suffix else \
            f" (and not a model spec: use {', '.join(p + ':NAME' for p in PREFIXES)} or module.py:factory)"
        raise TrustVisionError(f"{file}: no such file{hint}")
    built_ch = fixed = None
    nc = num_classes
    if arch_spec or arch:
        arch = spec if arch_spec else arch
        sd = _read_state_dict(file, trust_pickle) if file is not None else None
        nc = num_classes or (_classes_in(sd) if sd else None)
        ch = channels or (_channels_in(sd) if sd else None)
        module, built_ch, fixed = _build(arch, nc, ch, sd, size)
        if sd is not None:
            _load_into(module, sd, file, arch)
    elif file.suffix.lower() == ".onnx":
        try:
            from onnx2torch import convert
        except ImportError:
            raise TrustVisionError(f"{file}: loading ONNX needs onnx2torch; pip install onnx2torch onnx") from None
        try:
            module = convert(str(file))
        except Exception as e:
            raise TrustVisionError(f"{file}: not a convertible ONNX model ({_line(e)})") from None
    elif _is_torchscript(file):
        try:
            with warnings.catch_warnings():        # TorchScript is deprecated but still what people ship
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(file), map_location=dev)
        except Exception as e:
            raise TrustVisionError(f"{file}: not a loadable TorchScript archive ({_line(e)})") from None
    elif file.suffix.lower() in CHECKPOINT_SUFFIXES | {".safetensors"}:
        obj = None if file.suffix.lower() == ".safetensors" else _torch_load(file, trust_pickle)
        if isinstance(obj, dict):       # a trusted checkpoint holding the module itself
            obj = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), nn.Module)), obj)
        if not isinstance(obj, nn.Module):
            _read_state_dict(file, trust_pickle) if obj is None else _as_state_dict(obj, file)
            raise TrustVisionError(f"{file} holds weights only: pass --arch (e.g. torchvision:resnet18 "
                                   "or module.py:factory) to say which network they belong to")
        module = obj
    else:
        raise TrustVisionError(f"{file}: unknown model format {file.suffix!r} (use .safetensors, .pt, .pth, "
                               ".bin, .ts, .onnx or module.py:factory)")
    module = module.to(dev).eval()
    have = _channels_in(dict(module.state_dict())) or built_ch
    if channels and have and channels != have:
        raise TrustVisionError(f"--channels {channels} but the model {spec} takes {have} channels")
    ch = channels or have
    size = size or fixed or _fixed_size(module)
    name = spec if arch_spec else Path(spec).name
    if num_classes is None or ch is None:       # the head guessed from weights is checked by running it
        found = _probe(module, name, ch, size, dev)
        if isinstance(found, BaseException) and (nc is None or ch is None):
            raise TrustVisionError(f"{name}: could not run it on a blank image to infer its classes "
                                   f"({_line(found)}); pass --num-classes, --channels and --input-size")
        nc, ch = found if isinstance(found, tuple) else (nc, ch)
    return Classifier(module, num_classes=nc, channels=ch, input_size=size, mean=mean, std=std,
                      labels=labels, device=dev, precision=precision, channels_last=channels_last,
                      compile=compile, name=name)


def check_logits(classifier: Classifier, x: Tensor) -> None:
    """Run one batch ``x`` (N, C, H, W) in [0, 1] and raise if any logits are NaN/Inf."""
    with torch.inference_mode():
        out = classifier(x.to(classifier.device))
    bad = (~torch.isfinite(out)).any(1).nonzero().flatten()
    if len(bad):
        raise TrustVisionError(f"model {classifier.name!r} returned NaN/Inf logits for {len(bad)} of {len(out)} "
                               f"images (first: index {int(bad[0])})")
