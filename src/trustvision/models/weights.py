"""Reading weights safely: state dicts from safetensors / PyTorch checkpoints, TorchScript detection, strict loading.

``torch.load`` always runs with ``weights_only=True`` first; pickled objects are unpickled only when the
caller trusts the file (``trust_pickle``).  Checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``)
and ``module.``/``_orig_mod.`` prefixes (DDP, ``torch.compile``) are unwrapped.  Every problem is a one-line
:class:`~trustvision.errors.TrustVisionError` naming the file.  State dicts map names to tensors of any shape;
``classes_in`` / ``channels_in`` read the head's rows and the stem convolution's input channels from them.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError

TORCHSCRIPT_SUFFIXES = {".ts", ".jit", ".torchscript"}
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def one_line(e: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.split("WeightsUnpickler error: ")[-1].split(" Check the documentation")[0]
    if len(text) > 200 and ". " in text[:200]:      # torch's long explanations: the first sentence
        text = text[:text.index(". ") + 1]
    return text if len(text) <= 200 else text[:197] + "..."


def is_torchscript(path: Path) -> bool:
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's warnings (pickle protocol, TorchScript deprecation...) around a load: errors say what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def is_pickle_stream(path: Path) -> bool:
    """A pickle (protocol 2-5 header) or a torch zip archive: something only an unpickler can read."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unsafe_globals(path: Path, e: BaseException) -> list[str]:
    unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if not unsafe and zipfile.is_zipfile(path):
        try:
            with quiet_torch():
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
    return list(unsafe)


def torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; pickled objects only when trusted.

    A file the safe loader refuses (a pickled model, or a legacy checkpoint in an old pickle protocol) is a
    one-line error naming ``--trust-pickle``; torch's own warnings are kept from the user.
    """
    try:
        with quiet_torch():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = e
    unsafe = _unsafe_globals(path, first)
    if not unsafe and not is_pickle_stream(path):
        raise TrustVisionError(f"{path}: not a readable PyTorch checkpoint ({one_line(first)})") from None
    if not trust_pickle:
        what = (f"a pickled model (it needs {unsafe[0]})" if unsafe else
                f"a legacy pickled checkpoint that torch's safe loader refuses ({one_line(first)})")
        raise TrustVisionError(f"{path} is {what}; --trust-pickle unpickles it, which runs any code inside the "
                               "file: pass it only if you trust the file (or re-save the weights as .safetensors)")
    try:
        with quiet_torch():
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrustVisionError(f"{path}: could not unpickle ({type(e).__name__}: {one_line(e)}); make the code "
                               "that defines the model importable, or save a state dict") from None


def as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
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


def read_state_dict(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return as_state_dict(load_file(str(path), device="cpu"), path)
        except TrustVisionError:
            raise
        except Exception as e:
            raise TrustVisionError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    if is_torchscript(path):
        raise TrustVisionError(f"{path} is a TorchScript archive, not a state dict; load it without --arch")
    return as_state_dict(torch_load(path, trust_pickle), path)


def load_into(module: nn.Module, sd: dict[str, Tensor], path: Path, arch: str) -> None:
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
        raise TrustVisionError(f"{path} does not fit {arch}: {one_line(e)}") from None


def classes_in(sd: dict[str, Tensor]) -> int | None:
    """Output count = rows of the last 2-D ``*.weight`` (the classifier head)."""
    heads = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


def channels_in(sd: dict[str, Tensor]) -> int | None:
    """Input channels = dim 1 of the first 4-D weight (the stem convolution)."""
    return next((int(v.shape[1]) for v in sd.values() if v.ndim == 4), None)
