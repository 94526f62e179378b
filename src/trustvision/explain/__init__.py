"""Explanations: class activation maps, their faithfulness, clusters of attention, attention under attack.

* :mod:`.cam` — batched Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018),
  LayerCAM, HiResCAM;
* :mod:`.targets` — what a map explains, as callables (class output, regression output, margin,
  adversarial class), following pytorch-grad-cam's target objects;
* :mod:`.faithfulness` — deletion / insertion curves and AUCs (Petsiuk et al. 2018, RISE);
* :mod:`.clustering` — k-means over maps, per-group cluster distribution, chi-square test
  (Sakaguchi, Takimoto et al., Cogent Engineering 2022);
The opt-in ``explain`` audit section is :mod:`trustvision.evaluation.sections.explain`.
"""
from .cam import CAM, METHODS, CAMResult, compute_cams, find_layer, vit_reshape
from .clustering import Clustering, GroupTest, cluster_maps, group_test, read_groups
from .faithfulness import FaithfulnessResult, deletion_insertion, random_saliency
from .targets import (AdversarialTarget, ClassifierOutputTarget, MarginTarget, RegressionTarget, TargetSpec,
                      build_target, parse_target)

__all__ = ["AdversarialTarget", "TargetSpec", "build_target", "parse_target", "CAM", "ClassifierOutputTarget", "MarginTarget", "METHODS", "RegressionTarget", "CAMResult", "Clustering", "FaithfulnessResult", "GroupTest",
           "cluster_maps", "compute_cams", "deletion_insertion", "find_layer", "group_test",
           "random_saliency", "read_groups", "vit_reshape"]
