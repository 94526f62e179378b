"""Decoding image files on demand through a ``torch.utils.data.DataLoader`` (issue 16: lazy, streaming data).

:class:`~.lazy.LazyDataset` knows paths and labels; when a sample is asked for, only the sampled files are
read here, in worker processes when ``workers > 0`` (``--workers``), into pinned memory on CUDA, with the
same pixel rules as :func:`~.folder.load_folder` (:mod:`.images`: 8/16-bit and float scaling; bilinear
resize then clamp; grey replicated when the model takes 3 channels).

Per-file errors never leave a worker as a traceback: each item carries either its pixels or the reason it
could not be read (:class:`Decoded`), and the caller decides (skip and list, or one line naming the file).
Under torchrun (:func:`trustvision.scale.dist.current`) the files are split round-robin among the ranks
(``Dist.owns``), decoded, and gathered (``Dist.gather``) so that every rank holds the same sample;
an unexpected failure on one rank is raised on all of them (``Dist.raise_together``), never a hang.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data import Dataset as TorchDataset

from ..errors import TrustVisionError
from ..scale.dist import Dist, current
from .folder import to_tensor
from .images import read_image

__all__ = ["Decoded", "Decoder", "assemble", "decode", "decode_rows", "loader_batch", "merge", "share"]


@dataclass(frozen=True)
class Decoder:
    """How one image file becomes a (C, H, W) float32 tensor in [0, 1] (picklable: it runs in workers).

    ``size``: the load size (H, W) (``--input-size``), ``conform_size``: a second resize asked by
    ``conform(size=...)``; each is bilinear then clamped, exactly as ``load_folder`` then ``conform`` do.
    ``rgb``: replicate grey images to 3 channels (the model takes 3).
    """

    max_pixels: int | None
    size: tuple[int, int] | None = None
    conform_size: tuple[int, int] | None = None
    rgb: bool = False

    def __call__(self, path: str) -> tuple[Tensor, str]:
        """(C, H, W) float32 pixels in [0, 1] and the stored dtype name; raises TrustVisionError naming ``path``."""
        a, dtype = read_image(Path(path), self.max_pixels)
        t = to_tensor(a, self.rgb)
        for s in (self.size, self.conform_size):
            if s and tuple(t.shape[-2:]) != tuple(s):
                t = F.interpolate(t[None], size=tuple(s), mode="bilinear", align_corners=False)[0].clamp(0, 1)
        return t, dtype


class _Files(TorchDataset):
    """Items ``(row, pixels | None, dtype | None, reason | None)`` of the files at ``rows`` (never raises)."""

    def __init__(self, paths: Sequence[str], rows: Sequence[int], decoder: Decoder) -> None:
        self.items = [(int(r), str(paths[r])) for r in rows]
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None, str | None]:
        row, path = self.items[i]
        try:
            t, dtype = self.decoder(path)
            return row, t, dtype, None
        except TrustVisionError as e:
            return row, None, None, str(e).removeprefix(f"{path}: ")
        except Exception as e:          # anything else a decoder can hit: reported for this file, not raised
            return row, None, None, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())})"


def _collate(items: list) -> dict[str, Any]:
    """A loader batch: ``rows`` (k,), ``x``, ``dtypes``, ``errors``.

    ``x`` is one (k, C, H, W) tensor when the batch crosses from a worker process and the shapes agree (one
    shared-memory transfer), else the list of (C, H, W) tensors (in this process: no copy before :func:`assemble`).
    """
    good = [it for it in items if it[1] is not None]
    ts = [it[1] for it in good]
    same = get_worker_info() is not None and len({tuple(t.shape) for t in ts}) == 1
    return {"rows": torch.tensor([it[0] for it in good], dtype=torch.long),
            "x": torch.stack(ts) if same else ts, "dtypes": [it[2] for it in good],
            "errors": [(it[0], it[3]) for it in items if it[1] is None]}


@dataclass
class Decoded:
    """Decoded files: ``chunks`` of (rows (k,), pixels (k, C, H, W) or a list of (C, H, W)), the stored
    dtype of each decoded row, and ``errors`` [(row, reason)] of the files that could not be read."""

    chunks: list[tuple[Tensor, Any]] = field(default_factory=list)
    dtypes: dict[int, str] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, batch: dict[str, Any]) -> None:
        if len(batch["rows"]):
            self.chunks.append((batch["rows"], batch["x"]))
            self.dtypes.update(zip(batch["rows"].tolist(), batch["dtypes"]))
        self.errors.extend(batch["errors"])

    def images(self) -> dict[int, Tensor]:
        """row -> (C, H, W) pixels (views into the chunks)."""
        return {r: t for rows, x in self.chunks for r, t in zip(rows.tolist(), x)}


def merge(parts: Sequence[Decoded]) -> Decoded:
    """One :class:`Decoded` from the ranks' parts (chunks concatenated, errors sorted by row)."""
    out = Decoded()
    for p in parts:
        out.chunks += p.chunks
        out.dtypes.update(p.dtypes)
        out.errors += p.errors
    out.errors.sort()
    return out


