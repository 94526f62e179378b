"""Segmentation: U-Net, Feedback U-Net, the test-time annotation leak, training and metrics.

* :mod:`.base`: the contracts :class:`SegDataset` (images + per-pixel masks) and :class:`Segmenter`
  ([0, 1] pixels -> per-pixel logits, every round of a feedback network);
* :mod:`.data` / :mod:`.scenes`: image + mask folders and the bundled demo sets (``bundled:digit-scenes``,
  real MNIST handwriting; ``bundled:cells``, synthetic membranes);
* :mod:`.unet` (Ronneberger et al. 2015), :mod:`.feedback` (Shibuya & Hotta 2020, ConvLSTM feedback),
  :mod:`.leak` (training masks of the nearest training images as a test-time prior);
* :mod:`.train` (seeded, resumable, bf16, torchrun) and :mod:`.metrics` (IoU, Dice, boundary F1);
* :mod:`.attacks`: FGSM/PGD on the per-pixel loss (:class:`SegmentationAttack`).
"""
from .attacks import SegAttackResult, SegmentationAttack
from .base import SegDataset, Segmenter
from .data import load_segmentation
from .feedback import ConvLSTMCell, FeedbackUNet
from .leak import LeakPrior, parse_leak
from .metrics import boundary_f1, confusion_matrix, evaluate_segmentation, iou_from_confusion
from .scenes import cells, digit_scenes, load_bundled
from .train import build_network, load_segmenter, save_segmenter, train_segmenter
from .unet import UNet

__all__ = ["ConvLSTMCell", "FeedbackUNet", "LeakPrior", "SegAttackResult", "SegDataset", "SegmentationAttack",
           "Segmenter", "UNet", "boundary_f1", "build_network", "cells", "confusion_matrix", "digit_scenes",
           "evaluate_segmentation", "iou_from_confusion", "load_bundled", "load_segmentation", "load_segmenter",
           "parse_leak", "save_segmenter", "train_segmenter"]
