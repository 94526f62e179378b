"""Lazy, streaming data (issue 16): a folder is listed without opening an image, a sample decodes only its
files (bit-identical to the eager path), unreadable files are reported per file, the decoding splits
across torchrun ranks, and memory stays bounded by the sample (a 2 000-image folder, n = 64)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trustvision.data.stream as stream
from trustvision.cli.options import DataArgs
from trustvision.data import Dataset, LazyDataset, load_dataset
from trustvision.scale.dist import Dist
from helpers import error


def mixed_folder(root: Path, per_class: int = 9) -> Path:
    """3 classes of random images: grey and colour, sizes 14..29 (so a size is needed), 8- and 16-bit."""
    rng = np.random.default_rng(0)
    for k, c in enumerate("abc"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(14, 30, 2))
            if i % 4 == 0:
                a = rng.integers(0, 65536, (h, w), dtype=np.uint16)
            else:
                a = rng.integers(0, 256, (h, w, 3) if i % 2 else (h, w), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i:02d}.png")
    return root


def grey_folder(root: Path, n: int = 12, side: int = 10) -> Path:
    rng = np.random.default_rng(1)
    for c in ("0", "1"):
        (root / c).mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def same(a: Dataset, b: Dataset) -> bool:
    return (torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.paths == b.paths and a.labels == b.labels
            and a.name == b.name)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("stream") / "mixed")


class Opens:
    """Counts the image files opened (patches the reader the DataLoader items call)."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real = stream.read_image
        monkeypatch.setattr(stream, "read_image", lambda p, m: (self.paths.append(str(p)), real(p, m))[1])


# ------------------------------------------------------------------ same results as the eager path
@pytest.mark.parametrize("channels,size,conform_size,n,seed", [
    (3, (16, 16), None, 11, 3), (3, (24, 18), (20, 20), 20, 1), (3, (16, 16), None, None, 0), (3, (9, 30), None, 100, 5)])
def test_sample_is_bit_identical_to_eager(mixed, channels, size, conform_size, n, seed):
    eager = load_dataset(str(mixed), size=size).conform(channels, 5, conform_size).sample(n, seed)
    lazy = load_dataset(str(mixed), size=size, lazy=True)
    assert isinstance(lazy, LazyDataset) and len(lazy) == 27 and lazy.labels == ["a", "b", "c"]
    got = lazy.conform(channels, 5, conform_size).sample(n, seed)
    assert type(got) is Dataset and same(eager, got)
    assert got.info["source"] == str(mixed) and got.info["labels_from"] == "class sub-folders"
    assert set(got.info["source_dtype"].split(", ")) <= {"uint8", "uint16"}
    idx = load_dataset(str(mixed), size=size).sample_indices(n, seed)
    assert torch.equal(lazy.sample_indices(n, seed), idx)


def test_grey_folder_for_a_grey_model_and_no_size(tmp_path):
    root = grey_folder(tmp_path / "g")
    eager = load_dataset(str(root)).conform(1, 2).sample(5, 7)
    got = load_dataset(str(root), lazy=True).conform(1, 2).sample(5, 7)
    assert same(eager, got) and got.x.shape == (5, 1, 10, 10)
    assert same(load_dataset(str(root)).sample(4, 2), load_dataset(str(root), lazy=True).sample(4, 2))


def test_workers_give_the_same_sample(mixed):
    base = load_dataset(str(mixed), size=(16, 16), lazy=True).conform(3, 3)
    one = base.sample(13, 4)
    two = load_dataset(str(mixed), size=(16, 16), lazy=True, workers=2).conform(3, 3).sample(13, 4)
    assert same(one, two)


def test_colour_for_a_grey_model_names_the_file(mixed):
    msg = error(lambda: load_dataset(str(mixed), size=(8, 8), lazy=True).conform(1, 3).sample(None))
    assert "colour" in msg and msg.split(" is colour")[0].endswith(".png")
    assert "takes 4" in error(lambda: load_dataset(str(mixed), lazy=True).conform(4, 3))
    assert "--num-classes" in error(lambda: load_dataset(str(mixed), lazy=True).conform(3, 2))


def test_sizes_must_agree_without_a_size(mixed):
    assert "--input-size" in error(lambda: load_dataset(str(mixed), lazy=True).sample(6, 0))


