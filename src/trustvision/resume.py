"""Resume that cannot serve stale or edited numbers: stamped files, the unit store, the output folder's upkeep.

Every file the audit resumes from (``OUT/sections/NAME.json``, ``OUT/sections/robustness/UNIT.json``) is
*stamped*: ``{"fingerprint": F, "digest": D, "payload": ...}`` where ``F`` is the :func:`~.persist.digest` of
everything that can change the numbers (model weights and code, data, configuration, trustvision, torch,
device; see :func:`trustvision.auditor.audit`) and ``D`` the digest of the payload's canonical JSON (the
:func:`~.results.clean_json` form that is written).  :func:`read_stamped` accepts a file only when both match;
an edited file (digest mismatch) or an unreadable one (truncated, ``[]``, ``null``, random bytes, wrong
layout) is reported as a one-line warning and recomputed, never a traceback.  A digest is not a signature:
it catches hand edits and corruption; ``--verify`` (re-running a sample) catches the rest.

:class:`UnitStore` holds the finer resume units of a section (the robustness section's attack runs):
``load(key, spec)`` / ``save(key, spec, payload)``.  :func:`prepare_output` readies the output folder
before any compute: stale temporary files of :func:`~.persist.atomic_write` are removed, a directory where a
file belongs is removed when empty and otherwise refused with a one-line error.  Documented in
``docs/resume.md``.
"""
from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .errors import TrustVisionError
from .persist import digest, write_json_atomic
from .results import clean_json
from .scale.dist import current

Warn = Callable[[str], None]
LOCK_NAME = ".trustvision-audit.lock"


# ------------------------------------------------------------------ stamped files
def payload_digest(payload: Any) -> str:
    """:func:`~.persist.digest` of ``payload``'s canonical JSON form (what :func:`write_stamped` writes)."""
    return digest(clean_json(payload))


def write_stamped(path: Path, fingerprint: str, payload: Any) -> Path:
    """Write ``{"fingerprint", "digest", "payload"}`` to ``path`` atomically."""
    payload = clean_json(payload)
    return write_json_atomic(path, {"fingerprint": fingerprint, "digest": payload_digest(payload),
                                    "payload": payload})


def read_stamped(path: Path, fingerprint: str) -> tuple[Any, str | None]:
    """``(payload, None)`` when ``path`` holds a stamped file with this fingerprint and an intact digest.

    Otherwise ``(None, why)``: ``why`` is None when there is nothing to resume (no file, or a file made
    for other inputs: a normal recompute) and a short reason when the file is unreadable or was edited.
    """
    if not path.exists():
        return None, None
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:              # truncated, random bytes, not UTF-8, unreadable
        return None, f"is unreadable ({type(e).__name__})"
    if not (isinstance(saved, dict) and isinstance(saved.get("fingerprint"), str) and "payload" in saved):
        return None, "does not have the layout of a trustvision resume file"
    if saved["fingerprint"] != fingerprint:
        return None, None                            # other inputs: recompute quietly
    if saved.get("digest") != payload_digest(saved["payload"]):
        return None, "was edited after it was written (its content digest does not match)"
    return saved["payload"], None


def read_shared(path: Path, fingerprint: str) -> tuple[Any, str | None]:
    """:func:`read_stamped` on rank 0, broadcast to every rank under torchrun (the same answer everywhere).

    Only rank 0 reads the output folder, so ranks on other nodes need no shared file system and all
    ranks skip (or recompute) the same sections and units.
    """
    d = current()
    found = read_stamped(path, fingerprint) if d.main else (None, None)
    return d.broadcast(found) if d.active else found


