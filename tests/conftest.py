"""Shared fixtures: one MNIST CNN trained (or loaded from cache) per test session."""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (-n auto): give each worker its share of the cores, so that
    # workers x torch threads never oversubscribe the machine (spinning OpenMP threads collapse throughput)
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


@pytest.fixture(scope="session")
def mnist_setup():
    module, train, test, path, _ = mnist_demo_model()
    return module, train, test, path


@pytest.fixture(scope="session")
def mnist_clf(mnist_setup) -> Classifier:
    """The trained MNIST CNN (about 95 % test accuracy) wrapped as a Classifier."""
    return Classifier(mnist_setup[0], num_classes=10, channels=1, name="mnist-smallcnn")


@pytest.fixture(scope="session")
def mnist_test(mnist_setup):
    return mnist_setup[2]


@pytest.fixture(scope="session")
def mnist_batch(mnist_clf, mnist_test):
    """64 correctly classified test images and labels: (x (64,1,28,28), y (64,))."""
    pred = mnist_clf.predict(mnist_test.x).argmax(1)
    idx = (pred == mnist_test.y).nonzero()[:64, 0]
    return mnist_test.x[idx].clone(), mnist_test.y[idx].clone()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
