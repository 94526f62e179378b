"""Model specs -> :class:`~trustvision.models.classifier.Classifier`, safely.

Specs understood by :func:`load_model`:

* ``torchvision:NAME`` / ``timm:NAME`` / ``trustvision:NAME`` (the zoo's architecture registry,
  :mod:`trustvision.models.zoo`), built without pretrained weights (:mod:`.architectures`);
  ``weights=FILE`` loads a state dict into them;
* ``FILE.safetensors|.pt|.pth|.bin|.ckpt`` state dicts with ``arch=`` (any
  architecture spec above or ``module.py:factory``); ``module.``/``_orig_mod.``
  prefixes (DDP, ``torch.compile``) and ``{"state_dict": ...}``/``{"model": ...}``
  wrappers are accepted;
* pickled full models (``.pt``) and legacy checkpoints the safe loader refuses only with
  ``trust_pickle=True``: unpickling runs arbitrary code, so ``torch.load(weights_only=True)`` is always
  tried first;
* TorchScript (``.ts``, ``.jit``, ``.torchscript`` or a ``.pt`` TorchScript archive);
* ``.onnx`` through ``onnx2torch`` (a real ``nn.Module``, so gradients work);
* ``module.py:factory``: the file is imported and ``factory()`` called, only with ``trust_code=True``
  (``--trust-code``): importing runs the file.  Without it the spec (or ``arch=``) is refused unread.

Unknowns are inferred, never guessed silently: ``num_classes`` from the last
2-D weight of a state dict, else from one forward pass on a blank image;
``channels`` from the first convolution.  The blank image is ``input_size`` when
given, else 28x28 for one channel / 32x32 for three, then 224x224.  No
normalisation is assumed: ImageNet-trained weights need ``mean``/``std``
(``--mean 0.485 0.456 0.406 --std 0.229 0.224 0.225``).  Every problem is a
one-line :class:`TrustVisionError` naming the file or argument.  Reading files is :mod:`.weights`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError
from .architectures import (PREFIXES, build_architecture, code_file, fixed_input_size, parse_arch, probe_architecture,
                            require_code_trust)
from .classifier import Classifier
from .provenance import module_code, spec_provenance
from .weights import (CHECKPOINT_SUFFIXES, WRAPPER_KEYS, as_state_dict, channels_in, classes_in, is_torchscript,
                      load_into, one_line, quiet_torch, read_state_dict, torch_load)

# Old private names, still imported by the CLI's ``train`` command: use the public ones.
_build, _fixed_size, _probe = build_architecture, fixed_input_size, probe_architecture

__all__ = ["PREFIXES", "build_architecture", "check_logits", "fixed_input_size", "load_model", "probe_architecture"]


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise TrustVisionError(f"--device {device!r}: {one_line(e)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrustVisionError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return dev


def _weights_file(spec: str, weights: str | None, arch: str | None, arch_spec: bool) -> Path | None:
    """The file to read (the spec itself, or ``weights`` for an architecture spec); checks the combination."""
    if arch_spec and arch:
        raise TrustVisionError(f"{spec} is already an architecture; --arch is for weights files")
    if not arch_spec and weights:
        raise TrustVisionError(f"--weights goes with an architecture spec, but {spec!r} is not one")
    file = Path(weights if arch_spec else spec) if (weights or not arch_spec) else None
    if file is not None and not file.is_file():
        hint = "" if arch_spec or Path(spec).suffix else \
            f" (and not a model spec: use {', '.join(p + ':NAME' for p in PREFIXES)} or module.py:factory)"
        raise TrustVisionError(f"{file}: no such file{hint}")
    return file


def _from_architecture(arch: str, file: Path | None, num_classes: int | None, channels: int | None,
                       size: tuple[int, int] | None, trust_pickle: bool, trust_code: bool
                       ) -> tuple[nn.Module, int | None, int | None, tuple[int, int] | None]:
    """Build ``arch`` and load ``file``'s state dict into it: (module, classes, built channels, fixed size)."""
    require_code_trust(arch, trust_code)            # before reading anything
    sd = read_state_dict(file, trust_pickle) if file is not None else None
    nc = num_classes or (classes_in(sd) if sd else None)
    ch = channels or (channels_in(sd) if sd else None)
    module, built_ch, fixed = build_architecture(arch, nc, ch, sd, size, trust_code=trust_code)
    if sd is not None:
        load_into(module, sd, file, arch)
    return module, nc, built_ch, fixed


def _from_file(file: Path, dev: torch.device, trust_pickle: bool) -> nn.Module:
    """A whole model from ONNX, TorchScript or a (trusted) pickled checkpoint."""
    suffix = file.suffix.lower()
    if suffix == ".onnx":
        try:
            from onnx2torch import convert
        except ImportError:
            raise TrustVisionError(f"{file}: loading ONNX needs onnx2torch; pip install onnx2torch onnx") from None
        try:
            return convert(str(file))
        except Exception as e:
            raise TrustVisionError(f"{file}: not a convertible ONNX model ({one_line(e)})") from None
    if is_torchscript(file):
        try:
            with quiet_torch():                    # TorchScript is deprecated but still what people ship
                return torch.jit.load(str(file), map_location=dev)
        except Exception as e:
            raise TrustVisionError(f"{file}: not a loadable TorchScript archive ({one_line(e)})") from None
    if suffix not in CHECKPOINT_SUFFIXES | {".safetensors"}:
        raise TrustVisionError(f"{file}: unknown model format {file.suffix!r} (use .safetensors, .pt, .pth, "
                               ".bin, .ts, .onnx or module.py:factory)")
    obj = None if suffix == ".safetensors" else torch_load(file, trust_pickle)
    if isinstance(obj, dict):       # a trusted checkpoint holding the module itself
        obj = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), nn.Module)), obj)
    if not isinstance(obj, nn.Module):
        read_state_dict(file, trust_pickle) if obj is None else as_state_dict(obj, file)
        raise TrustVisionError(f"{file} holds weights only: pass --arch (e.g. torchvision:resnet18 "
                               "or module.py:factory) to say which network they belong to")
    return obj