# ------------------------------------------------------------------ only the sampled files are opened
def test_listing_opens_nothing_and_sampling_opens_only_the_sample(mixed, monkeypatch):
    opens = Opens(monkeypatch)
    lazy = load_dataset(str(mixed), size=(12, 12), lazy=True)
    sub, (train, test) = lazy.subset([3, 1, 4]), lazy.split(0.25, 0)
    lazy.conform(3, 3)
    assert opens.paths == [] and isinstance(sub, LazyDataset) and len(train) + len(test) == len(lazy)
    got = lazy.conform(3, 3).sample(7, 2)
    assert sorted(opens.paths) == sorted(got.paths) and len(opens.paths) == 7
    assert sub.sample(None).paths == [lazy.paths[i] for i in (3, 1, 4)]


def test_x_decodes_everything_once(tmp_path, monkeypatch):
    lazy = load_dataset(str(grey_folder(tmp_path / "g")), lazy=True)
    opens = Opens(monkeypatch)
    assert torch.equal(lazy.x, load_dataset(str(tmp_path / "g")).x) and lazy.x.shape == (12, 1, 10, 10)
    assert len(opens.paths) == 12                       # cached: the second .x decodes nothing


# ------------------------------------------------------------------ unreadable files
@pytest.fixture()
def with_bad(tmp_path) -> Path:
    root = grey_folder(tmp_path / "bad", n=12)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "0" / "0.png").write_bytes(b"")          # an empty file: PIL cannot identify it
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_fail_in_one_line_naming_the_file(with_bad, workers):
    msg = error(lambda: load_dataset(str(with_bad), lazy=True, workers=workers).sample(None))
    assert msg.startswith(str(with_bad / "0" / "0.png")) and "Traceback" not in msg


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_files_are_listed_and_replaced(with_bad, workers):
    lazy = load_dataset(str(with_bad), lazy=True, skip_bad=True, workers=workers)
    every = lazy.sample(None)
    eager = load_dataset(str(with_bad), skip_bad=True)
    assert same(every, eager) and every.info["skipped"] == eager.info["skipped"]
    assert [Path(s["path"]).name for s in every.info["skipped"]] == ["0.png", "broken.png"]
    hit = next(s for s in range(50) if 0 in lazy.sample_indices(8, s).tolist())   # a draw holding 0/0.png
    got = lazy.sample(8, hit)
    assert len(got) == 8 and str(with_bad / "0" / "0.png") not in got.paths
    assert any(s["path"].endswith("0.png") for s in got.info["skipped"])
    assert "corrupt or unreadable" in got.info["skipped"][0]["reason"]
    assert set(got.paths) <= set(every.paths) and got.paths == sorted(got.paths, key=lazy.paths.index)


class _Raising(stream.Decoder):
    def __call__(self, path):
        raise ValueError("codec said\nno")


class _Dying(stream.Decoder):
    def __call__(self, path):
        os._exit(3)                                   # a worker killed mid-batch (out of memory, a signal)


def test_unexpected_decoder_errors_stay_per_file_and_dead_workers_are_one_line(tmp_path):
    root = grey_folder(tmp_path / "g", n=4)
    paths = [str(p) for p in sorted(root.rglob("*.png"))]
    got = stream.decode_rows(paths, [0, 2], _Raising(None))
    assert got.errors == [(0, "unreadable (ValueError: codec said no)"), (2, "unreadable (ValueError: codec said no)")]
    msg = error(lambda: stream.decode_rows(paths, [0, 1, 2, 3], _Dying(None), workers=1))
    assert "worker" in msg and "--workers 0" in msg


