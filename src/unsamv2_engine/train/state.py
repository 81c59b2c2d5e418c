"""Fine-tuning state on disk and in the RNGs: atomic checkpoint writes, RNG states, resume checks.

A checkpoint (``checkpoints/step_<N>.pt``, ``checkpoints/last.pt``) holds the trainable tensors, the
optimizer, the schedule, the step, the RNG states, the config and the data split; it is written to a
temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsamv2_engine.errors import InputError
from unsamv2_engine.model.build import UnSAMv2Model
from unsamv2_engine.train.config import RUN_FIELDS, FinetuneConfig
from unsamv2_engine.train.dataset import PseudoLabelDataset

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "atomic_torch_save", "load_resume_state", "rng_states",
           "seeded_rng", "set_rng_states"]

CHECKPOINT_FORMAT = "unsamv2-finetune-checkpoint"
CHECKPOINT_VERSION = 1


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG (dropout) seeded to ``seed``, restoring it afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        yield


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary name, then rename: ``path`` is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def rng_states() -> dict[str, Any]:
    """The torch, Python, numpy (and CUDA) RNG states, as tensors and lists ``torch.load`` accepts."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": [py_version, list(py_state), py_gauss],
              "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                        int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_states` (CUDA only on the same number of devices)."""
    torch.set_rng_state(states["torch"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_resume_state(path: Path, config: FinetuneConfig, model: UnSAMv2Model,
                       dataset: PseudoLabelDataset) -> dict[str, Any]:
    """Read ``last.pt`` and check it belongs to this run (same recipe, same base model, same data)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a fine-tuning checkpoint of this engine")
    saved = FinetuneConfig.from_dict(state["config"])
    differ = [f"{name}: checkpoint {getattr(saved, name)!r}, now {getattr(config, name)!r}"
              for name in RUN_FIELDS if getattr(saved, name) != getattr(config, name)]
    if differ:
        raise InputError(f"cannot resume from {path}: the run used other settings ({'; '.join(differ)}); "
                         "resume with the same options, or start a new run in another work folder")
    base = state.get("base", {})
    if base.get("sha256") and model.info.base_sha256 and base["sha256"] != model.info.base_sha256:
        raise InputError(f"cannot resume from {path}: it was trained from base {base.get('source')} "
                         f"(sha256 {base['sha256'][:12]}...), not {model.info.source}")
    if base.get("size") and base["size"] != model.info.size:
        raise InputError(f"cannot resume from {path}: it holds a {base['size']} model, this one is {model.info.size}")
    names = set(state["split"]["train"]) | set(state["split"]["val"])
    if names != set(dataset.names):
        raise InputError(f"cannot resume from {path}: the images changed since it was saved ({len(names)} then, "
                         f"{len(dataset)} now); resume with the same --images and --pseudo-labels")
    return state
