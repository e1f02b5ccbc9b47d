"""On-disk cache: where things live and how cached artefacts are keyed.

Every expensive artefact (trained base weights, latency tables, attention gates, layer
statistics) is stored under :func:`cache_dir` in a file named by a hash of everything that
produced it, so a change of weights, data or settings gives a new key and a rebuild. Files
are written atomically (temp file + rename) so an interrupted write never leaves a
half-written artefact; a file that fails to load is treated as a miss and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "cache_dir",
    "data_root",
    "stable_hash",
    "state_dict_hash",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "cached_tensors",
    "cached_json",
    "load_weights_only",
]

log = logging.getLogger(__name__)


def cache_dir(sub: str | None = None) -> Path:
    """Cache folder: ``$PRUNING_ENV_CACHE`` or ``~/.cache/pruning_env`` (created on demand)."""
    root = Path(os.environ.get("PRUNING_ENV_CACHE") or Path.home() / ".cache" / "pruning_env")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Data root: the argument, else ``$PRUNING_ENV_DATA``, else ``<cache>/data``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("PRUNING_ENV_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir("data")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object (keys sorted), hex, ``length`` characters."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def state_dict_hash(model_or_state: torch.nn.Module | dict, length: int = 16) -> str:
    """Hash of a model's parameters and buffers (names, shapes and exact values)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, then renamed: never a half-written ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _announce(what: str | None, path: Path, loaded: bool) -> None:
    """Log (INFO) whether a phase came from the cache or is being computed (``what`` names the phase)."""
    if what:
        if loaded:
            log.info("%s: from the cache (%s)", what, path.name)
        else:
            log.info("%s: computing (once; cached in %s)", what, path.parent)


def cached_tensors(path: Path, build: Callable[[], dict[str, Any]], what: str | None = None) -> dict[str, Any]:
    """Load a dict of tensors/plain values from ``path`` (``weights_only=True``) or build and store it.

    A corrupt or unreadable file is logged, deleted and rebuilt. ``what``: the phase's name, logged at
    INFO level with whether it came from the cache.
    """
    if path.exists():
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            _announce(what, path, loaded=True)
            return value
        except Exception as exc:  # corrupt, truncated or foreign file: rebuild
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, exc)
            path.unlink(missing_ok=True)
    _announce(what, path, loaded=False)
    value = build()
    atomic_torch_save(path, value)
    return value


def cached_json(path: Path, build: Callable[[], Any], what: str | None = None) -> Any:
    """Load JSON from ``path`` or build, store atomically and return it; corrupt files are rebuilt.
    ``what``: as in :func:`cached_tensors`."""
    if path.exists():
        try:
            value = json.loads(path.read_text())
            _announce(what, path, loaded=True)
            return value
        except Exception as exc:
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, exc)
            path.unlink(missing_ok=True)
    _announce(what, path, loaded=False)
    value = build()
    atomic_write_json(path, value)
    return value


def load_weights_only(path: str | os.PathLike, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a failure becomes one clear ``ValueError``.

    ``what`` names the file in the message ("checkpoint", "pruned model file"), ``fix`` says what to do.
    Nothing that needs pickle is loaded: unpickling can run code.
    """
    import re

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # torch's text, no colour codes
        first = (lines[0] if lines else type(exc).__name__)[:160]
        raise ValueError(
            f"could not load {what} {path} with torch.load(weights_only=True): the file is truncated or corrupt, "
            f"or it pickles Python objects, which DataAwarePrune refuses to load because unpickling can run "
            f"code. {fix} (torch: {first})"
        ) from exc
