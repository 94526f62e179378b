"""The ``trustvision`` command line (Typer): demo, audit, attack, explain (in :mod:`.cli_explain`).

Errors caused by the user's input print one line (``error: ...``) and exit 2;
a failed ``--fail-under`` gate exits 1; success exits 0.
"""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from ..errors import TrustVisionError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="How far can an image-recognition model be trusted? Attacks, robustness curves with "
                       "soundness checks, and a self-contained HTML report.")
console = Console(stderr=False)
err = Console(stderr=True)

# ---------------------------------------------------------------- shared options
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="torchvision:NAME | timm:NAME | trustvision:NAME | "
                                       "file.safetensors/.pt/.pth (+--arch) | file.ts | file.onnx | module.py:factory")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="class folder | file.npz (x, y) | mnist | digits")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="state-dict file for an architecture spec")]
ArchOpt = Annotated[Optional[str], typer.Option(help="architecture for a state-dict file, e.g. torchvision:resnet18")]
ClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="number of classes (inferred if omitted)")]
ChannelsOpt = Annotated[Optional[int], typer.Option(help="input channels the model takes (default 3, or inferred)")]
SizeOpt = Annotated[Optional[str], typer.Option("--input-size", help="model input size HxW, e.g. 224x224")]
MeanOpt = Annotated[Optional[str], typer.Option(help="per-channel mean, e.g. 0.485,0.456,0.406")]
StdOpt = Annotated[Optional[str], typer.Option(help="per-channel std, e.g. 0.229,0.224,0.225")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="class names: comma list or a text file, one per line")]
PickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="allow loading a pickled full model (runs code!)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda | cuda:1 | mps")]
PrecisionOpt = Annotated[str, typer.Option(help="fp32 | bf16 (autocast)")]
CLOpt = Annotated[bool, typer.Option("--channels-last", help="channels-last memory format")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="images per device batch")]
SeedOpt = Annotated[int, typer.Option(help="seed for sampling and random starts")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    from ..auditor import _number
    try:
        return [_number(t) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        raise TrustVisionError(f"{what}: expected comma-separated numbers (fractions like 8/255 allowed), "
                               f"got {text!r}") from None


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise TrustVisionError(f"--input-size: expected HxW like 224x224, got {text!r}") from None


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    p = Path(text)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [t.strip() for t in text.split(",")]


def user_errors(fn):
    """Turn TrustVisionError into one line on stderr and exit status 2."""
    @wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except TrustVisionError as e:
            err.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted: finished sections are kept; re-run the same command to resume")
            raise typer.Exit(130)
    return wrapper


def _load(model, weights, arch, num_classes, channels, input_size, mean, std, labels, trust_pickle, device,
          precision, channels_last, compile):
    from ..models.loading import load_model
    return load_model(model, weights=weights, arch=arch, num_classes=num_classes, channels=channels,
                      input_size=_size(input_size), mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                      labels=_labels(labels), trust_pickle=trust_pickle, device=device, precision=precision,
                      channels_last=channels_last, compile=compile)


def print_summary(results: dict, out: Path) -> int:
    """Print the summary, flags and gates; return the exit code (1 if a gate failed)."""
    t = RichTable(title="trustvision summary", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in results["summary"].items():
        t.add_row(k, f"{v:.1%}" if isinstance(v, float) else str(v))
    console.print(t)
    flags = [(s, f) for s, sec in results["sections"].items() for f in sec.get("flags", [])]
    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for s, f in flags:
        console.print(f"[{colour[f['severity']]}]{f['severity']}[/] {escape(f'[{s}]')} {f['code']}: "
                      f"{escape(f['message'])}", highlight=False)
    if not flags:
        console.print("[green]no soundness flags raised[/green]")
    code = 0
    for g in results["gates"]:
        ok = g["passed"]
        console.print(f"gate {g['metric']} >= {g['threshold']:g}: {g['value']:.4g} "
                      f"{'[green]passed[/green]' if ok else '[bold red]FAILED[/bold red]'}")
        code = code or (0 if ok else 1)
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return code


def _run_audit(clf, data, cfg, out: Path, data_spec: str) -> int:
    from ..auditor import audit
    from ..progress import rich_progress
    with rich_progress(console) as progress:
        results = audit(clf, data, cfg, out, data_spec=data_spec, progress=progress, console=console)
    return print_summary(results, out)


# ---------------------------------------------------------------- commands
@app.command()
@user_errors
def demo(out: OutOpt = Path("trustvision-demo"), n: Annotated[int, typer.Option("--n", help="test images to audit")] = 200,
         device: DeviceOpt = "cpu", seed: SeedOpt = 0,
         fail_under: Annotated[Optional[list[str]], typer.Option("--fail-under", help="METRIC=VALUE gate")] = None):
    """Train (or reuse) a small CNN on the bundled MNIST digits, audit it, write results.json + report.html."""
    from ..auditor import AuditConfig
    from ..evaluation import RobustnessConfig
    from ..models.classifier import Classifier
    from ..progress import rich_progress
    from ..training.cache import mnist_demo_model
    with rich_progress(console) as progress:
        bar = {}
        def tick(done, total):  # noqa: E306
            if "t" not in bar:
                bar["t"] = progress.task("training the demo CNN on MNIST", total)
            bar["t"](1)
        module, _, test, path, cached = mnist_demo_model(seed=seed, progress=tick)
    console.print(f"demo model: {'reused' if cached else 'trained and cached'} {path}")
    clf = Classifier(module, num_classes=10, channels=1, labels=[str(i) for i in range(10)], device=device,
                     name="mnist-smallcnn (demo)")
    rob = RobustnessConfig(eps_linf=[0, 0.05, 0.1, 0.15, 0.2, 0.3], eps_l2=[0, 0.5, 1.0, 1.5, 2.0, 3.0],
                           attack_options={"pgd": {"steps": 40}, "pgd-l2": {"steps": 40},   # Madry et al.'s MNIST setting
                                           "cw": {"binary_search_steps": 5, "steps": 100, "lr": 0.05}}, seed=seed)
    cfg = AuditConfig(n_images=n, seed=seed, robustness=rob, gates=list(fail_under or []))
    raise typer.Exit(_run_audit(clf, test, cfg, out, "mnist (bundled, held-out 20 % split)"))


@app.command("audit")
@user_errors
def audit_cmd(model: ModelOpt, data: DataOpt, out: OutOpt = Path("trustvision-out"),
              config: Annotated[Optional[Path], typer.Option(help="audit.toml")] = None,
              weights: WeightsOpt = None, arch: ArchOpt = None, num_classes: ClassesOpt = None,
              channels: ChannelsOpt = None, input_size: SizeOpt = None, mean: MeanOpt = None, std: StdOpt = None,
              labels: LabelsOpt = None, trust_pickle: PickleOpt = False, device: DeviceOpt = "cpu",
              precision: PrecisionOpt = "fp32", channels_last: CLOpt = False, compile: CompileOpt = False,
              batch_size: BatchOpt = 128, n: Annotated[Optional[int], typer.Option("--n", help="images to audit")] = None,
              seed: SeedOpt = 0,
              attacks: Annotated[Optional[str], typer.Option(help="comma list: fgsm,pgd,pgd-l2,cw,deepfool,...")] = None,
              eps_linf: Annotated[Optional[str], typer.Option(help="L-inf budgets, e.g. 0,2/255,4/255,8/255")] = None,
              eps_l2: Annotated[Optional[str], typer.Option(help="L2 budgets, e.g. 0,0.25,0.5,1")] = None,
              defense: Annotated[Optional[str], typer.Option(
                  help="audit the model behind an input transformation: jpeg:75 | bitdepth:3 | median:3 | "
                       "resize-pad:0.8 (adaptive BPDA/EOT evaluation is automatic)")] = None,
              fail_under: Annotated[Optional[list[str]], typer.Option("--fail-under", help="METRIC=VALUE gate")] = None,
              no_resume: Annotated[bool, typer.Option("--no-resume", help="recompute finished sections")] = False):
    """Audit your model on your data: clean accuracy, robustness curves, soundness flags, report."""
    from ..auditor import AuditConfig
    from ..data import load_dataset
    clf = _load(model, weights, arch, num_classes, channels, input_size, mean, std, labels, trust_pickle, device,
                precision, channels_last, compile)
    if defense:
        from ..defenses.transforms import defend
        clf = defend(clf, defense)
    ds = load_dataset(data, size=clf.input_size)
    cfg = AuditConfig.from_toml(config) if config else AuditConfig()
    cfg.batch_size, cfg.seed, cfg.resume = batch_size, seed, not no_resume
    cfg.n_images = n if n is not None else cfg.n_images
    cfg.gates = list(fail_under or cfg.gates)
    rob = cfg.robustness
    rob.seed = seed
    if attacks:
        rob.attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    rob.eps_linf = _floats(eps_linf, "--eps-linf") or rob.eps_linf
    rob.eps_l2 = _floats(eps_l2, "--eps-l2") or rob.eps_l2
    rob.__post_init__()
    raise typer.Exit(_run_audit(clf, ds, cfg, out, data))


@app.command()
@user_errors
def attack(name: Annotated[str, typer.Argument(help="fgsm | pgd | cw | deepfool")], model: ModelOpt, data: DataOpt,
           out: OutOpt = Path("trustvision-attack"),
           eps: Annotated[Optional[float], typer.Option(help="budget (fgsm/pgd)")] = None,
           norm: Annotated[Optional[str], typer.Option(help="linf | l2")] = None,
           steps: Annotated[Optional[int], typer.Option(help="iterations")] = None,
           target: Annotated[Optional[int], typer.Option(help="target class (targeted attack)")] = None,
           weights: WeightsOpt = None, arch: ArchOpt = None, num_classes: ClassesOpt = None,
           channels: ChannelsOpt = None, input_size: SizeOpt = None, mean: MeanOpt = None, std: StdOpt = None,
           labels: LabelsOpt = None, trust_pickle: PickleOpt = False, device: DeviceOpt = "cpu",
           precision: PrecisionOpt = "fp32", channels_last: CLOpt = False, compile: CompileOpt = False,
           batch_size: BatchOpt = 128, n: Annotated[int, typer.Option("--n", help="images to attack")] = 64,
           seed: SeedOpt = 0):
    """Run one attack; save adversarial examples (.npz) and a PNG grid (original | adversarial | perturbation)."""
    from .attack_run import run_single_attack
    clf = _load(model, weights, arch, num_classes, channels, input_size, mean, std, labels, trust_pickle, device,
                precision, channels_last, compile)
    opts = {k: v for k, v in {"eps": eps, "norm": norm, "steps": steps, "seed": seed}.items() if v is not None}
    from ..data import load_dataset
    ds = load_dataset(data, size=clf.input_size).conform(clf.channels, clf.num_classes).sample(n, seed)
    summary = run_single_attack(name, opts, clf, ds, out, target=target, batch_size=batch_size, console=console)
    console.print(summary)


def main() -> None:  # pragma: no cover
    sys.exit(app())


from .commands import explain as cli_explain  # noqa: E402,F401  (registers the ``explain`` command on ``app``)
from .commands import certify as cli_certify  # noqa: E402,F401  (registers the ``certify`` command on ``app``)
from .commands import uap as cli_uap  # noqa: E402,F401  (registers the ``uap`` command on ``app``)
from .commands import train as cli_train  # noqa: E402,F401  (registers the ``train`` command on ``app``)
from .commands import zeroshot as cli_zeroshot  # noqa: E402,F401  (registers the ``zeroshot`` command on ``app``)
