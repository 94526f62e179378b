"""CapsNet with dynamic routing (Sabour, Frosst & Hinton, NeurIPS 2017), miniature, for the Raw Zero-Shot zoo.

Kotyan, Matsuki & Vargas (PLOS ONE 2022, e0266060) found CapsNet's held-out soft labels to form the
densest clusters of their architectures.  Layout (for an input (B, C, H, W)):

* ``conv1``: Conv 9x9 (``width`` maps) + ReLU -> (B, width, H-8, W-8);
* ``primary``: Conv 9x9 stride 2 -> ``types`` capsule types of ``dim`` dimensions on an h x w grid,
  squashed -> N = types*h*w primary capsules u_i (B, N, dim);
* ``digit`` capsules: predictions u_hat_{j|i} = W_{type(i), j} u_i (B, N, num_classes, out_dim), then
  ``iters`` rounds of routing-by-agreement (coupling c_ij = softmax_j b_ij, s_j = sum_i c_ij u_hat_{j|i},
  v_j = squash(s_j), b_ij += <u_hat_{j|i}, v_j>).

Deviations from the paper, for a small, input-size-agnostic model trained by the shared trainer:

* the transformation matrices W are shared across grid positions (one per capsule type and class), so
  the same module takes 28x28 and 32x32 inputs (the paper has one W per primary capsule, 1152 x 10);
* gradients flow through the last routing iteration only (the earlier ones route with detached
  predictions, as several public implementations do): half the backward cost, same forward;
* no reconstruction decoder and no margin loss: :func:`trustvision.training.train_classifier` trains
  every zoo model with cross-entropy;
* **logits** are ``log ||v_j||`` (capsule lengths are in (0, 1)), so ``softmax(logits)_j = ||v_j|| /
  sum_k ||v_k||``: the soft label of a CapsNet is its capsule lengths normalised to sum to one, and the
  predicted class is the longest capsule, exactly as in the paper.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import ARCHITECTURES

EPS = 1e-8


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """Squashing non-linearity v = (|s|^2 / (1 + |s|^2)) s / |s| along ``dim`` (same shape as ``s``)."""
    n2 = (s * s).sum(dim, keepdim=True)
    return s * (n2 / (1.0 + n2)) / torch.sqrt(n2 + EPS)


class DigitCaps(nn.Module):
    """Routing-by-agreement from primary capsules u (B, types, G, dim) to digit capsules v (B, classes, out_dim).

    ``weight`` (types, classes, out_dim, dim) holds the transformation matrices W_{t, j}, shared over the
    G grid positions of capsule type t.
    """

    def __init__(self, types: int, num_classes: int, dim: int, out_dim: int, iters: int) -> None:
        super().__init__()
        self.types, self.num_classes, self.dim, self.out_dim, self.iters = types, num_classes, dim, out_dim, iters
        self.weight = nn.Parameter(0.05 * torch.randn(types, num_classes, out_dim, dim))

    def forward(self, u: Tensor) -> Tensor:
        b, t, g, d = u.shape
        # predictions u_hat[b, j, (t, g), :] = W[t, j] @ u[b, t, g], held as (B, classes, N, out_dim) so that
        # routing is batched matrix products
        w = self.weight.permute(0, 3, 1, 2).reshape(t, d, self.num_classes * self.out_dim)
        u_hat = torch.matmul(u, w).view(b, t * g, self.num_classes, self.out_dim)
        u_hat = u_hat.permute(0, 2, 1, 3).contiguous()                # (B, classes, N, out_dim)
        logits_b = u_hat.new_zeros(b, self.num_classes, 1, t * g)     # routing logits b_ij
        v = u_hat.new_zeros(b, self.num_classes, self.out_dim)
        u_fixed = u_hat.detach()                     # gradients flow through the last iteration only
        for r in range(self.iters):
            c = torch.softmax(logits_b, dim=1)                        # coupling: softmax over classes j
            last = r == self.iters - 1
            v = squash(torch.matmul(c, u_hat if last else u_fixed).squeeze(2))    # (B, classes, out_dim)
            if not last:
                logits_b = logits_b + torch.matmul(u_fixed, v.unsqueeze(-1)).transpose(2, 3)
        return v


class CapsNet(nn.Module):
    """Images (B, channels, H, W), H, W >= 17, -> logits log ||v_j|| (B, num_classes).

    Args:
        num_classes: digit capsules.  channels: input channels.  width: maps of the first convolution.
        types, dim: primary capsule types and their dimension.  out_dim: digit capsule dimension.
        iters: routing iterations (3 in the paper).
    """

    def __init__(self, num_classes: int = 10, channels: int = 1, width: int = 16, types: int = 8, dim: int = 8,
                 out_dim: int = 16, iters: int = 3) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.conv1 = nn.Conv2d(channels, width, 9)
        self.primary = nn.Conv2d(width, types * dim, 9, stride=2)
        self.digits = DigitCaps(types, num_classes, dim, out_dim, iters)   # keys sort after conv1 (loading.py)

    def capsules(self, x: Tensor) -> Tensor:
        """Digit capsule vectors v (B, num_classes, out_dim)."""
        p = self.primary(torch.relu(self.conv1(x)))                  # (B, types*dim, gh, gw)
        b, _, gh, gw = p.shape
        u = squash(p.view(b, self.types, self.dim, gh * gw).permute(0, 1, 3, 2))   # (B, types, G, dim)
        return self.digits(u)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) = log of the digit-capsule lengths."""
        return torch.log(self.capsules(x).norm(dim=-1) + EPS)


@ARCHITECTURES.register("capsnet")
def capsnet(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """The zoo's CapsNet (see the module docstring): (B, channels, H, W) -> (B, num_classes) logits."""
    return CapsNet(num_classes, channels, width)
