"""Shared plumbing for the benchmarks: device description, load average, result files."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from lscpu."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """1-minute load average when the run starts (shared machines make CPU timings noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def write_results(out: Path, kind: str, meta: dict, device: torch.device, markdown: str, results: list) -> Path:
    """Write ``OUT/<kind>-<date>-<device>.md`` (``markdown``) and ``.json`` (meta + results); returns the stem."""
    slug = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", meta["device_name"].lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{kind}-{meta['date']}-{slug}"
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nwrote {stem}.md and .json")
    return stem


def add_classifier_options(p: argparse.ArgumentParser) -> None:
    """The options every attack bench shares: device, Classifier options, threads, output folder."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="Classifier(precision='bf16')")
    p.add_argument("--channels-last", action="store_true", help="Classifier(channels_last=True)")
    p.add_argument("--compile", action="store_true", help="Classifier(compile=True)")
    p.add_argument("--models", default="mnist", help="comma list: mnist,resnet18")
    p.add_argument("--n", type=int, default=32, help="images per run")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--out``, added after a bench's own options."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")


def demo_classifier(device: torch.device):
    """``(clf, train, test)``: the demo's cached MNIST CNN as a Classifier on ``device`` and its data split."""
    from trustvision.models.classifier import Classifier
    from trustvision.training import mnist_demo_model
    module, train, test, _, _ = mnist_demo_model()
    return Classifier(module, num_classes=10, channels=1, device=device, name="mnist-smallcnn"), train, test


def setup(args: argparse.Namespace, script: str, **extra) -> tuple[torch.device, dict, dict]:
    """Apply ``--threads``; return (device, Classifier options, meta with the exact command line)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    opts = {"precision": "bf16" if args.bf16 else "fp32", "channels_last": args.channels_last, "compile": args.compile}
    command = f"python bench/{script} " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k != "out" and v not in (None, False)).replace(" True", "")
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": load_average(),
            "n": args.n, **extra, **opts, "command": command}
    return device, opts, meta


def with_result(attack, clf, xs, ys):
    """Run a trustvision attack for ``timed_run``: returns (x_adv, AttackResult)."""
    res = attack(clf, xs, ys)
    return res.x_adv, res


def versus(label: str, ours: dict, peer: dict, peer_name: str = "torchattacks") -> str:
    """Set ``peer["ratio_peer_over_ours"]`` (seconds per image) and return the printed comparison line."""
    peer["ratio_peer_over_ours"] = peer["sec_per_image"] / ours["sec_per_image"]
    return (f"  {label} ours {ours['sec_per_image'] * 1e3:8.1f} ms/img robust {ours['robust_accuracy']:.3f} | "
            f"{peer_name} {peer['sec_per_image'] * 1e3:8.1f} ms/img robust {peer['robust_accuracy']:.3f} | "
            f"ratio {peer['ratio_peer_over_ours']:.2f}")