def loader_batch(n_files: int, workers: int) -> int:
    """Files per loader batch: 32, or fewer so that each worker gets about two batches of a small sample."""
    return 32 if workers == 0 else max(1, min(32, math.ceil(n_files / (2 * workers))))


def decode_rows(paths: Sequence[str], rows: Sequence[int], decoder: Decoder, *, workers: int = 0,
                pin_memory: bool = False, fail_fast: bool = False) -> Decoded:
    """Decode the files ``paths[rows]`` in this process (``workers`` = 0) or in worker processes.

    ``fail_fast``: stop after the first loader batch that met an unreadable file (the failing mode).
    A worker that dies (killed, out of memory) is a one-line error, not a worker traceback.
    """
    out = Decoded()
    if not rows:
        return out
    batch = loader_batch(len(rows), workers)
    workers = min(workers, math.ceil(len(rows) / batch))
    loader = DataLoader(_Files(paths, rows, decoder), batch_size=batch, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=pin_memory)
    try:
        for b in loader:
            out.add(b)
            if fail_fast and b["errors"]:
                break
    except RuntimeError as e:
        raise TrustVisionError(f"a data-loading worker failed ({' '.join(str(e).split())[:200]}); "
                               "retry with --workers 0") from None
    return out


def share(rows: Sequence[int], dist: Dist) -> list[int]:
    """This rank's round-robin share of ``rows``: positions ``rank``, ``rank + world``, ... (``Dist.owns``)."""
    return [r for i, r in enumerate(rows) if dist.owns(i)]


def decode(paths: Sequence[str], rows: Sequence[int], decoder: Decoder, *, workers: int = 0,
           fail_fast: bool = False, dist: Dist | None = None) -> Decoded:
    """:func:`decode_rows` of ``rows``, split among the torchrun ranks and gathered so every rank holds all.

    Single-process it is :func:`decode_rows`.  Per-file errors come back in ``errors`` (the union over ranks);
    any other failure on one rank is raised on every rank.  (Pinning is left to :func:`assemble`: the
    chunks are copied once more into the result, so pinning them would be wasted.)
    """
    dist = dist or current()
    if not dist.active:
        return decode_rows(paths, rows, decoder, workers=workers, fail_fast=fail_fast)
    mine, error = Decoded(), None
    try:
        mine = decode_rows(paths, share(rows, dist), decoder, workers=workers, fail_fast=fail_fast)
    except Exception as e:          # raised on every rank below, so that no rank waits in the gather
        error = e
    dist.raise_together(error)
    return merge(dist.gather(mine))


def _one_channel(t: Tensor, path: str) -> Tensor:
    """(3, H, W) -> (1, H, W) when R = G = B (a grey image stored as colour); else the one-line error."""
    if t.shape[0] == 3 and bool((t.amax(0) - t.amin(0)).max() >= 1e-6):
        raise TrustVisionError(f"{path} is colour (3 channels) but the model takes 1 channel; "
                               "convert the images to grayscale first")
    return t[:1]


def assemble(decoded: Decoded, rows: Sequence[int], paths: Sequence[str], *, channels: int | None,
             sized: bool, pin_memory: bool = False) -> Tensor:
    """Stack the decoded ``rows`` (in that order) into (n, C, H, W) float32, as ``load_folder`` + ``conform`` would.

    ``channels``: the model's (1 or 3), or None: 3 when any image is colour (grey replicated), else 1.
    ``sized``: images were resized on load; otherwise they must all share the first image's size.
    The chunks are consumed (``decoded.chunks`` is emptied) so that the peak memory is the result plus
    one loader batch, not twice the sample.
    """
    pos = {r: i for i, r in enumerate(rows)}
    shapes = {r: tuple(t.shape) for rs, x in decoded.chunks for r, t in zip(rs.tolist(), x)}
    c = channels or max(s[0] for s in shapes.values())
    h, w = shapes[rows[0]][-2:]
    out = torch.empty((len(rows), c, h, w), dtype=torch.float32, pin_memory=pin_memory)
    while decoded.chunks:
        rs, x = decoded.chunks.pop(0)
        for r, t in zip(rs.tolist(), x):
            if r not in pos:
                continue
            if tuple(t.shape[-2:]) != (h, w):
                hint = "" if sized else "; pass --input-size HxW (size= in Python) to resize"
                raise TrustVisionError(f"{paths[r]}: size {tuple(t.shape[-2:])} differs from {(h, w)}{hint}")
            out[pos[r]].copy_(_one_channel(t, paths[r]) if channels == 1 else t.expand(c, h, w))
        del rs, x
    return out
