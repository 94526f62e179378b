"""Shared plumbing for the benchmarks: device description, load average, result files."""
from __future__ import annotations

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
