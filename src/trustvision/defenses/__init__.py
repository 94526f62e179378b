"""Defences that hold up: randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) in :mod:`.smoothing`.

``Smoothed(classifier, sigma)`` gives PREDICT (abstaining binomial test) and CERTIFY (certified L2
radius from a Clopper-Pearson bound) on images (N, C, H, W) in [0, 1], and a differentiable
``smoothed_logits`` to attack the smoothed classifier.  Gaussian-noise training of the base classifier
is ``trustvision.training.train_classifier(..., noise_sigma=sigma)``; the cached noise-trained MNIST
base model is ``trustvision.training.noise_trained_mnist``.  Defences are model wrappers: this package
never imports :mod:`trustvision.training`.
"""
from __future__ import annotations

from .smoothing import (ABSTAIN, CertifyResult, PredictResult, Smoothed, binomial_p_value, clopper_pearson_lower,
                        max_certifiable_radius, radius_from_bound)

__all__ = ["ABSTAIN", "CertifyResult", "PredictResult", "Smoothed", "binomial_p_value", "clopper_pearson_lower",
           "max_certifiable_radius", "radius_from_bound"]