# ------------------------------------------------------------------ unit store
class UnitStore:
    """Fingerprinted JSON units in ``folder`` (``folder / f"{key}.json"``), for resuming inside a section.

    ``base`` is the enclosing fingerprint (model, data, versions, top-level config); each unit's
    fingerprint adds its ``key`` and ``spec`` (the JSON-able description of what the unit computes).
    ``warn`` receives one line per discarded (edited or unreadable) file; ``resumed`` lists loaded keys.
    ``reuse=False`` (``--no-resume``): nothing is loaded, units are still saved.
    Under torchrun rank 0 reads (and broadcasts what it read) and writes; the other ranks only compute.
    """

    def __init__(self, folder: Path, base: str, warn: Warn | None = None, *, reuse: bool = True) -> None:
        self.folder, self.base, self.reuse = Path(folder), base, reuse
        self._say: Warn = warn or (lambda msg: None)
        self.resumed: list[str] = []
        self.discarded: list[str] = []

    def warn(self, message: str) -> None:
        """Say ``message`` (one line) and keep it in :attr:`discarded` (the section records it as a flag)."""
        self.discarded.append(message)
        self._say(message)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def fingerprint(self, key: str, spec: Any) -> str:
        return digest(self.base, key, clean_json(spec))

    def load(self, key: str, spec: Any) -> Any:
        """The payload saved for ``key`` with this ``spec``, or None (missing, other inputs, edited, unreadable)."""
        if not self.reuse:
            return None
        payload, why = read_shared(self.path(key), self.fingerprint(key, spec))
        if why:
            self.warn(f"resume unit {self.path(key)} {why}; recomputing it")
        if payload is not None:
            self.resumed.append(key)
        return payload

    def save(self, key: str, spec: Any, payload: Any) -> None:
        """Persist ``payload`` for ``key`` (atomically, as soon as the unit finished; rank 0 only under torchrun)."""
        if current().main:
            write_stamped(self.path(key), self.fingerprint(key, spec), payload)


# ------------------------------------------------------------------ tensors in JSON
def encode_tensor(t: Tensor) -> dict[str, Any]:
    """A CPU tensor as ``{"dtype", "shape", "data": base64 of its bytes}`` (exact, compact)."""
    a = t.detach().cpu().contiguous().numpy()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_tensor(d: dict[str, Any]) -> Tensor:
    """Inverse of :func:`encode_tensor`; a malformed entry raises ``ValueError``."""
    try:
        a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed tensor entry ({e})") from None
    return torch.from_numpy(a.copy())


# ------------------------------------------------------------------ the output folder
def _free_path(path: Path, warn: Warn, *, want_dir: bool = False) -> None:
    """Make ``path`` usable: a directory where a file belongs (or a file where a folder belongs) is removed.

    A non-empty directory is never deleted: a one-line :class:`TrustVisionError` names it.
    """
    if want_dir and path.exists() and not path.is_dir():
        warn(f"{path} should be a folder but is a file; removing it")
        path.unlink()
    elif not want_dir and path.is_dir():
        try:
            path.rmdir()
        except OSError:
            raise TrustVisionError(f"{path}: a directory is in the place of a result file and cannot be "
                                   f"removed (not empty?); remove it or choose another --out") from None
        warn(f"{path} was a directory in the place of a result file; removed it")


def remove_temporaries(folders: list[Path]) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that :func:`~.persist.atomic_write` leaves after a kill."""
    gone = []
    for folder in folders:
        for p in folder.glob(".*.tmp") if folder.is_dir() else []:
            if p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def prepare_output(out: Path, sections: list[str], unit_folders: list[str], warn: Warn) -> None:
    """Ready ``out`` before any compute: folders made, paths freed, stale temporary files removed.

    Args:
        out: the output folder.  sections: the section names (``out/sections/NAME.json``).
        unit_folders: section names whose units live in ``out/sections/NAME/``.
    """
    if out.exists() and not out.is_dir():
        raise TrustVisionError(f"--out {out}: is a file, not a folder")
    sec = out / "sections"
    _free_path(sec, warn, want_dir=True)
    for name in unit_folders:
        _free_path(sec / name, warn, want_dir=True)
        (sec / name).mkdir(parents=True, exist_ok=True)
    sec.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "report.html", *(sec / f"{n}.json" for n in sections)]
    paths += [p for n in unit_folders for p in (sec / n).glob("*.json")]
    for p in paths:
        _free_path(p, warn)
    removed = remove_temporaries([out, sec, *(sec / n for n in unit_folders)])
    if removed:
        warn(f"removed {len(removed)} temporary file(s) left by an interrupted run in {out}")


@contextlib.contextmanager
def output_lock(out: Path, warn: Warn) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for a whole audit: two audits never write one folder at once.

    The second waits (after saying so); its temporary-file cleanup therefore never races a live writer.
    """
    try:
        import fcntl
    except ImportError:                                   # pragma: no cover  (Windows)
        yield
        return
    with open(out / LOCK_NAME, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            warn(f"another audit is writing into {out}; waiting for it to finish")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def environment() -> dict[str, str]:
    """The software that computes the numbers: trustvision's and torch's versions (part of every fingerprint)."""
    from . import __version__
    return {"trustvision": __version__, "torch": torch.__version__}
