"""Per-process state of a batch worker: the loaded-model cache, the device, torch threads, captured output.

A batch process (a Dask worker, or the command's own process for ``--workers 1``) is *activated*
with the device its items use. While active, :func:`reuse_model` keeps every model it loads, keyed
by the model settings (checkpoint file and its size and modification time, adapter, device, ...),
so a worker loads its model once and keeps it for every image; at most :data:`CAPACITY` entries
are kept (least recently used dropped). Outside a batch :func:`reuse_model` just loads.

Standard library only at import; torch is imported inside :func:`pick_device` / :func:`set_threads`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

__all__ = ["CAPACITY", "activate", "active", "captured_output", "deactivate", "device_for", "pick_device",
           "reuse", "reuse_model", "set_threads", "stats"]

#: Loaded objects (models, feature backbones) a process keeps at most.
CAPACITY = 4

_lock = threading.RLock()
_cache: OrderedDict[Hashable, Any] = OrderedDict()
_key_locks: dict[Hashable, threading.Lock] = {}
_state: dict[str, Any] = {"active": False, "device": None, "loads": 0, "threads": None}


# ============================================================================ activation
def activate(device: str | None = None, threads: int | None = None) -> None:
    """Start keeping loaded models in this process (the load count restarts); ``device``: what ``--device auto``
    means here.
    """
    with _lock:
        _state.update(active=True, device=device, threads=threads, loads=0)


def deactivate() -> None:
    """Stop keeping models and drop the ones kept (their memory is freed when nothing else holds them)."""
    with _lock:
        _state.update(active=False, device=None, threads=None)
        _cache.clear()
        _key_locks.clear()


def active() -> bool:
    """Whether this process keeps its loaded models (a batch worker)."""
    return bool(_state["active"])


def stats() -> dict[str, Any]:
    """``{"loads": models/backbones loaded since activation, "cached": how many are kept, "device", "threads",
    "pid"}`` (the tests check that a worker loads its model once).
    """
    with _lock:
        return {"loads": int(_state["loads"]), "cached": len(_cache), "device": _state["device"],
                "threads": _state["threads"], "pid": os.getpid()}


def device_for(requested: str | None) -> str:
    """The device an item uses: the worker's own for ``auto`` or a bare ``cuda`` (``cuda:<local rank>``
    on a GPU node), else the one asked for (``cpu``, ``mps``, ``cuda:N``).
    """
    name = (requested or "auto").strip().lower()
    if _state["active"] and _state["device"] and (name == "auto" or (name == "cuda" and
                                                                      _state["device"].startswith("cuda"))):
        return str(_state["device"])
    return name


# ============================================================================ devices, threads
def local_rank(worker_name: Any) -> int:
    """A worker's index on its node, from its name: LocalCluster names workers 0..N-1, ``dask worker
    --nworkers K`` and dask-jobqueue end names in ``-<index>``; anything else is rank 0.
    """
    if isinstance(worker_name, int):
        return worker_name
    match = re.search(r"(\d+)$", str(worker_name))
    return int(match.group(1)) if match else 0


def pick_device(rank: int, requested: str = "auto") -> str:
    """``cuda:<rank mod GPUs>`` where CUDA exists, else ``mps`` (Apple), else ``cpu``; ``requested`` other than
    ``auto`` / ``cuda`` is kept.
    """
    if requested not in ("auto", "cuda"):
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(rank) % torch.cuda.device_count()}"
    if requested == "cuda":
        return "cuda"  # loading reports that CUDA is not available, with the engine's message
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Limit torch's intra-op threads to ``n`` (None: leave as is); returns the number in use."""
    import torch

    if n:
        torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


# ============================================================================ cache
def reuse(key: Hashable, load: Callable[[], Any]) -> Any:
    """``load()`` once per ``key`` while this process is active (else every time)."""
    if not _state["active"]:
        return load()
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:  # two threads of one worker asking for the same model load it once
        with _lock:
            if key in _cache:
                return _cache[key]
        value = load()
        with _lock:
            _state["loads"] += 1
            _cache[key] = value
            while len(_cache) > CAPACITY:
                _cache.popitem(last=False)
        return value


def file_identity(path: str | os.PathLike[str] | None) -> tuple[str, int, int] | None:
    """(real path, size, mtime in ns) of a file, None for None: a changed file is a new cache key."""
    if path is None:
        return None
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except OSError:
        return (real, -1, -1)
    return (real, st.st_size, st.st_mtime_ns)


def reuse_model(load: Callable[[], Any], *, path: Any, source: str, device: Any, adapter: Any,
                allow_base_mismatch: bool, merge_lora: bool = True) -> Any:
    """:func:`reuse` keyed by the model settings (checkpoint and adapter files, device, loading options)."""
    key = ("model", file_identity(path), str(source), str(device), file_identity(adapter), bool(allow_base_mismatch),
           bool(merge_lora))
    return reuse(key, load)


# ============================================================================ output capture
class _ThreadRouter(io.TextIOBase):
    """A text stream that writes to the calling thread's buffer when it has one, else to ``fallback``."""

    def __init__(self, fallback: Any) -> None:
        super().__init__()
        self.fallback = fallback
        self.local = threading.local()

    def write(self, text: str) -> int:
        target = getattr(self.local, "buffer", None)
        return (target if target is not None else self.fallback).write(text)

    def flush(self) -> None:
        if getattr(self.local, "buffer", None) is None:
            self.fallback.flush()

    def isatty(self) -> bool:
        return False if getattr(self.local, "buffer", None) is not None else self.fallback.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


_routers: dict[str, _ThreadRouter] = {}
_router_users = [0]


@contextlib.contextmanager
def captured_output() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Capture what the calling thread prints on stdout and stderr (other threads print as before).

    Items run the single-image commands, which print a summary line and warnings; the batch
    records them in the manifest instead of interleaving them on the terminal.
    """
    out, err = io.StringIO(), io.StringIO()
    with _lock:
        if _router_users[0] == 0:
            for name in ("stdout", "stderr"):
                _routers[name] = _ThreadRouter(getattr(sys, name))
                setattr(sys, name, _routers[name])
        _router_users[0] += 1
    _routers["stdout"].local.buffer, _routers["stderr"].local.buffer = out, err
    try:
        yield out, err
    finally:
        _routers["stdout"].local.buffer = _routers["stderr"].local.buffer = None
        with _lock:
            _router_users[0] -= 1
            if _router_users[0] == 0:
                for name, router in _routers.items():
                    if getattr(sys, name) is router:
                        setattr(sys, name, router.fallback)
                _routers.clear()
