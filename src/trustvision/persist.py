"""One way to persist: one digest, one atomic writer, one fingerprinted on-disk cache.

* :func:`digest` — SHA-256 (hex, truncated to ``length``) of JSON-able parts, bytes, arrays or tensors;
  every fingerprint in trustvision (resume of sections, UAP passes, zero-shot models, trained-model
  cache, training configs) is made with it.
* :func:`atomic_write` / :func:`write_json_atomic` / :func:`write_text_atomic` — write to a unique
  temporary file in the target's folder, then :func:`os.replace` it over the target: readers see the
  old file or the new one, never half a file, and concurrent writers (two CI jobs, torchrun ranks)
  never share a temporary name.  The temporary file is removed if writing fails or is interrupted.
* :func:`file_lock` — an exclusive advisory lock (``fcntl.flock``) held while a cache entry is built,
  so that several processes asking for the same key build it once: the first builds and writes,
  the others wait and then load the winner's file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

DIGEST_LENGTH = 20


def _as_bytes(part: Any) -> bytes:
    if isinstance(part, (bytes, bytearray, memoryview)):
        return bytes(part)
    if hasattr(part, "detach") and hasattr(part, "cpu"):           # torch tensor
        part = part.detach().cpu().contiguous().numpy()
    if hasattr(part, "tobytes") and hasattr(part, "dtype"):       # numpy array
        import numpy as np
        return np.ascontiguousarray(part).tobytes()
    return json.dumps(part, sort_keys=True, default=str).encode()


def digest(*parts: Any, length: int = DIGEST_LENGTH) -> str:
    """Hex SHA-256 of ``parts`` (each JSON-able, bytes, a NumPy array or a tensor), first ``length`` digits.

    Parts are length-prefixed, so ``digest("ab", "c") != digest("a", "bc")``.
    """
    h = hashlib.sha256()
    for p in parts:
        b = _as_bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:length]


def atomic_write(path: str | Path, write: Callable[[Path], None], *, mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)`` on a unique temporary file beside ``path``, then move it over ``path``.

    ``mode`` sets the permissions of the result (``mkstemp`` would leave 0600).  Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write strict JSON (NaN/Inf -> null, tensors -> lists; see :func:`~trustvision.results.clean_json`)."""
    from .results import clean_json
    return write_text_atomic(path, json.dumps(clean_json(data), indent=2, allow_nan=False))


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the duration of the block.

    Uses ``fcntl.flock`` (POSIX); where it is unavailable the block runs unlocked, and the atomic
    writer still guarantees that readers never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                                   # pragma: no cover  (Windows)
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached_file(path: str | Path, build: Callable[[Path], None], load: Callable[[Path], Any]) -> tuple[Any, bool]:
    """Load ``path`` with ``load``; if it is missing or unreadable, ``build(tmp)`` it once across processes.

    Several processes asking for the same ``path`` at once: one builds (under :func:`file_lock` on a
    lock file in a ``.locks`` folder beside it) and writes atomically; the others wait for the lock
    and load the winner's file.  Returns ``(load(path), came_from_cache)``.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError, ValueError, OSError, RuntimeError):
        if path.exists():
            return load(path), True
    with file_lock(path.parent / ".locks" / (path.name + ".lock")):
        if path.exists():                                 # another process built it while we waited
            try:
                return load(path), True
            except (ValueError, OSError, RuntimeError):   # corrupt entry: rebuild it
                path.unlink(missing_ok=True)
        atomic_write(path, build)
        return load(path), False
