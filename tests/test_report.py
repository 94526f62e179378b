"""The report layer: figure helpers, escaping, embedding, and a headless-Chromium render check."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from browser import render_and_probe
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
    assert "91.2 %" in page and "0.912345678" not in page  # shares as percentages (issue 18)
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
@pytest.mark.browser
def test_report_renders_in_chromium(report: tuple[Path, str]) -> None:
    probe = render_and_probe(report[0], expected_images=5)     # every figure decodes (tests/browser.py)
    # the headline block is rendered, visible in the first screen, and above the first section
    assert probe.headline == "visible:above", probe.headline


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


# ------------------------------------------------------------------ issue 18: headline, figures a reader can trust
def _capture(monkeypatch, module) -> list:
    """Replace ``module.save`` so that the drawn matplotlib Figure is kept (and still rendered)."""
    figs: list = []

    def keep(fig, path):
        fig.canvas.draw()
        figs.append(fig)
    monkeypatch.setattr(module, "save", keep)
    return figs


def _extent(artist, fig):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_curves_legend_outside_axes_and_off_every_line_end(monkeypatch, tmp_path: Path) -> None:
    import trustvision.report.figures.robustness as rob
    figs = _capture(monkeypatch, rob)
    eps = [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    # pgd equals the worst case (the usual case): its line and its legend entry must both stay visible
    rob.robustness_curves({"fgsm": (eps, [0.9, 0.8, 0.7, 0.6, 0.55]), "pgd": (eps, [0.9, 0.7, 0.5, 0.3, 0.2]),
                           "worst-case": (eps, [0.9, 0.7, 0.5, 0.3, 0.2])}, tmp_path / "c.png", norm="linf",
                          clean_acc=0.9, chance=0.1, majority=0.46, title="t")
    fig, ax = figs[0], figs[0].axes[0]
    legend, box = ax.get_legend(), _extent(ax, fig)
    lbox = _extent(legend, fig)
    assert lbox.x0 >= box.x1 - 1, (lbox, box)                       # entirely right of the axes
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        end = ax.transData.transform((x[-1], y[-1]))
        assert not lbox.contains(*end), line.get_label()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    worst = next(ln for name, ln in lines.items() if name.startswith("worst case"))
    assert lines["pgd"].get_zorder() > worst.get_zorder()           # pgd drawn on top of the worst-case band
    assert worst.get_linewidth() >= 3 * lines["pgd"].get_linewidth()  # the band is distinct from any line
    texts = [t.get_text() for t in legend.get_texts()]
    assert "pgd" in texts
    majority = [ln for name, ln in lines.items() if name.startswith("majority class")]
    assert majority and abs(float(majority[0].get_ydata()[0]) - 0.46) < 1e-9
    assert any(name.startswith("1/K") and abs(float(ln.get_ydata()[0]) - 0.1) < 1e-9 for name, ln in lines.items())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2/255", "4/255", "8/255", "16/255"]


def test_per_class_legend_covers_no_bar(monkeypatch, tmp_path: Path) -> None:
    import trustvision.report.figures.robustness as rob
    figs = _capture(monkeypatch, rob)
    rob.per_class_bars([str(i) for i in range(10)], [1.0] * 10, [0.98] * 10, tmp_path / "pc.png", title="t")
    fig, ax = figs[0], figs[0].axes[0]
    lbox = _extent(ax.get_legend(), fig)
    assert not lbox.overlaps(_extent(ax, fig))
    assert not any(lbox.overlaps(_extent(bar, fig)) for bar in ax.patches)


@pytest.mark.parametrize("norm, mark, absent", [("l2", "L2=", "L∞"), ("l0", " px", "L∞"), ("linf", "L∞=", "L2")])
def test_example_grid_labels_the_attack_norm(monkeypatch, tmp_path: Path, norm: str, mark: str, absent: str) -> None:
    import trustvision.report.figures.robustness as rob
    figs = _capture(monkeypatch, rob)
    x, y = torch.full((2, 1, 6, 6), 0.5), torch.tensor([0, 1])
    xa = x.clone()
    xa[0, 0, 0, :3] += 0.1                                          # 3 pixels changed by 0.1
    xa[1, 0, 1, 1] -= 0.2
    rob.example_grid(x, xa, y, y, torch.tensor([1, 1]), torch.ones(2), torch.ones(2), ["a", "b"],
                     tmp_path / "g.png", norm=norm)
    pert = [t.get_text() for t in figs[0].axes[0].texts if "×" in t.get_text()]      # one axes: a mosaic
    assert len(pert) == 2 and all(mark in t for t in pert) and not any(absent in t for t in pert), pert
    expected = {"l2": f"L2={0.1 * 3 ** 0.5:.3g}", "l0": "L0=3 px", "linf": "L∞=0.1"}[norm]
    assert any(expected in t for t in pert), (expected, pert)         # independent formula, image 0 (fooled first)


def test_example_grid_is_compact_and_shows_fooled_images_of_several_classes(monkeypatch, tmp_path: Path) -> None:
    import trustvision.report.figures.robustness as rob
    figs = _capture(monkeypatch, rob)
    n = 16
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 8 + [1, 1, 2, 2, 3, 3, 4, 4])
    pred_adv = y.clone()
    pred_adv[[9, 11, 13, 15]] = 0                                     # fooled: one image each of classes 1-4
    rob.example_grid(x, x, y, y, pred_adv, torch.ones(n), torch.ones(n), [str(i) for i in range(5)],
                     tmp_path / "g.png")
    fig = figs[0]
    (ax,) = fig.axes                                                  # one mosaic image, a title per tile
    assert len(ax.get_images()) == 1 and len(ax.texts) == 8 * 3      # 8 examples
    w, h = fig.get_size_inches()
    assert h <= 4 * 2.3 + 1e-6 and w > h                              # 4 rows, not 8
    adv_titles = [t.get_text().split("\n")[-1] for t in ax.texts[1::3]]
    assert all(t.startswith("pred 0") for t in adv_titles[:4]), adv_titles   # the 4 fooled ones first


def test_pick_examples_fooled_first_over_classes() -> None:
    from trustvision.report.figures.common import pick_examples
    y = [0] * 10 + [1, 2, 3, 1, 2, 3]
    fooled = [False] * 10 + [True, True, True, False, False, True]
    pick = pick_examples(y, fooled, 8).tolist()
    assert pick[:4] == [10, 11, 12, 15]                              # fooled: classes 1, 2, 3, then 3 again
    assert [y[i] for i in pick[4:]] == [0, 1, 2, 0]                  # then not fooled, class by class
    assert pick_examples([], [], 4).tolist() == []
    assert sorted(pick_examples([2, 2, 2], [True, False, True], 5).tolist()) == [0, 1, 2]


def test_labels_one_format_for_budgets_and_shares() -> None:
    from trustvision.report.labels import budget, column_label, metric_label, pct, pct_of
    assert budget(8 / 255) == budget(0.0313725) == budget("0.03137") == "0.0314 (8/255)"
    assert budget(0.2) == "0.2" and budget(0.5) == "0.5" and budget(2.0) == "2"
    assert column_label("eps=0.03137") == "ε = 0.0314 (8/255)"
    assert metric_label("robust_accuracy_linf@0.0313725") == "robust accuracy, L∞ ε = 0.0314 (8/255)"
    assert metric_label("robust_accuracy_l2@0.5") == "robust accuracy, L2 ε = 0.5"
    assert pct(0.615) == "61.5 %" and pct_of(0.615, 200) == "61.5 % (123 of 200 images)"


def test_report_headline_percentages_and_grouped_grids(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    res = _results(tmp_path)
    for i in range(3):                                              # three example grids in one section
        res["sections"]["robustness"]["figures"].append(
            {"title": f"Adversarial examples: grid-{i}-of-3 (l2, eps=0.5)", "path": "ex_gray.png", "caption": ""})
    res["sections"]["robustness"]["metrics"]["n_images"] = 64
    page = render_report(res, tmp_path).read_text(encoding="utf-8")
    head = page[page.index('id="headline"'):page.index('id="sec-')]
    assert page.index('id="headline"') < page.index('id="summary"') < page.index('id="sec-clean"')
    assert "FAIL" in head and "1 error" in head and "1 warning" in head          # gate failed, flags counted
    assert "91.2 % (58 of 64 images)" in head                                     # the clean gate, with denominator
    assert "15.0 %" in head and "of 64 images" in head and "L∞" in head           # worst case at the asked budget
    assert "0.9123" not in page and "91.2 %" in page                               # percentages, not fractions
    assert "ε = 0.05" in page and "eps=0.05" not in page                           # one budget format
    grids = page[page.index('id="sec-robustness"'):]
    shown, more = grids.split('<details class="more">', 1)
    assert "grid-0-of-3" in shown and "grid-1-of-3" not in shown                  # the first grid shown,
    assert "grid-1-of-3" in more and "grid-2-of-3" in more                        # the others folded
    assert len(re.findall(r'<figure><h4 class="figtitle">', page)) >= 5             # titles above the images
    res["headline"] = {"sentence": "The model FAILED its gate X.", "passed": False}  # headline.py's verdict
    page = render_report(res, tmp_path).read_text(encoding="utf-8")
    assert page.index("The model FAILED its gate X.") < page.index('id="sec-clean"')


@pytest.mark.slow
def test_uap_and_explain_examples_cover_several_classes(mnist_clf, mnist_test, tmp_path: Path) -> None:
    from trustvision.evaluation.sections.explain import ExplainConfig, explain_section
    from trustvision.evaluation.sections.uap import UAPConfig, uap_section
    y = mnist_test.y
    idx = [int(i) for i in (y == 0).nonzero()[:12, 0]] + [int(i) for c in range(1, 10)
                                                            for i in (y == c).nonzero()[:3, 0]]
    data = mnist_test.subset(idx)                                   # 12 zeros first: the old grids showed only 0s
    logits = mnist_clf.predict(data.x)
    uap = uap_section(mnist_clf, data, logits, UAPConfig(n_source=16, max_passes=1, sweep=[0.04], zeta=0.2),
                      out_dir=tmp_path / "u")
    ex = uap.examples[0]
    assert len(ex["label"]) == 8 and len(set(ex["label"])) >= 4, ex
    assert ex["fooled"] == sorted(ex["fooled"], reverse=True)       # fooled ones first
    assert "best_control" in uap.metrics and uap.metrics["best_control"] == max(uap.metrics["controls"].values())
    cfg = ExplainConfig(clusters=2, max_images=24, faithfulness_images=8, steps=4, attack_images=len(idx),
                        attack_options={"eps": 0.15, "steps": 5})
    sec = explain_section(mnist_clf, data, logits, cfg, out_dir=tmp_path / "e")
    shown = sec.examples[-1]["attention_under_attack"]
    assert len(set(int(data.y[i]) for i in shown)) >= 4, shown
    assert sec.examples[-1]["fooled"] == sorted(sec.examples[-1]["fooled"], reverse=True)
