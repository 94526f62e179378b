"""Defences that hold up: randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) in :mod:`.smoothing`.

``Smoothed(classifier, sigma)`` gives PREDICT (abstaining binomial test) and CERTIFY (certified L2
radius from a Clopper-Pearson bound) on images (N, C, H, W) in [0, 1], and a differentiable
``smoothed_logits`` to attack the smoothed classifier.  Gaussian-noise training of the base classifier
is ``trustvision.training.cache.train_classifier(..., noise_sigma=sigma)``.
"""
from __future__ import annotations

from .smoothing import (ABSTAIN, CertifyResult, PredictResult, Smoothed, binomial_p_value, clopper_pearson_lower,
                        max_certifiable_radius, noise_trained_mnist, radius_from_bound)

__all__ = ["ABSTAIN", "CertifyResult", "PredictResult", "Smoothed", "binomial_p_value", "clopper_pearson_lower",
           "max_certifiable_radius", "noise_trained_mnist", "radius_from_bound"]
