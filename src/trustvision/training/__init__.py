"""Training: the seeded trainer and on-disk model cache (:mod:`.cache`), adversarial training
(:mod:`.trainer`), checkpoints (:mod:`.checkpoint`) and torchrun/DDP helpers (:mod:`.distributed`)."""
from .cache import cache_dir, cached_model, mnist_demo_model, train_classifier

__all__ = ["cache_dir", "cached_model", "mnist_demo_model", "train_classifier"]