def _infer_head(module: nn.Module, name: str, nc: int | None, ch: int | None, size: tuple[int, int] | None,
                dev: torch.device) -> tuple[int | None, int | None]:
    """(classes, channels) checked by running a blank image; the given values when it cannot run but both are known."""
    found = probe_architecture(module, name, ch, size, dev)
    if isinstance(found, BaseException) and (nc is None or ch is None):
        raise TrustVisionError(f"{name}: could not run it on a blank image to infer its classes "
                               f"({one_line(found)}); pass --num-classes, --channels and --input-size")
    return found if isinstance(found, tuple) else (nc, ch)


# ------------------------------------------------------------------ public API
def load_model(spec: str, *, weights: str | None = None, arch: str | None = None,
               num_classes: int | None = None, channels: int | None = None,
               input_size: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, labels: Sequence[str] | None = None,
               trust_pickle: bool = False, trust_code: bool = False, device: str | torch.device = "cpu",
               precision: str = "fp32", channels_last: bool = False, compile: bool = False) -> Classifier:
    """Load a model spec (see the module docstring) as a :class:`Classifier` taking [0, 1] NCHW pixels.

    ``weights`` is a state-dict file for an architecture spec; ``arch`` the
    architecture for a state-dict file spec.  Unknown ``num_classes`` and
    ``channels`` are inferred (state dict, then a blank forward pass).
    ``trust_pickle`` (``--trust-pickle``) allows unpickling a full model; ``trust_code`` (``--trust-code``)
    allows a ``module.py:factory`` spec or ``arch`` to import and run that file.  Both must come from the
    person running trustvision, never from a config file.  The classifier's :attr:`~Classifier.provenance`
    records the code: the spec, the ``module.py`` / TorchScript / ONNX / pickle file hash and library versions.
    """
    if num_classes is not None and num_classes < 2:
        raise TrustVisionError(f"--num-classes must be >= 2, got {num_classes}")
    if num_classes is None and labels:
        num_classes = len(labels)
    dev = _device(device)
    size = tuple(input_size) if input_size else None
    arch_spec = parse_arch(spec) is not None
    file = _weights_file(spec, weights, arch, arch_spec)
    built_ch = fixed = None
    nc = num_classes
    if arch_spec or arch:
        module, nc, built_ch, fixed = _from_architecture(spec if arch_spec else arch, file, num_classes, channels,
                                                         size, trust_pickle, trust_code)
    else:
        module = _from_file(file, dev, trust_pickle)
    provenance = _provenance(spec, file, spec if arch_spec else arch, module)
    module = module.to(dev).eval()
    have = channels_in(dict(module.state_dict())) or built_ch
    if channels and have and channels != have:
        raise TrustVisionError(f"--channels {channels} but the model {spec} takes {have} channels")
    ch = channels or have
    size = size or fixed or fixed_input_size(module)
    name = spec if arch_spec else Path(spec).name
    if num_classes is None or ch is None:       # the head guessed from weights is checked by running it
        nc, ch = _infer_head(module, name, nc, ch, size, dev)
    return Classifier(module, num_classes=nc, channels=ch, input_size=size, mean=mean, std=std,
                      labels=labels, device=dev, precision=precision, channels_last=channels_last,
                      compile=compile, name=name, provenance=provenance)


def _provenance(spec: str, file: Path | None, arch: str | None, module: nn.Module) -> dict:
    """:func:`.provenance.spec_provenance` + :func:`.provenance.module_code` for a loaded model.

    ``file`` is the file read (None for a bare architecture spec); a whole-model file (TorchScript, ONNX,
    pickle) is hashed because it holds code, a state dict is not (its tensors are the weights, hashed by
    :meth:`Classifier.weights_hash`).
    """
    if arch is not None:
        fmt = "state_dict" if file is not None else "architecture"
    elif file is not None and file.suffix.lower() == ".onnx":
        fmt = "onnx"
    else:
        fmt = "torchscript" if file is not None and is_torchscript(file) else "pickle"
    whole = file if fmt in ("onnx", "torchscript", "pickle") else None
    return {**spec_provenance(spec, arch=arch, code_file=code_file(arch) if arch else None, model_file=whole,
                              model_format=fmt), **module_code(module)}


def check_logits(classifier: Classifier, x: Tensor) -> None:
    """Run one batch ``x`` (N, C, H, W) in [0, 1] and raise if any logits are NaN/Inf."""
    with torch.inference_mode():
        out = classifier(x.to(classifier.device))
    bad = (~torch.isfinite(out)).any(1).nonzero().flatten()
    if len(bad):
        raise TrustVisionError(f"model {classifier.name!r} returned NaN/Inf logits for {len(bad)} of {len(out)} "
                               f"images (first: index {int(bad[0])})")
