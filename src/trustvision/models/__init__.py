"""Models: the :class:`Classifier` wrapper, spec loading (:func:`load_model`) and the small-net zoo."""
from .classifier import Classifier
from .loading import load_model

__all__ = ["Classifier", "load_model"]
