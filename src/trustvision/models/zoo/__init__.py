"""The model zoo, addressable as ``trustvision:NAME`` specs: small nets (:mod:`.small`), the Raw Zero-Shot
paper-family zoo (:mod:`.paper`) and a CapsNet with dynamic routing (:mod:`.capsnet`)."""
from .small import ARCHS, mlp, smallcnn

__all__ = ["ARCHS", "mlp", "smallcnn"]
