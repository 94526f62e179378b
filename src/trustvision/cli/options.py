"""Options shared by the commands, declared once: the model-loading group (:class:`ModelArgs`), the data
(:class:`DataArgs`), the common flags (``--out``, ``--seed``, ``--batch-size``...) and their parsers.

:func:`checked` (applied when a command is registered) validates what every command shares before any
work: ``--out`` must not be an existing file, and counts (``--n``, ``--batch-size``...) must be >= 1.
The consent flags ``--trust-code`` / ``--trust-pickle`` exist only here, on the command line: no config
file key can grant them.

Typer reads options from a command's signature.  A command takes the 14 model-loading options as ONE
parameter annotated :class:`ModelArgs`; :func:`option_groups` (applied when the command is registered)
expands it into the group's fields for Typer and rebuilds the :class:`ModelArgs` when the command runs::

    def audit(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-out"), ...):
        classifier = model.load()
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Optional, get_type_hints

import typer

from ..errors import TrustVisionError
from ..data.images import MAX_PIXELS
from ..parsing import parse_numbers

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import Classifier

# ---------------------------------------------------------------- option types (flag names, help, once)
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="torchvision:NAME | timm:NAME | trustvision:NAME | "
                                       "file.safetensors/.pt/.pth (+--arch) | file.ts | file.onnx | module.py:factory "
                                       "(runs that file: needs --trust-code)")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="class folder | file.npz (x, y) | mnist | digits")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="refuse images with more pixels than this")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="state-dict file for an architecture spec")]
ArchOpt = Annotated[Optional[str], typer.Option(help="architecture for a state-dict file, e.g. torchvision:resnet18 "
                                                  "(module.py:factory runs that file: needs --trust-code)")]
ClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="number of classes (inferred if omitted)")]
ChannelsOpt = Annotated[Optional[int], typer.Option(help="input channels the model takes (default 3, or inferred)")]
SizeOpt = Annotated[Optional[str], typer.Option("--input-size", help="model input size HxW, e.g. 224x224")]
MeanOpt = Annotated[Optional[str], typer.Option(help="per-channel mean, e.g. 0.485,0.456,0.406")]
StdOpt = Annotated[Optional[str], typer.Option(help="per-channel std, e.g. 0.229,0.224,0.225")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="class names: comma list or a text file, one per line")]
PickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="allow loading a pickled full model (runs code!)")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="allow running a module.py:factory spec "
                                            "(runs that file!)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda | cuda:1 | mps")]
PrecisionOpt = Annotated[str, typer.Option(help="fp32 | bf16 (autocast)")]
CLOpt = Annotated[bool, typer.Option("--channels-last", help="channels-last memory format")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="images per device batch")]
SeedOpt = Annotated[int, typer.Option(help="seed for sampling and random starts")]
# options that override a config file only when given (None: the file's value, else the dataclass default)
MaybeBatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="images per device batch "
                                                      "(default: the config's, else 128)")]
MaybeSeedOpt = Annotated[Optional[int], typer.Option(help="seed for sampling and random starts "
                                                     "(default: the config's, else 0)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
FailUnderOpt = Annotated[Optional[list[str]], typer.Option("--fail-under", help="METRIC=VALUE gate")]
NoResumeOpt = Annotated[bool, typer.Option("--no-resume", help="recompute finished sections")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-images", help="skip unreadable image files of a folder "
                                          "(counted in results.json and the report) instead of aborting")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress and no notes: only the headline")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the headline and summary as JSON on stdout, "
                                       "nothing else (progress and notes go to stderr)")]
SummaryMdOpt = Annotated[Optional[Path], typer.Option("--summary-md", help="also write a short Markdown summary "
                                                      "(verdict, gates, worst case, flags) for a CI comment")]
FailOnOpt = Annotated[Optional[str], typer.Option("--fail-on", help="lowest soundness-flag severity that fails "
                                                  "the run with exit 1: error (default) | warning | none")]

# integer options that must be >= 1 when given, checked by :func:`checked` with the flag named
AT_LEAST_ONE = ("n", "n0", "n_source", "images", "batch_size", "max_passes", "attack_images")


# ---------------------------------------------------------------- parsers
def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"224x224"`` -> (224, 224), ``"32"`` -> (32, 32); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise TrustVisionError(f"--input-size: expected HxW like 224x224, got {text!r}") from None


def parse_labels(text: str | None) -> list[str] | None:
    """Class names from a text file (one per line) or a comma list; ``None`` stays ``None``."""
    if text is None:
        return None
    p = Path(text)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [t.strip() for t in text.split(",")]


# ---------------------------------------------------------------- option groups
@dataclass(frozen=True)
class ModelArgs:
    """How to load the model under test: the ``--model`` ... ``--compile`` options of every command that loads one."""

    option_group: ClassVar[bool] = True

    model: ModelOpt
    weights: WeightsOpt = None
    arch: ArchOpt = None
    num_classes: ClassesOpt = None
    channels: ChannelsOpt = None
    input_size: SizeOpt = None
    mean: MeanOpt = None
    std: StdOpt = None
    labels: LabelsOpt = None
    trust_pickle: PickleOpt = False
    trust_code: TrustCodeOpt = False
    device: DeviceOpt = "cpu"
    precision: PrecisionOpt = "fp32"
    channels_last: CLOpt = False
    compile: CompileOpt = False

    def load(self) -> "Classifier":
        """The model as a :class:`~trustvision.models.Classifier` (takes (N, C, H, W) pixels in [0, 1])."""
        from .. import load_model
        return load_model(self.model, weights=self.weights, arch=self.arch, num_classes=self.num_classes,
                          channels=self.channels, input_size=parse_size(self.input_size),
                          mean=parse_numbers(self.mean, "--mean"), std=parse_numbers(self.std, "--std"),
                          labels=parse_labels(self.labels), trust_pickle=self.trust_pickle,
                          trust_code=self.trust_code, device=self.device,
                          precision=self.precision, channels_last=self.channels_last, compile=self.compile)


@dataclass(frozen=True)
class OutputArgs:
    """How a command that writes results.json talks: ``--quiet``, ``--json``, ``--summary-md FILE`` and the
    verdict policy ``--fail-on`` (None: the config's, else ``error``)."""

    option_group: ClassVar[bool] = True

    quiet: QuietOpt = False
    json_out: JsonOpt = False
    summary_md: SummaryMdOpt = None
    fail_on: FailOnOpt = None

    def __post_init__(self) -> None:
        if self.fail_on is not None:
            from ..headline import check_fail_on
            check_fail_on(self.fail_on)


@dataclass(frozen=True)
class DataArgs:
    """The images a command evaluates: a data spec (``--data``/``--eval``), optionally a seeded sample of ``n``;
    images above ``max_pixels`` pixels (``--max-pixels``) are refused (or skipped with ``skip_bad``).

    ``workers``: DataLoader worker processes decoding a folder's sampled files (``--workers``; None: the
    value given to the running command, else 0)."""

    spec: str
    n: int | None = None
    seed: int = 0
    max_pixels: int | None = MAX_PIXELS
    skip_bad: bool = False
    workers: int | None = None

    def load(self, classifier: "Classifier") -> "Dataset":
        """Images (N, C, H, W) in [0, 1] fitted to ``classifier`` (size, channels, classes); ``n`` of them if set.

        A folder is listed lazily and only the ``n`` sampled files (seeded by ``seed``) are decoded, in
        ``workers`` processes, into pinned memory for a CUDA model (``docs/data.md``).  ``skip_bad``
        (``--skip-bad-images``): unreadable files are skipped, listed in ``info["skipped"]`` and replaced
        by the next files of the same seeded draw, instead of aborting."""
        from ..data import load_dataset
        data = load_dataset(self.spec, size=classifier.input_size, max_pixels=self.max_pixels,
                            skip_bad=self.skip_bad, lazy=True,
                            workers=_WORKERS[0] if self.workers is None else self.workers,
                            pin_memory=classifier.device.type == "cuda")
        return data.conform(classifier.channels, classifier.num_classes).sample(self.n, self.seed)


def option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expand each parameter annotated with an option group (e.g. :class:`ModelArgs`) into the group's fields.

    Typer sees one option per field, in place of the group parameter; when the command runs, the fields
    are gathered back into the group object.  All parameters become keyword-only (Typer passes keywords).
    """
    hints = get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for p in inspect.signature(command).parameters.values():
        group = hints.get(p.name)
        if not getattr(group, "option_group", False):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)))
            continue
        groups[p.name] = group
        field_hints = get_type_hints(group, include_extras=True)
        for f in dataclasses.fields(group):
            default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=field_hints[f.name]))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: an option group field repeats a parameter name")

    @wraps(command)
    def run(**kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return command(**kwargs)

    run.__signature__ = inspect.Signature(params)              # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def check_out(out: Path | None) -> None:
    """Refuse an ``--out`` that is (or lies inside) an existing file, before any work is done."""
    if out is None:
        return
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is an existing file" if p == out else f"lies inside {str(p)!r}, an existing file"
                raise TrustVisionError(f"--out {str(out)!r} {what}, not a folder; choose another --out")
            return


def checked(command: Callable[..., Any]) -> Callable[..., Any]:
    """Validate the options every command shares before it runs: ``--out`` (:func:`check_out`) and the
    counts of :data:`AT_LEAST_ONE` (``--n``, ``--batch-size``...), each a one-line error naming its flag."""
    @wraps(command)
    def run(**kwargs: Any) -> Any:
        check_out(kwargs.get("out"))
        for name in AT_LEAST_ONE:
            value = kwargs.get(name)
            if isinstance(value, int) and value < 1:
                raise TrustVisionError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        return command(**kwargs)
    return run


# ---------------------------------------------------------------- --threads (issue 19): every command, set before work
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: "
                                                   "$TRUSTVISION_THREADS, else the idle physical cores)")]
_expand_groups = option_groups


def option_groups(command: Callable[..., Any]) -> Callable[..., Any]:   # noqa: F811 (adds --threads, --workers)
    """:func:`_expand_groups` plus a ``--threads`` option that calls :func:`trustvision.threads.configure_threads`
    before the command runs (passive OpenMP waiting, fewer threads when the machine is busy), and, for the
    commands that read image data (they take ``--skip-bad-images``), ``--workers`` (:data:`WorkersOpt`)."""
    inner = _expand_groups(command)
    params = list(inspect.signature(inner).parameters.values())
    names = {p.name for p in params}
    if "threads" in names:
        return inner
    params.append(inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ThreadsOpt))
    reads_data = "skip_bad_images" in names and "workers" not in names
    if reads_data:
        params.append(inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=WorkersOpt))

    @wraps(inner)
    def run(**kwargs: Any) -> Any:
        from ..threads import configure_threads
        configure_threads(kwargs.pop("threads", None))
        if reads_data:
            set_workers(kwargs.pop("workers", 0))
        return inner(**kwargs)

    run.__signature__ = inspect.Signature(params)              # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


# ---------------------------------------------------------------- --workers (issue 16): commands that read images
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding image files "
                                         "(0: decode in the main process, best on a few CPU cores)")]
_WORKERS = [0]          # the running command's --workers, read by DataArgs.load when its workers is None


def set_workers(n: int) -> None:
    """Set the ``--workers`` of the running command (>= 0, else a one-line error naming the flag)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TrustVisionError(f"--workers must be an integer >= 0, got {n!r}")
    _WORKERS[0] = n
