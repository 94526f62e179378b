"""Shared fixtures: one MNIST CNN trained (or loaded from cache) per test session."""
from __future__ import annotations

import pytest
import torch

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
