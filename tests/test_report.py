"""The report layer: figure helpers, escaping, embedding, and a headless-Chromium render check."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from trustvision.report import bars, example_grid, per_class_bars, render_report, robustness_curves
from trustvision.results import SCHEMA_VERSION, Figure, Flag, SectionResult, Table

EVIL = "<script>alert(1)</script>"
QUOTED = '"quoted" & <b>'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(out: Path) -> dict:
    """A synthetic results dict with two sections, real figures and hostile strings everywhere."""
    labels = [EVIL, QUOTED] + [str(i) for i in range(2, 10)]
    eps = [0.0, 0.05, 0.1, 0.2, 0.3]
    robustness_curves({"fgsm": (eps, [0.9, 0.6, 0.4, 0.2, 0.1]), "pgd": (eps, [0.9, 0.5, 0.2, 0.05, 0.0]),
                       "worst-case": (eps, [0.9, 0.45, 0.15, 0.03, 0.0])},
                      out / "curves.png", norm="linf", clean_acc=0.9, chance=0.1, title=f"curves {EVIL}")
    g = torch.Generator().manual_seed(0)
    x1, x3 = torch.rand(4, 1, 12, 12, generator=g), torch.rand(3, 3, 10, 10, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    example_grid(x1, (x1 + 0.1 * torch.randn(x1.shape, generator=g)).clamp(0, 1), y, y, torch.tensor([5, 1, 0, 3]),
                 torch.full((4,), 0.99), torch.full((4,), 0.87), labels, out / "ex_gray.png")
    example_grid(x3, (x3 + 0.05).clamp(0, 1), y[:3], y[:3], y[:3] + 1, torch.ones(3), torch.ones(3) / 2,
                 labels, out / "sub" / "ex_rgb.png", amplify=4.0)
    per_class_bars(labels, [0.9] * 10, [0.1 * i for i in range(10)], out / "pc.png", title=QUOTED)
    bars(["a", QUOTED, "c"], [1.0, 2.5, None], out / "bars.png", title="t", ylabel="s")
    clean = SectionResult(
        "clean", f"Clean accuracy {QUOTED}", {"clean_accuracy": 0.912345678, "n_images": 64, QUOTED: EVIL},
        [Table("Per class", ["class", "acc"], [[EVIL, 0.5], [QUOTED, 1.0]])],
        [Figure("Per-class", "pc.png", f"caption {EVIL}"), Figure("Bars", "bars.png")],
        flags=[Flag("low-clean", "info", f"Info message {QUOTED}")])
    robust = SectionResult(
        "robustness", "Robustness",
        {"clean_accuracy": 0.9, "worst_case_robust_accuracy": {"linf": {"0.1": 0.15, "0.3": 0.0}}},
        [Table("Robust accuracy (linf)", ["attack"] + [f"eps={e}" for e in eps], [["pgd", 0.9, 0.5, 0.2, 0.05, 0.0]])],
        [Figure("Curves", "curves.png", "lines"), Figure("Gray", "ex_gray.png"), Figure("RGB", "sub/ex_rgb.png"),
         Figure("Gone", "missing.png", "deleted"), Figure("Escape", "../../etc/passwd", "outside")],
        flags=[Flag("gradient-masking", "error", f"Masked gradients {EVIL}", {"detail": EVIL}),
               Flag("non-monotone", "warning", "Accuracy rises with budget.")],
        seconds=1.5)
    return {
        "schema_version": SCHEMA_VERSION, "trustvision_version": "0.1.0", "created": "2024-01-01T00:00:00+00:00",
        "model": {"name": f"model {QUOTED} {EVIL}", "num_classes": 10, "channels": 1, "input_size": [28, 28],
                  "labels": labels, "device": "cpu", "precision": "fp32", "weights_sha256": "ab" * 10},
        "data": {"spec": f"data/{EVIL}", "name": "x", "n": 64, "num_classes": 10},
        "config": {"note": EVIL},
        "summary": {"clean_accuracy": 0.912345678, "robust_accuracy_linf@0.1": 0.15},
        "gates": [{"gate": "clean_accuracy=0.9", "metric": "clean_accuracy", "op": ">=", "threshold": 0.9,
                   "value": 0.912345678, "passed": True},
                  {"gate": "robust_accuracy_linf@0.1=0.5", "metric": "robust_accuracy_linf@0.1", "op": ">=",
                   "threshold": 0.5, "value": 0.15, "passed": False}],
        "sections": {"clean": clean.to_dict(), "robustness": robust.to_dict()},
    }


@pytest.fixture()
def report(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "sub").mkdir()
    path = render_report(_results(tmp_path), tmp_path)
    return path, path.read_text(encoding="utf-8")


def test_figures_are_png(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _results(tmp_path)
    for name in ("curves.png", "ex_gray.png", "sub/ex_rgb.png", "pc.png", "bars.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) < 400_000, f"{name} is {len(data)} bytes; keep DPI modest"


def test_example_grid_no_examples(tmp_path: Path) -> None:
    e = torch.zeros(0, 1, 8, 8)
    example_grid(e, e, [], [], [], [], [], [], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_escaping(report: tuple[Path, str]) -> None:
    _, page = report
    assert "<script" not in page.lower()                  # not the label, and the report carries no JS at all
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert QUOTED not in page and "&quot;quoted&quot; &amp; &lt;b&gt;" in page


def test_figures_embedded(report: tuple[Path, str]) -> None:
    _, page = report
    srcs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    external = [s for s in srcs if not (s.startswith("data:") or s.startswith("#"))]
    assert not external, external
    imgs = re.findall(r'<img [^>]*src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 5                                # 2 in clean + 3 embeddable in robustness
    assert "<link" not in page.lower() and "@import" not in page


def test_missing_and_escaping_figures(report: tuple[Path, str]) -> None:
    _, page = report
    assert page.count('class="missing"') == 2
    assert "missing.png" in page and "file not found" in page
    assert "leaves the output folder" in page and "root:" not in page


def test_layout(report: tuple[Path, str]) -> None:
    _, page = report
    assert page.startswith("<!DOCTYPE html>")
    for anchor in ('id="summary"', 'id="flags"', 'id="sec-clean"', 'id="sec-robustness"',
                   'href="#sec-clean"', 'href="#sec-robustness"'):
        assert anchor in page
    assert "0.9123" in page and "0.912345678" not in page  # 4 significant digits
    assert page.index("gradient-masking") < page.index("non-monotone") < page.index("low-clean")  # by severity
    assert 'badge fail' in page and 'badge pass' in page
    assert "ab" * 10 in page


def test_defensive_on_empty_and_odd_input(tmp_path: Path) -> None:
    page = render_report({}, tmp_path).read_text()
    assert "No sections were run" in page
    odd = {"model": None, "gates": "x", "summary": {"a": float("nan"), "b": None},
           "sections": {"s": {"flags": [{"severity": "bogus"}, "str"], "figures": [{}], "tables": [{"rows": [1]}],
                              "metrics": {"m": [1.0, 2.0]}}, "t": None}}
    page = render_report(odd, tmp_path).read_text()
    assert "figure has no path" in page and 'id="sec-s"' in page


# ------------------------------------------------------------------ browser
_IMG_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.mark.browser
def test_report_renders_in_chromium(report: tuple[Path, str]) -> None:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium not installed: apt-get install chromium to run the browser test")
    path, page = report
    probe = path.with_name("report_probe.html")                 # the report itself stays script-free
    probe.write_text(page.replace("</body>", _IMG_CHECK + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom.stdout)
        assert m, f"image probe did not run; stderr: {dom.stderr[-2000:]}"
        assert int(m.group(2)) == 5 and m.group(1) == m.group(2), m.group(0)
        shot = path.with_name("report.png")
        subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
                       capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000


# ------------------------------------------------------------------ issue 11: user strings never interpreted
HOSTILE = [r"$\frac{$", ":boom:", "[bold]x[/x]", "$x$", "a\\$b", "_{^"]


@pytest.mark.parametrize("usetex", [False, True])
def test_figures_draw_math_markup_and_emoji_labels_as_typed(tmp_path: Path, usetex: bool) -> None:
    import matplotlib
    labels = HOSTILE + ["ok"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 10, 10, generator=g)
    y = torch.tensor([0, 1, 2])
    with matplotlib.rc_context({"text.usetex": usetex}):     # a caller's usetex must not reach our labels
        per_class_bars(labels, [0.9] * 7, [0.5] * 7, tmp_path / "pc.png", title=f"model {HOSTILE[0]}")
        example_grid(x, (x + 0.05).clamp(0, 1), y, y, y + 1, torch.ones(3), torch.ones(3) / 2, labels,
                     tmp_path / "ex.png")
        bars(HOSTILE, [1.0] * len(HOSTILE), tmp_path / "bars.png", title=HOSTILE[0], ylabel=HOSTILE[1])
        robustness_curves({n: ([0.0, 0.1], [0.9, 0.5]) for n in HOSTILE}, tmp_path / "curves.png", norm="$l$",
                          clean_acc=0.9, chance=0.1, title=HOSTILE[0])
        assert matplotlib.rcParams["text.usetex"] is usetex        # the caller's setting is left alone
    for name in ("pc.png", "ex.png", "bars.png", "curves.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name


def test_plain_escapes_dollars_so_mathtext_sees_none() -> None:
    from matplotlib import cbook
    from trustvision.report.figures.common import plain, short_label
    for s in HOSTILE:
        assert not cbook.is_math_text(plain(s)), s
        assert plain(s).replace("\\$", "$") == s, s          # what matplotlib draws for non-math text
    assert plain("$x$") == "\\$x\\$" and short_label(["$x$"], 0) == "\\$x\\$"


def test_every_figure_helper_turns_usetex_off() -> None:
    import importlib
    import inspect
    import pkgutil
    import trustvision.report.figures as figs
    helpers = []
    for mod in pkgutil.iter_modules(figs.__path__):
        m = importlib.import_module(f"{figs.__name__}.{mod.name}")
        for name in getattr(m, "__all__", []):
            fn = getattr(m, name)
            if inspect.isfunction(fn) and "path" in inspect.signature(fn).parameters and name != "save":
                helpers.append(fn)
                assert getattr(fn, "safe_text", False), f"{m.__name__}.{name} is not wrapped by figure_helper"
    assert len(helpers) >= 15


def test_html_shows_markup_emoji_codes_and_data_dtype_as_typed(tmp_path: Path) -> None:
    import ast
    import trustvision.report as rep
    res = {"model": {"name": "m :boom: [bold]x[/x]"}, "data": {"spec": "d [/x] :ok:", "source_dtype": "uint16"},
           "sections": {"s": {"title": "t :boom:", "metrics": {"[red]k[/red]": 1.0}}}}
    page = render_report(res, tmp_path).read_text(encoding="utf-8")
    for s in ("m :boom: [bold]x[/x]", "d [/x] :ok:", "t :boom:", "[red]k[/red]"):
        assert s in page, s
    assert "\U0001f4a5" not in page and "\u2705" not in page            # no emoji substituted
    assert "stored as uint16" in page                                   # the source dtype is named
    for f in Path(rep.__file__).parent.rglob("*.py"):                    # the report path never uses Rich
        tree = ast.parse(f.read_text(encoding="utf-8"))
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any(m.split(".")[0] == "rich" for m in mods), f
