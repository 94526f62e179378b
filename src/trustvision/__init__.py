"""trustvision: how far can an image-recognition model be trusted?

Quick start::

    import trustvision as tv
    clf = tv.load_model("model.safetensors", arch="trustvision:smallcnn", num_classes=10, channels=1)
    data = tv.load_dataset("mnist")
    res = tv.attacks.PGD(eps=0.1, steps=10)(clf, data.x[:64], data.y[:64])
    results = tv.audit(clf, data, out_dir="out")

Public names are imported lazily so that ``import trustvision`` stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "attacks": (".attacks", None),
    "audit": (".auditor", "audit"),
    "AuditConfig": (".auditor", "AuditConfig"),
    "Classifier": (".models", "Classifier"),
    "Dataset": (".data", "Dataset"),
    "load_dataset": (".data", "load_dataset"),
    "load_model": (".models", "load_model"),
    "RobustnessConfig": (".evaluation", "RobustnessConfig"),
    "TrustVisionError": (".errors", "TrustVisionError"),
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'trustvision' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value