def test_nothing_readable_is_one_line(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.png").write_bytes(b"nope")
    msg = error(lambda: load_dataset(str(tmp_path / "d"), lazy=True, skip_bad=True).sample(None))
    assert "none of the 1 image files" in msg and "x.png" in msg


# ------------------------------------------------------------------ the split among ranks
class TwoRanks(Dist):
    """Rank ``rank`` of a pretend 2-process group: ``gather`` returns each rank's share decoded here."""

    def __init__(self, rank: int, paths, decoder, other_error: str | None = None):
        super().__init__(rank, 2)
        object.__setattr__(self, "ctx", (paths, decoder, other_error))

    @property
    def active(self) -> bool:
        return True

    def gather(self, obj):
        paths, decoder, other_error = self.ctx
        if obj is None or isinstance(obj, str):                  # raise_together's exchange of errors
            return [obj, other_error] if self.rank == 0 else [other_error, obj]
        other = stream.decode_rows(paths, stream.share(self.rows, Dist(1 - self.rank, 2)), decoder)
        return [obj, other] if self.rank == 0 else [other, obj]


def test_ranks_decode_disjoint_shares_and_all_hold_the_sample(mixed, monkeypatch):
    lazy = load_dataset(str(mixed), size=(16, 16), lazy=True)
    rows = lazy.sample_indices(15, 2).tolist()
    shares = [stream.share(rows, Dist(r, 2)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == rows and not set(shares[0]) & set(shares[1])
    assert shares[0] == rows[0::2] and shares[1] == rows[1::2]
    decoder = stream.Decoder(None, (16, 16), rgb=True)
    single = stream.assemble(stream.decode(lazy.paths, rows, decoder, dist=Dist()), rows, lazy.paths,
                             channels=3, sized=True)
    for rank in (0, 1):
        d = TwoRanks(rank, lazy.paths, decoder)
        object.__setattr__(d, "rows", rows)
        opens = Opens(monkeypatch)
        both = stream.decode(lazy.paths, rows, decoder, dist=d)
        mine = [p for p in opens.paths][:len(shares[rank])]
        assert sorted(mine) == sorted(lazy.paths[r] for r in shares[rank])
        assert torch.equal(single, stream.assemble(both, rows, lazy.paths, channels=3, sized=True))
        monkeypatch.undo()


def test_a_failure_on_another_rank_is_raised_here(mixed):
    decoder = stream.Decoder(None, (16, 16))
    d = TwoRanks(0, [], decoder, other_error="disk on fire")
    object.__setattr__(d, "rows", [0, 1])
    assert "rank 1: disk on fire" in error(lambda: stream.decode([str(p) for p in sorted(mixed.rglob("*.png"))],
                                                                 [0, 1], decoder, dist=d))


# ------------------------------------------------------------------ DataArgs and --workers
class _Clf:
    input_size, channels, num_classes, device = (16, 16), 3, 3, torch.device("cpu")


def test_data_args_sample_lazily(mixed, monkeypatch):
    opens = Opens(monkeypatch)
    got = DataArgs(str(mixed), n=6, seed=4).load(_Clf())
    assert len(opens.paths) == 6 and type(got) is Dataset
    assert same(got, load_dataset(str(mixed), size=(16, 16)).conform(3, 3).sample(6, 4))
    assert "--workers" in error(lambda: __import__("trustvision.cli.options", fromlist=["x"]).set_workers(-1))
    assert "workers" in error(lambda: DataArgs(str(mixed), workers=-2).load(_Clf()))


def test_workers_option_on_data_commands():
    from typer.testing import CliRunner
    from trustvision.cli.app import app
    r = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "200"})
    assert "--workers" in r.output
    r = CliRunner().invoke(app, ["attack", "fgsm", "--model", "x", "--data", "mnist", "--workers", "-1"])
    assert r.exit_code == 2 and "--workers must be" in r.output


# ------------------------------------------------------------------ memory: 2 000 images of 256², n = 64
MEMORY_SCRIPT = textwrap.dedent("""
    import json, re, resource, sys, types
    import PIL.Image
    import torch
    from trustvision.cli.options import DataArgs
    def peak():      # VmHWM: this process's peak RSS (ru_maxrss survives exec: it can be the parent's)
        try:
            return int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        except (OSError, AttributeError):
            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return r if sys.platform == "darwin" else r * 1024
    def reset_peak():  # Linux >= 4.0: the peak restarts from the current RSS (the imports' peak is not the data's)
        try:
            open("/proc/self/clear_refs", "w").write("5")
        except OSError:
            pass
    opened = []
    real_open = PIL.Image.open
    PIL.Image.open = lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1]
    clf = types.SimpleNamespace(input_size=(256, 256), channels=3, num_classes=4, device=torch.device("cpu"))
    reset_peak()
    base = peak()
    ds = DataArgs(sys.argv[1], n=64, seed=0).load(clf)
    print(json.dumps({"n": len(ds), "shape": list(ds.x.shape), "opened": opened, "paths": ds.paths,
                      "base": base, "peak": peak()}))
""")


@pytest.mark.slow
def test_memory_stays_bounded_by_the_sample(tmp_path):
    import io
    encoded = []
    for v in range(16):            # 16 distinct 256x256 colour PNGs, copied: 2 000 files written in well under 1 s
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (16 * v, 255 - 16 * v, 7 * v)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    root = tmp_path / "big"
    for k in range(4):
        (root / str(k)).mkdir(parents=True)
        for i in range(500):
            (root / str(k) / f"{i:03d}.png").write_bytes(encoded[(k * 500 + i) % 16])
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(root)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    everything = 2000 * 3 * 256 * 256 * 4                   # 1.57 GB: what decoding all of them takes
    sample = 64 * 3 * 256 * 256 * 4                         # 50 MB: the sample itself
    assert r["n"] == 64 and r["shape"] == [64, 3, 256, 256]
    assert len(r["opened"]) == 64 and sorted(r["opened"]) == sorted(r["paths"])   # only the sampled files
    growth = r["peak"] - r["base"]                          # the imports (torch) are not the data's
    assert sample <= growth < everything / 5, f"peak RSS grew by {growth / 2**20:.0f} MiB"


# ------------------------------------------------------------------ 2 gloo ranks under torchrun
RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import trustvision.data.stream as stream
    from trustvision.data import load_dataset
    from trustvision.errors import TrustVisionError
    from trustvision.persist import digest
    from trustvision.scale import init, shutdown
    opened = []
    real = stream.read_image
    stream.read_image = lambda p, m: (opened.append(str(p)), real(p, m))[1]
    dist = init("cpu")
    folder, out = sys.argv[1], sys.argv[2]
    for mode in ("skip", "strict"):          # skip: listed and replaced; strict: every rank raises the same line
        opened.clear()
        try:
            ds = load_dataset(folder, size=(16, 16), lazy=True, skip_bad=mode == "skip").conform(3, 3).sample(9, 1)
            r = {"x": digest(ds.x, ds.y), "paths": ds.paths, "skipped": ds.info.get("skipped")}
        except TrustVisionError as e:
            r = {"error": str(e)}
        r["opened"] = list(opened)
        open(f"{out}.{mode}.{dist.rank}.json", "w").write(json.dumps(r))
    shutdown()
""")


def _two_ranks(tmp_path, folder: Path) -> dict[str, list[dict]]:
    """Run RANK_SCRIPT on 2 gloo ranks (one torchrun launch): {mode: [rank 0's result, rank 1's]}."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(folder), str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return {m: [json.loads((tmp_path / f"out.{m}.{r}.json").read_text()) for r in (0, 1)] for m in ("skip", "strict")}


@pytest.mark.slow
def test_two_ranks_split_the_decoding_and_hold_the_same_sample(mixed, tmp_path):
    import shutil
    from trustvision.persist import digest
    folder = tmp_path / "f"
    shutil.copytree(mixed, folder)
    (folder / "b" / "zz-broken.png").write_bytes(b"\x89PNG not really")
    lazy = load_dataset(str(folder), size=(16, 16), lazy=True, skip_bad=True).conform(3, 3)
    seed_rows = lazy.sample_indices(9, 1).tolist()
    assert lazy.paths.index(str(folder / "b" / "zz-broken.png")) in seed_rows      # the draw meets the bad file
    single = lazy.sample(9, 1)
    both = _two_ranks(tmp_path, folder)
    ranks, strict = both["skip"], both["strict"]
    for r in ranks:
        assert r["x"] == digest(single.x, single.y) and r["paths"] == single.paths
        assert r["skipped"] == single.info["skipped"] and len(r["skipped"]) == 1
    first = [p for p in ranks[0]["opened"]]
    assert not set(first) & set(ranks[1]["opened"])                                  # disjoint shares
    assert set(first) | set(ranks[1]["opened"]) == set(single.paths) | {str(folder / "b" / "zz-broken.png")}
    assert strict[0]["error"] == strict[1]["error"] and "zz-broken.png" in strict[0]["error"]
