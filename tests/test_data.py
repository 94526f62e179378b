"""Datasets: bad input gets one-line errors naming the file; bundled sets and seeds behave."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trustvision.data import bundled
from trustvision.data import Dataset, load_dataset
from helpers import error


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_folder(root: Path, arrays: dict[str, list[np.ndarray]]) -> Path:
    """Write uint8 arrays (H,W or H,W,3) as PNGs under root/<class>/<i>.png."""
    for cls, imgs in arrays.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(imgs):
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------ folders
def test_png_folder_round_trips_exactly(tmp_path):
    gray = [_rng(i).integers(0, 256, (12, 10), dtype=np.uint8) for i in range(3)]
    rgb = [_rng(10 + i).integers(0, 256, (12, 10, 3), dtype=np.uint8) for i in range(2)]
    d = load_dataset(str(write_folder(tmp_path / "g", {"a": gray[:2], "b": gray[2:]})))
    assert d.x.shape == (3, 1, 12, 10) and d.labels == ["a", "b"] and d.y.tolist() == [0, 0, 1]
    assert np.array_equal((d.x[:, 0] * 255).round().byte().numpy(), np.stack(gray))
    assert d.paths[0].endswith("0.png")
    d = load_dataset(str(write_folder(tmp_path / "c", {"only": rgb})))
    assert d.x.shape == (2, 3, 12, 10)
    assert np.array_equal((d.x * 255).round().byte().permute(0, 2, 3, 1).numpy(), np.stack(rgb))


def test_corrupt_image_is_named(tmp_path):
    root = write_folder(tmp_path / "d", {"a": [np.zeros((8, 8), np.uint8)], "b": [np.ones((8, 8), np.uint8)]})
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    assert str(bad) in error(lambda: load_dataset(str(root)))


def test_empty_and_flat_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in error(lambda: load_dataset(str(empty)))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "x.png")
    assert "sub-folder" in error(lambda: load_dataset(str(flat)))
    (flat / "cls").mkdir()                      # a class folder without images
    assert "no images" in error(lambda: load_dataset(str(flat)))


def test_hidden_folders_are_not_classes(tmp_path):
    root = write_folder(tmp_path / "d", {"a": [np.zeros((8, 8), np.uint8)], ".ipynb_checkpoints": []})
    assert load_dataset(str(root)).labels == ["a"]


def test_mixed_sizes(tmp_path):
    root = write_folder(tmp_path / "d", {"a": [np.zeros((8, 8), np.uint8)],
                                         "b": [np.full((10, 12), 255, np.uint8)]})
    msg = error(lambda: load_dataset(str(root)))
    assert "1.png" not in msg and str(root / "b" / "0.png") in msg and "--image-size" in msg
    d = load_dataset(str(root), size=(16, 16))
    assert d.x.shape == (2, 1, 16, 16) and float(d.x[1].min()) == 1.0


def test_missing_path_and_unsupported_file(tmp_path):
    assert "nowhere" in error(lambda: load_dataset(str(tmp_path / "nowhere")))
    f = tmp_path / "data.csv"
    f.write_text("1,2\n")
    assert str(f) in error(lambda: load_dataset(str(f)))


# ------------------------------------------------------------------ npz
def test_npz_layouts(tmp_path):
    x = _rng().integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    d = load_dataset(save_npz(tmp_path / "nhwc.npz", x=x, y=np.arange(5)))
    assert d.x.shape == (5, 3, 6, 7) and d.num_classes == 5
    d = load_dataset(save_npz(tmp_path / "nhw.npz", x=x[..., 0] / 255.0, y=np.zeros(5, np.int64),
                              labels=np.array(["cat", "dog"])))
    assert d.x.shape == (5, 1, 6, 7) and d.labels == ["cat", "dog"]


def test_npz_bad_input(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    f = save_npz(tmp_path / "noy.npz", x=x)
    msg = error(lambda: load_dataset(f))
    assert f in msg and "'y'" in msg
    f = save_npz(tmp_path / "obj.npz", x=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.arange(2))
    assert f in error(lambda: load_dataset(f)) and "pickle" in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "range.npz", x=np.full((4, 8, 8), 255.0, np.float32), y=np.arange(4))
    assert f in error(lambda: load_dataset(f)) and "[0, 1]" in error(lambda: load_dataset(f))
    nan = np.zeros((4, 8, 8), np.float32)
    nan[2, 3, 3] = np.nan
    f = save_npz(tmp_path / "nan.npz", x=nan, y=np.arange(4))
    assert f in error(lambda: load_dataset(f)) and "NaN" in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "negy.npz", x=x, y=np.array([0, 1, -1, 2]))
    assert f in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "floaty.npz", x=x, y=np.zeros(4, np.float32))
    assert f in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "short.npz", x=x, y=np.arange(3))
    assert f in error(lambda: load_dataset(f)) and "3 labels" in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "names.npz", x=x, y=np.arange(4), labels=np.array(["a", "b"]))
    assert f in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "ints.npz", x=x.astype(np.int64), y=np.arange(4))
    assert f in error(lambda: load_dataset(f))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(bytes(_rng().integers(0, 256, 300, dtype=np.uint8)))
    assert str(junk) in error(lambda: load_dataset(str(junk)))


# ------------------------------------------------------------------ Dataset and conform
def _ds(c: int, y: list[int], labels: list[str] | None = None, equal: bool = False) -> Dataset:
    x = torch.rand(len(y), 1 if equal else c, 6, 6)
    x = x.repeat(1, c, 1, 1) if equal else x
    return Dataset(x, torch.tensor(y), labels or [str(i) for i in range(max(y) + 1)], "toy")


def test_conform_channels():
    g = _ds(1, [0, 1, 2])
    rgb = g.conform(3, 10)
    assert rgb.x.shape == (3, 3, 6, 6) and torch.equal(rgb.x[:, 0], rgb.x[:, 2]) and len(rgb.labels) == 10
    assert "colour" in error(lambda: _ds(3, [0, 1]).conform(1, 10))
    eq = _ds(3, [0, 1], equal=True).conform(1, 10)
    assert eq.x.shape == (2, 1, 6, 6)
    assert "channels" in error(lambda: _ds(2, [0, 1]).conform(3, 10))
    assert _ds(3, [0]).subset([]).conform(1, 10).x.shape[1] == 1     # empty colour data does not crash


def test_conform_classes_and_size():
    assert "--num-classes" in error(lambda: _ds(1, [0, 1, 2, 3, 4]).conform(1, 3))
    out_of_range = Dataset(torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 5]), ["a", "b", "c"], "toy")
    assert "[0, 3]" in error(lambda: out_of_range.conform(1, 4))
    assert _ds(1, [0, 1]).conform(1, 2, size=(9, 7)).x.shape == (2, 1, 9, 7)


def test_dataset_rejects_bad_pixels():
    x = torch.rand(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    assert "NaN" in error(lambda: Dataset(x, torch.tensor([0, 1]), ["a", "b"], "nanset"))
    assert "[0, 1]" in error(lambda: Dataset(torch.full((2, 1, 4, 4), 2.0), torch.tensor([0, 1]), ["a", "b"]))
    assert "N,C,H,W" in error(lambda: Dataset(torch.rand(2, 4, 4), torch.tensor([0, 1]), ["a", "b"]))
    assert "labels" in error(lambda: Dataset(torch.rand(2, 1, 4, 4), torch.tensor([0]), ["a"]))


def test_split_and_sample_are_seeded():
    d = _ds(1, list(range(10)) * 5)
    a_tr, a_te = d.split(0.2, seed=3)
    b_tr, b_te = d.split(0.2, seed=3)
    assert len(a_te) == 10 and len(a_tr) == 40
    assert torch.equal(a_te.x, b_te.x) and torch.equal(a_tr.y, b_tr.y)
    assert not torch.equal(d.split(0.2, seed=4)[1].x, a_te.x)
    assert torch.equal(d.sample(7, seed=1).x, d.sample(7, seed=1).x)
    assert not torch.equal(d.sample(7, seed=1).x, d.sample(7, seed=2).x)
    assert d.sample(None) is d and len(d.sample(1000)) == 50


# ------------------------------------------------------------------ bundled sets
def test_bundled_mnist():
    d = load_dataset("mnist")
    assert d.x.shape == (5000, 1, 28, 28) and d.x.dtype == torch.float32
    assert sorted(d.y.unique().tolist()) == list(range(10)) and d.num_classes == 10
    assert 0 <= float(d.x.min()) and float(d.x.max()) <= 1 and float(d.x.max()) > 0.9


def test_bundled_digits_and_natural():
    d = load_dataset("digits")
    assert d.x.shape == (1797, 1, 8, 8) and sorted(d.y.unique().tolist()) == list(range(10))
    n = load_dataset("natural")
    assert n.x.shape[1:] == (3, 32, 32) and n.labels == ["natural"] and float(n.x.std()) > 0.05
    assert torch.equal(bundled.natural_images(8, seed=1), bundled.natural_images(8, seed=1))
    assert not torch.equal(bundled.natural_images(8, seed=1), bundled.natural_images(8, seed=2))
    assert "mnist" in error(lambda: bundled.load("cifar"))
