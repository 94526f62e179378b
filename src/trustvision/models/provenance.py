"""Provenance of a model: what besides its weights can change the numbers an audit reports.

Weights are hashed by :meth:`~trustvision.models.classifier.Classifier.weights_hash`; this module records the
rest, the model's *code*:

* the classes of every submodule, each non-library class with the digest of its source
  (``inspect.getsource``; None where the source cannot be read, e.g. classes typed at a prompt);
* the versions of the libraries the classes come from (torch always; torchvision, timm, onnx2torch when used);
* from the loader (:func:`spec_provenance`): the architecture spec (``torchvision:resnet18``), the SHA-256 of a
  ``module.py`` factory file and of a TorchScript, ONNX or pickled model file (full hex, comparable with
  ``sha256sum``).

The result is a JSON-able dict; :meth:`Classifier.code_fingerprint` digests it with :func:`~trustvision.persist.digest`.
"""
from __future__ import annotations

import hashlib
import inspect
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..persist import digest

LIBRARIES = ("torch", "torchvision", "timm", "onnx2torch")
USER_MODULE_PREFIX = "_trustvision_user_"          # modules imported from module.py specs (see .architectures)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte pieces (large model files never sit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions(names: set[str] | list[str] | tuple[str, ...]) -> dict[str, str | None]:
    """``{library: installed version or None}`` for ``names`` (torch always included)."""
    out: dict[str, str | None] = {"torch": torch.__version__}
    for name in sorted(set(names) - {"torch"}):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def class_name(cls: type) -> str:
    """``module.Qualname``; a class from a ``module.py`` spec is named after its file (stable across runs)."""
    mod = cls.__module__
    if mod.startswith(USER_MODULE_PREFIX):
        mod = re.sub(r"_[0-9a-f]{12}$", "", mod[len(USER_MODULE_PREFIX):]) + ".py"
    return f"{mod}.{cls.__qualname__}"


def _source_digest(cls: type) -> str | None:
    try:
        return digest(inspect.getsource(cls))
    except (OSError, TypeError):
        return None


def module_code(module: nn.Module) -> dict[str, Any]:
    """The code of ``module``: ``{"class", "classes": {name: source digest | "library" | None}, "versions"}``.

    Classes from torch/torchvision/timm/onnx2torch are marked ``"library"`` and covered by ``versions``.
    """
    classes: dict[str, str | None] = {}
    libs: set[str] = set()
    for m in module.modules():
        cls = type(m)
        name = class_name(cls)
        if name in classes:
            continue
        top = cls.__module__.split(".")[0]
        if top in LIBRARIES:
            libs.add(top)
            classes[name] = "library"
        else:
            classes[name] = _source_digest(cls)
    return {"class": class_name(type(module)), "classes": classes, "versions": library_versions(libs)}


def spec_provenance(spec: str, *, arch: str | None, code_file: str | None, model_file: Path | None,
                    model_format: str) -> dict[str, Any]:
    """What the loader knows: the spec (paths reduced to file names), the architecture, and file hashes.

    Args:
        spec: the model spec as given; arch: the architecture spec (or None for a whole-model file).
        code_file: the ``module.py`` of a factory spec (its source is hashed), or None.
        model_file: a TorchScript/ONNX/pickled model file (hashed: it holds code), or None.
        model_format: ``architecture``, ``state_dict``, ``torchscript``, ``onnx`` or ``pickle``.
    """
    out: dict[str, Any] = {"source": "load_model", "spec": _short(spec), "format": model_format,
                           "arch": _short(arch) if arch else None}
    if code_file is not None:
        out["code_file"] = Path(code_file).name
        out["code_sha256"] = file_sha256(code_file)
    if model_file is not None:
        out["model_file"] = model_file.name
        out["model_sha256"] = file_sha256(model_file)
    return out


def _short(spec: str) -> str:
    """A spec with any file path reduced to its name (``/a/b/net.py:make`` -> ``net.py:make``)."""
    m = re.fullmatch(r"(.+\.py)(:\w+)", spec)
    if m:
        return Path(m.group(1)).name + m.group(2)
    if spec.partition(":")[0] in ("torchvision", "timm", "trustvision"):
        return spec
    return Path(spec).name
