"""Placing a printed patch on images, batched: location, rotation and scale per draw (Brown et al. 2017).

The patch operator ``A(p, x, l, t)`` of Brown, Mané, Roy, Abadi & Gilmer, "Adversarial Patch"
(arXiv:1712.09665, 2017): the patch ``p`` is rotated, scaled and put at location ``l`` on image ``x``.
Here every draw has its own centre, angle and side, and one ``affine_grid`` + ``grid_sample`` call renders
all draws of a step at once (differentiable in the patch).  Also: the colour palette of the
non-printability score (Sharif et al. 2016) and the physical print size (``5cm`` at ``300`` dpi -> pixels).

Shapes: images (N, C, H, W) in [0, 1]; the patch (C, p, p) in [0, 1]; its shape mask (1, p, p).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError

SHAPES = ("square", "circle")
LUMA = (0.299, 0.587, 0.114)          # ITU-R 601: palette colours seen by 1-channel models
_UNITS = {"cm": 1 / 2.54, "mm": 1 / 25.4, "in": 1.0, "inch": 1.0, "px": None}


def patch_side(area: float, image_hw: tuple[int, int], shape: str = "square") -> float:
    """Side (pixels) of a ``shape`` patch covering ``area`` of an H×W image (circle: its diameter)."""
    h, w = image_hw
    share = 1.0 if shape == "square" else math.pi / 4
    return math.sqrt(area * h * w / share)


def check_fits(area: float, image_hw: tuple[int, int], shape: str, scale_max: float, what: str = "--area") -> float:
    """The nominal side for ``area``; one-line errors for an area outside (0, 1) or a patch larger than the image."""
    if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 < area < 1:
        raise TrustVisionError(f"{what} must lie in (0, 1) (a fraction of the image), got {area!r}")
    side = patch_side(area, image_hw, shape)
    if side * scale_max > min(image_hw) + 1e-6:
        raise TrustVisionError(f"{what} {area:g}: the patch side ({side * scale_max:.1f} px at scale {scale_max:g}) "
                               f"is larger than the image ({image_hw[0]}x{image_hw[1]} px); lower {what} or --scale")
    return side


def shape_mask(shape: str, p: int, device: torch.device | str = "cpu") -> Tensor:
    """(1, p, p) mask of the patch: ones (square) or the inscribed disc sampled at pixel centres (circle)."""
    if shape not in SHAPES:
        raise TrustVisionError(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if shape == "square":
        return torch.ones(1, p, p, device=device)
    c = torch.linspace(-1 + 1 / p, 1 - 1 / p, p, device=device)
    return ((c[:, None] ** 2 + c[None, :] ** 2) <= 1.0).float()[None]


@dataclass
class Placement:
    """Per-draw placement, all (N,) tensors: centre ``cx``, ``cy`` (continuous pixels, 0..W / 0..H),
    ``angle`` (radians) and ``side`` (pixels)."""

    cx: Tensor
    cy: Tensor
    angle: Tensor
    side: Tensor

    def __len__(self) -> int:
        return len(self.cx)


def sample_placement(n: int, image_hw: tuple[int, int], side: float, *, rotation: float,
                     scale: tuple[float, float], generator: torch.Generator | None, device: torch.device | str
                     ) -> Placement:
    """``n`` random placements: side ``side * U(scale)``, angle ``U(-rotation, rotation)`` degrees, centre
    uniform where the unrotated patch lies inside the image (ART's ``AdversarialPatchPyTorch`` convention)."""
    h, w = image_hw
    u = torch.rand(4, n, generator=generator, device=device)
    s = side * (scale[0] + (scale[1] - scale[0]) * u[0])
    s = torch.minimum(s, torch.full_like(s, float(min(h, w))))
    cx = s / 2 + (w - s) * u[1]
    cy = s / 2 + (h - s) * u[2]
    angle = math.radians(rotation) * (2 * u[3] - 1)
    return Placement(cx, cy, angle, s)


def fixed_placement(n: int, *, left: float, top: float, side: float, angle_deg: float = 0.0,
                    device: torch.device | str = "cpu") -> Placement:
    """``n`` identical placements with the unrotated patch's top-left corner at (``left``, ``top``) pixels."""
    full = lambda v: torch.full((n,), float(v), device=device)       # noqa: E731
    return Placement(full(left + side / 2), full(top + side / 2), full(math.radians(angle_deg)), full(side))


def _theta(pl: Placement, image_hw: tuple[int, int]) -> Tensor:
    """(N, 2, 3) affine maps from normalised image coordinates to normalised patch coordinates."""
    h, w = image_hw
    cos, sin = torch.cos(pl.angle), torch.sin(pl.angle)
    k = 2.0 / pl.side
    # v = k R(-a) [diag(W/2, H/2) u + (W/2 - cx, H/2 - cy)],  R(-a) = [[cos, sin], [-sin, cos]]
    a11, a12 = k * cos * (w / 2), k * sin * (h / 2)
    a21, a22 = -k * sin * (w / 2), k * cos * (h / 2)
    ox, oy = w / 2 - pl.cx, h / 2 - pl.cy
    b1 = k * (cos * ox + sin * oy)
    b2 = k * (-sin * ox + cos * oy)
    return torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)


