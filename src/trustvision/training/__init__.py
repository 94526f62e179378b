"""Training: one trainer (:mod:`.trainer`; settings in :mod:`.config`, methods — standard, Gaussian noise,
PGD-AT, fast AT, TRADES — in :mod:`.methods`), checkpoints (:mod:`.checkpoint`), torchrun/DDP helpers
(:mod:`trustvision.scale.dist`), the concurrency-safe trained-model cache (:mod:`.cache`) and the cached MNIST
models of the demo, tests and examples (:mod:`.fixtures`)."""
from .cache import cache_dir, cached_model
from .config import TrainConfig, TrainResult
from .fixtures import adversarially_trained_mnist, mnist_demo_model, noise_trained_mnist
from .trainer import train, train_classifier

__all__ = ["TrainConfig", "TrainResult", "adversarially_trained_mnist", "cache_dir", "cached_model",
           "mnist_demo_model", "noise_trained_mnist", "train", "train_classifier"]
