"""The model zoo, addressable as ``trustvision:NAME`` specs: small nets (:mod:`.small`), the Raw Zero-Shot
paper-family zoo (:mod:`.paper`) and a CapsNet with dynamic routing (:mod:`.capsnet`), each factory
registered in :data:`ARCHITECTURES` (:mod:`.registry`) where it is defined.  ``ARCHS`` is the same registry."""
from .registry import ARCHITECTURES
from .small import ARCHS, mlp, smallcnn
from . import paper  # noqa: E402,F401,I001  (registers the paper families and capsnet, after smallcnn and mlp)

__all__ = ["ARCHITECTURES", "ARCHS", "mlp", "smallcnn"]