def render(patch: Tensor, mask: Tensor, pl: Placement, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The patch drawn at every placement: (layer (N, C, H, W) premultiplied by alpha, alpha (N, 1, H, W)).

    ``patch`` (C, p, p) — or (N, C, p, p), one patch per draw — and ``mask`` (1, p, p); bilinear sampling,
    zero outside the patch, differentiable in ``patch``.
    """
    n = len(pl)
    stack = torch.cat([patch * mask, mask.expand(*patch.shape[:-3], 1, *mask.shape[-2:])], dim=-3)
    stack = stack.expand(n, *stack.shape[-3:]) if stack.ndim == 3 else stack
    grid = F.affine_grid(_theta(pl, image_hw).to(stack.dtype), [n, 1, *image_hw], align_corners=False)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :-1], out[:, -1:]


def apply_patch(x: Tensor, patch: Tensor, mask: Tensor, pl: Placement) -> Tensor:
    """Images (N, C, H, W) with the patch pasted at placements ``pl`` (N draws): ``x (1 - alpha) + layer``."""
    layer, alpha = render(patch, mask, pl, tuple(x.shape[-2:]))
    return (x * (1 - alpha) + layer).clamp(0, 1)


# ------------------------------------------------------------------ printability (Sharif et al. 2016)
def default_palette() -> Tensor:
    """(27, 3) printable colours: the 3×3×3 RGB grid at levels 0.15, 0.5, 0.85 (extremes a printer and camera
    do not reproduce are left out).  Measure your printer's palette and pass it as a file for real prints."""
    lv = torch.tensor([0.15, 0.5, 0.85])
    return torch.cartesian_prod(lv, lv, lv)


def load_palette(path: str | Path, what: str = "--palette") -> Tensor:
    """(K, 3) colours in [0, 1] from a text file: one ``R G B`` triple per line (commas or spaces; ``#``
    comments), all 0-255 or all 0-1 (a value above 1 makes the file 0-255).  One-line errors name the file/line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrustVisionError(f"{what} {p}: cannot read a colour list ({e.__class__.__name__})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [t for t in re.split(r"[,\s;]+", line) if t]
        try:
            vals = [float(t) for t in parts]
        except ValueError:
            vals = []
        if len(vals) != 3 or not all(math.isfinite(v) and v >= 0 for v in vals):
            raise TrustVisionError(f"{what} {p}: line {i} is not an R G B colour triple: {line[:40]!r}")
        rows.append(vals)
    if not rows:
        raise TrustVisionError(f"{what} {p}: no colours (expected one R G B triple per line)")
    t = torch.tensor(rows, dtype=torch.float32)
    if float(t.max()) > 1:
        if float(t.max()) > 255:
            raise TrustVisionError(f"{what} {p}: colour values must be 0-255 or 0-1, got {float(t.max()):g}")
        t = t / 255.0
    return t


def palette_for(palette: Tensor, channels: int) -> Tensor:
    """(K, channels) palette: RGB as is for 3 channels, luminance (ITU-R 601) for 1 channel."""
    if channels == 3:
        return palette
    if channels == 1:
        return (palette * torch.tensor(LUMA, device=palette.device)).sum(1, keepdim=True)
    raise TrustVisionError(f"printability needs a 1- or 3-channel model, got {channels} channels")


def nps(patch: Tensor, palette: Tensor) -> Tensor:
    """Non-printability score of Sharif, Bhagavatula, Bauer & Reiter (CCS 2016): mean over the patch pixels of
    ``prod_c ||p_pixel - c||_2`` over the palette colours ``c`` (patch (C, p, p), palette (K, C)); 0 when
    every pixel is a printable colour."""
    px = patch.flatten(1).T                                        # (p*p, C)
    d = torch.cdist(px[None], palette[None].to(px))[0]             # (p*p, K)
    return d.prod(1).mean()


def total_variation(patch: Tensor) -> Tensor:
    """Total variation of the patch (C, p, p) (Sharif et al. 2016 smoothness term): mean over pixels of
    ``sqrt(dx^2 + dy^2 + 1e-8)`` with forward differences."""
    dx = patch[:, :-1, 1:] - patch[:, :-1, :-1]
    dy = patch[:, 1:, :-1] - patch[:, :-1, :-1]
    return torch.sqrt(dx ** 2 + dy ** 2 + 1e-8).mean()


# ------------------------------------------------------------------ print size
def parse_print_size(text: str | float | None, dpi: float, what: str = "--print-size") -> int | None:
    """Pixels of the printed patch's side: ``"5cm"``, ``"50mm"``, ``"2in"`` at ``dpi``, or ``"600px"``."""
    if text is None or text == "":
        return None
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 10 <= dpi <= 10000:
        raise TrustVisionError(f"--dpi must lie in [10, 10000], got {dpi!r}")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(cm|mm|in|inch|px)\s*", str(text).lower())
    if not m:
        raise TrustVisionError(f"{what}: expected a length like 5cm, 50mm, 2in or 600px, got {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    px = value if _UNITS[unit] is None else value * _UNITS[unit] * dpi
    if not 1 <= px <= 20000:
        raise TrustVisionError(f"{what} {text} at {dpi:g} dpi is {px:.0f} pixels; expected 1 to 20000")
    return int(round(px))
