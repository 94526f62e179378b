"""VAE reconstruction anomaly maps — the first stage of the two-stage inspector.

A convolutional variational auto-encoder (Kingma & Welling, ICLR 2014) is trained on normal images
only; a pixel it cannot reconstruct is anomalous (An & Cho 2015; Baur et al. 2018).  Choices, and why:

* **Architecture**: ``depth`` stride-2 conv blocks (``width``, 2x``width``, ... channels, BatchNorm,
  LeakyReLU) down to H/2^depth; a ``dense`` bottleneck (one ``latent``-dimensional Gaussian per image:
  the classic VAE, which blurs textures and so over-detects — the case the Siamese stage exists for) or
  a ``spatial`` one (``latent`` channels per cell of the H/2^depth grid: sharper, reconstructs more of a
  texture, and of its defects too).  Mirror decoder with transposed convolutions and a sigmoid output.
* **Training**: the ELBO with a Gaussian likelihood (per-image summed squared error) plus ``beta`` x KL;
  Adam, seeded (initialisation, shuffling and the reparameterisation noise), normal images only.
  Bergmann et al. (2019) train their SSIM auto-encoder with an SSIM loss; we keep the ELBO and offer
  SSIM only as a *map* option (a listed deviation).
* **Map** (N, H, W): the per-pixel reconstruction error of the posterior mean (no sampling at test time,
  so maps are deterministic): ``l2`` = squared error averaged over channels, or ``ssim`` = 1 - SSIM
  (structure-aware, less sensitive to the global blur of a VAE), then Gaussian smoothing (``sigma`` 4 px,
  as PatchCore/anomalib smooth their maps) to suppress pixel noise at edges.
* **Image score**: ``max`` of the smoothed map (a small defect must count), or ``topk`` = mean of the
  top 1 % (more stable against a single hot pixel).

Images (N, C, H, W) in [0, 1]; H and W must be divisible by 2^depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..batching import forward_batch
from ..errors import TrustVisionError
from ..progress import Progress, Quiet
from .base import AnomalyResult, check_images
from .ops import gaussian_blur, reduce_map, ssim_map


class ConvVAE(nn.Module):
    """Convolutional VAE: (N, C, H, W) in [0, 1] -> (reconstruction (N, C, H, W), mu, logvar)."""

    def __init__(self, channels: int, size: tuple[int, int], *, depth: int = 3, width: int = 32,
                 latent: int = 64, bottleneck: str = "dense") -> None:
        super().__init__()
        self.bottleneck = bottleneck
        widths = [width * 2 ** i for i in range(depth)]
        enc, c = [], channels
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            c = w
        self.encoder = nn.Sequential(*enc)
        self.grid = (c, size[0] // 2 ** depth, size[1] // 2 ** depth)
        n = c * self.grid[1] * self.grid[2]
        if bottleneck == "dense":
            self.to_stats, self.from_latent = nn.Linear(n, 2 * latent), nn.Linear(latent, n)
        else:
            self.to_stats, self.from_latent = nn.Conv2d(c, 2 * latent, 1), nn.Conv2d(latent, c, 1)
        dec = []
        for w_in, w_out in zip(widths[::-1], widths[::-1][1:] + [width]):
            dec += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        h = h.flatten(1) if self.bottleneck == "dense" else h
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.from_latent(z).view(z.shape[0], *self.grid))

    def forward(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decode(z), mu, logvar


@dataclass
class VAEDetector:
    """Anomaly maps from VAE reconstruction errors (see the module docstring for every choice).

    Example::

        det = VAEDetector(epochs=20).fit(normal)          # normal: (N, C, H, W) in [0, 1]
        res = det.score(test)                             # res.maps (M, H, W), res.scores (M,)
    """

    depth: int = 3
    width: int = 16
    latent: int = 64
    bottleneck: str = "dense"
    beta: float = 1.0
    epochs: int = 20
    batch_size: int = 32
    score_batch_size: int | None = field(default=None, repr=False)    # forward passes only: not a trained setting
    lr: float = 1e-3
    error: str = "l2"
    sigma: float = 4.0
    score_reduction: str = "max"
    topk: float = 0.01
    seed: int = 0
    device: str = "cpu"
    name: str = "vae"
    net: ConvVAE | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.bottleneck not in ("dense", "spatial"):
            raise TrustVisionError(f"bottleneck: use dense or spatial, got {self.bottleneck!r}")
        if self.error not in ("l2", "ssim"):
            raise TrustVisionError(f"error: use l2 or ssim, got {self.error!r}")
        if self.score_reduction not in ("max", "topk"):
            raise TrustVisionError(f"score_reduction: use max or topk, got {self.score_reduction!r}")
        if self.depth < 1 or self.epochs < 0 or self.latent < 1:
            raise TrustVisionError("depth and latent must be >= 1 and epochs >= 0")

    def _build(self, shape: tuple[int, int, int]) -> ConvVAE:
        c, h, w = shape
        if h % 2 ** self.depth or w % 2 ** self.depth:
            raise TrustVisionError(f"image size {h}x{w} must be divisible by 2^depth = {2 ** self.depth}; "
                                   "resize (--size) or lower the depth")
        return ConvVAE(c, (h, w), depth=self.depth, width=self.width, latent=self.latent,
                       bottleneck=self.bottleneck).to(self.device)

    def fit(self, normal: Tensor, *, progress: Progress | None = None) -> "VAEDetector":
        """Train on normal images (N, C, H, W) in [0, 1]; returns ``self``."""
        check_images(normal, "normal images")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self._build(tuple(normal.shape[1:]))
            self._train(normal, progress or Quiet())
        return self

    def _train(self, normal: Tensor, progress: Progress) -> None:
        net = self.net
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        data = normal.to(self.device, torch.float32)
        advance = progress.task("VAE training", self.epochs)
        net.train()
        for _ in range(self.epochs):
            for idx in torch.randperm(len(data), generator=g).split(self.batch_size):
                x = data[idx.to(data.device)]
                rec, mu, logvar = net(x)
                nll = (rec - x).pow(2).flatten(1).sum(1)
                kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
                loss = (nll + self.beta * kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            advance(1)
        net.eval()

    def _ready(self) -> ConvVAE:
        if self.net is None:
            raise TrustVisionError(f"{self.name}: call fit() or load_state_dict() before scoring")
        return self.net

    def reconstruct(self, x: Tensor) -> Tensor:
        """Posterior-mean reconstructions (N, C, H, W), differentiable w.r.t. ``x``."""
        net = self._ready()
        net.eval()
        return net(x.to(self.device, torch.float32), sample=False)[0]

    def raw_map(self, x: Tensor) -> Tensor:
        """Unsmoothed per-pixel error (N, H, W), differentiable w.r.t. ``x``."""
        x = x.to(self.device, torch.float32)
        rec = self.reconstruct(x)
        if self.error == "ssim":
            return 1.0 - ssim_map(x, rec)
        return (rec - x).pow(2).mean(1)

    def score_differentiable(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(maps (N, H, W), scores (N,)) with autograd w.r.t. ``x`` (N, C, H, W)."""
        maps = gaussian_blur(self.raw_map(x), self.sigma)
        return maps, reduce_map(maps, self.score_reduction, self.topk)

    def score(self, x: Tensor) -> AnomalyResult:
        """Maps (N, H, W) and scores (N,) on the CPU, batched under ``torch.inference_mode``: ``score_batch_size``
        images per forward pass, else :func:`trustvision.batching.forward_batch` (the maps do not depend on it)."""
        check_images(x)
        self._ready()
        with torch.inference_mode():
            fb = forward_batch(self.net, self.device, sample_shape=x.shape[1:], override=self.score_batch_size)
            maps = torch.cat([self.score_differentiable(b)[0].float().cpu() for b in x.split(fb)])
        return AnomalyResult(maps=maps, scores=reduce_map(maps, self.score_reduction, self.topk))

    def state_dict(self) -> dict[str, Tensor]:
        """Network weights (``net.*``) and the input shape (``meta.input_shape``)."""
        net = self._ready()
        state = {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}
        c = net.decoder[-2].out_channels
        state["meta.input_shape"] = torch.tensor([c, net.grid[1] * 2 ** self.depth, net.grid[2] * 2 ** self.depth])
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Rebuild the network for ``meta.input_shape`` and load the ``net.*`` weights."""
        if "meta.input_shape" not in state:
            raise TrustVisionError(f"{self.name}: state has no meta.input_shape (not a VAEDetector state)")
        self.net = self._build(tuple(int(v) for v in state["meta.input_shape"]))
        try:
            self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        except RuntimeError as e:
            raise TrustVisionError(f"{self.name}: weights do not match this configuration "
                                   f"(depth/width/latent/bottleneck): {str(e).splitlines()[0]}") from None
        self.net.eval()
