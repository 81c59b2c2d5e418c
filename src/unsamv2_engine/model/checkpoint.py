"""Checkpoint I/O: official SAM 2.1 files, published UnSAMv2 / UnSAMv2+ files, and our adapter files.

Kinds (see :func:`checkpoint_kind`):

* ``"sam2"`` - ``{"model": state_dict}`` with the upstream SAM 2.1 keys (519 for hiera-small);
  loads as plain SAM 2.1.
* ``"unsamv2"`` - ``{"model": state_dict}`` in the published LoRA-wrapped layout (589 keys for
  hiera-small: ``...q_proj.original_layer.weight``, ``...q_proj.lora_A`` ...). Loaded strictly:
  any missing or unexpected key is an error that names them.
* ``"adapter"`` - our own file: ``{"format": "unsamv2-adapter", "format_version": 1, "state_dict":
  the 70 added tensors, "config": {...}, "base": {"family", "size", "sha256", "source"},
  "metadata": {...}}``. It is applied on top of a ``sam2`` or ``unsamv2`` base and records the
  base's sha256 so that a mismatched base is caught.

The model size is detected from tensor shapes (:func:`unsamv2_engine.model.specs.detect_size`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from unsamv2_engine.model.build import ModelInfo, UnSAMv2Model, build_model, is_added_parameter
from unsamv2_engine.model.lora import DEFAULT_ALPHA, DEFAULT_RANK
from unsamv2_engine.model.specs import detect_size

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "unsamv2-adapter"
ADAPTER_FORMAT_VERSION = 2
#: Version 1: the added tensors only. Version 2 adds ``extra_state_dict``: other tensors of the base
#: that fine-tuning changed (``--trainable decoder|all``), applied on top of the base as well.
_SHOWN_KEYS = 12


from unsamv2_engine.errors import CheckpointError  # noqa: E402 - re-exported: checkpoint.CheckpointError


class AdapterBaseMismatchError(CheckpointError):
    """An adapter applied on a base model other than the one it was trained on."""


# ----------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike, *, role: str = "checkpoint",
                    option: str = "--checkpoint") -> dict[str, Any]:
    """``torch.load`` a checkpoint safely (``weights_only``) with errors that say what is wrong.

    The file is sniffed first (:mod:`unsamv2_engine.sniff`): a text file, a web page, a git-lfs
    pointer, an image, an empty file or a truncated zip is named as such, with what to do, before
    torch sees it. ``role`` ("checkpoint" or "adapter") and ``option`` name the file in messages.
    """
    from unsamv2_engine.sniff import CHECKPOINT_KINDS, not_a_checkpoint, sniff

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{role} not found: {path}" if not path.is_dir() else
                              f"{role} {path} is a folder; give the .pt file ({option} PATH)")
    kind, head = sniff(path)
    cached = _registry_name(path)
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(not_a_checkpoint(path, kind, head, role=role, option=option, registry_name=cached))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, pickle.UnpicklingError, KeyError,
            IndexError, AttributeError, TypeError) as exc:
        size = path.stat().st_size
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            reason = ("it holds Python objects other than tensors, which are not loaded for safety (only files "
                      "of tensors and plain values are)")
        else:
            reason = f"it is truncated or damaged ({type(exc).__name__}: {first})"
        todo = (f"it is the cached file of model '{cached}': delete it and download it again "
                f"(unsamv2 models --download {cached} --force)" if cached else
                f"copy or download it again, or pass another {option}")
        raise CheckpointError(f"cannot read {path} ({size:,} bytes) as a PyTorch {role}: {reason}; {todo}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a {role} dictionary; pass another {option}")
    return obj


def _registry_name(path: Path) -> str | None:
    """The registry model whose cached file ``path`` is, if any."""
    from unsamv2_engine import weights

    for name in weights.REGISTRY:
        try:
            if weights.cached_path(name).resolve() == path.resolve():
                return name
        except OSError:
            continue
    return None


def model_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The flat state dict of a full checkpoint (``obj["model"]``; a bare state dict is accepted too)."""
    state = obj.get("model", obj)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("not a model checkpoint: expected a dict of tensors under the key 'model'")
    return dict(state)


def checkpoint_kind(obj: Mapping[str, Any]) -> str:
    """``"adapter"``, ``"unsamv2"`` (granularity module present) or ``"sam2"`` (plain SAM 2.1)."""
    if obj.get("format") == ADAPTER_FORMAT:
        return "adapter"
    state = model_state(obj)
    return "unsamv2" if any(is_added_parameter(k) for k in state) else "sam2"


def checkpoint_image_size(obj: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> int | None:
    """The model input size a full checkpoint records (``obj["image_size"]``; None: the config's 1024).

    Official SAM 2.1 and UnSAMv2 files record none; the miniature models of
    :mod:`unsamv2_engine.minisam` were trained at a reduced size and must be run at it.
    """
    value = obj.get("image_size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 64 or value % 32:
        raise CheckpointError(f"{path}: 'image_size' must be a multiple of 32 (at least 64), got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------- loading
def _describe_keys(keys: set[str]) -> str:
    shown = sorted(keys)[:_SHOWN_KEYS]
    more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return ", ".join(shown) + more


def load_state_dict_strict(model: UnSAMv2Model, state: Mapping[str, torch.Tensor], *,
                           source: str = "checkpoint") -> None:
    """Load ``state`` into ``model.sam``; every key must match, in name and shape.

    The one tolerated gap is the published files' behaviour when *all* LoRA tensors are absent
    (LoRA then stays the identity, B = 0): that is logged as a warning.
    """
    expected = model.sam.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    lora_missing = {k for k in missing if "lora_" in k}
    all_lora = {k for k in expected if "lora_" in k}
    if lora_missing and lora_missing == all_lora and not (missing - lora_missing):
        log.warning("%s has no LoRA tensors: LoRA stays the identity (B = 0)", source)
        missing = set()
    if missing or unexpected:
        parts = [f"{source} does not match a {model.info.family}-{model.info.size} model."]
        if missing:
            parts.append(f"Missing {len(missing)} keys: {_describe_keys(missing)}.")
        if unexpected:
            parts.append(f"Unexpected {len(unexpected)} keys: {_describe_keys(unexpected)}.")
        parts.append("Is the file complete, and of the kind and size you meant? (unsamv2 info CHECKPOINT describes a "
                     "file.)")
        raise CheckpointError(" ".join(parts))
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if bad_shapes:
        raise CheckpointError(f"{source}: {len(bad_shapes)} tensors have the wrong shape: "
                              + "; ".join(bad_shapes[:_SHOWN_KEYS]))
    to_load = {k: v for k, v in state.items() if k in expected}
    model.sam.load_state_dict(to_load, strict=not lora_missing)
    model.unmerge_lora()


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    adapter: str | os.PathLike | None = None, allow_base_mismatch: bool = False,
                    merge_lora: bool = True, source: str | None = None) -> UnSAMv2Model:
    """Build the model a checkpoint file describes and load it (plus an optional adapter).

    ``path`` is a SAM 2.1 or UnSAMv2 file (size detected from tensor shapes). ``adapter`` is an
    adapter file applied on top; its recorded base hash must match ``path`` unless
    ``allow_base_mismatch``. ``merge_lora`` folds LoRA for inference (state dict unchanged).
    """
    path = Path(path)
    obj = read_checkpoint(path)
    kind = checkpoint_kind(obj)
    if kind == "adapter":
        raise CheckpointError(
            f"{path} is an adapter file (only the granularity module); load a base model with --checkpoint/--model "
            f"and pass this file with --adapter"
        )
    state = model_state(obj)
    try:
        size = detect_size(state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model = build_model(size, granularity=kind == "unsamv2", device="cpu", image_size=checkpoint_image_size(obj, path),
                        random_init=False)  # every SAM 2.1 weight is loaded below (strict)
    model.info = ModelInfo(size=size, family="unsamv2" if kind == "unsamv2" else "sam2.1", source=source or str(path),
                           extra=dict(obj.get("metadata") or {}))
    load_state_dict_strict(model, state, source=str(path))
    del state, obj
    if adapter is not None:
        base_hash = _sha256(path)
        model.info.base_sha256 = base_hash
        apply_adapter(model, adapter, base_sha256=base_hash, allow_base_mismatch=allow_base_mismatch)
    model.sam.to(device).eval()
    if merge_lora and model.has_lora:
        model.merge_lora()
    return model


def _sha256(path: Path) -> str:
    from unsamv2_engine.weights import sha256_file_remembered

    return sha256_file_remembered(path)


# ----------------------------------------------------------------------------------------- adapters
def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an adapter file (format, version, tensors)."""
    obj = read_checkpoint(path, role="adapter", option="--adapter")
    if obj.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"--adapter {path} is not an UnSAMv2 adapter file (no 'format': '{ADAPTER_FORMAT}'): "
                              "it looks like a full model checkpoint; pass it as --checkpoint, or give the adapter "
                              "file written by 'unsamv2 finetune'")
    if int(obj.get("format_version", 0)) > ADAPTER_FORMAT_VERSION:
        raise CheckpointError(f"{path} has adapter format version {obj['format_version']}; "
                              f"this engine reads up to {ADAPTER_FORMAT_VERSION}: upgrade napari-unsamv2")
    if not obj.get("state_dict"):
        raise CheckpointError(f"{path} holds no tensors")
    return obj


def apply_adapter(model: UnSAMv2Model, path: str | os.PathLike, *, base_sha256: str | None = None,
                  allow_base_mismatch: bool = False) -> dict[str, Any]:
    """Load an adapter's granularity module + LoRA into ``model`` (adding the modules if absent)."""
    obj = read_adapter(path)
    base = obj.get("base", {})
    problems = []
    if base.get("size") and base["size"] != model.info.size:
        problems.append(f"it was trained on a {base['size']} model, this one is {model.info.size}")
    if base.get("sha256") and base_sha256 and base["sha256"] != base_sha256:
        problems.append(f"base sha256 {base['sha256'][:12]}... recorded, {base_sha256[:12]}... given")
    if problems and not allow_base_mismatch:
        raise AdapterBaseMismatchError(
            f"adapter {path} does not belong to this base model: {'; '.join(problems)} "
            f"(its base: {base.get('source', 'unknown')}). Load the base it names, or pass --allow-base-mismatch."
        )
    for problem in problems:
        log.warning("adapter %s: %s (allowed)", path, problem)
    config = obj.get("config", {})
    if not model.has_granularity:
        model.add_granularity_module(lora_rank=int(config.get("lora_rank", DEFAULT_RANK)),
                                     lora_alpha=float(config.get("lora_alpha", DEFAULT_ALPHA)))
    state = model.sam.state_dict()
    added = {k for k in state if is_added_parameter(k)}
    given = set(obj["state_dict"])
    if given != added:
        raise CheckpointError(
            f"adapter {path} does not match the model's granularity module: missing "
            f"{_describe_keys(added - given) or 'none'}; unexpected {_describe_keys(given - added) or 'none'}"
        )
    extra = dict(obj.get("extra_state_dict") or {})
    bad = sorted(k for k, v in extra.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)
                 or is_added_parameter(k))
    if bad:
        raise CheckpointError(f"adapter {path} changes tensors this model does not have (or with other shapes): "
                              f"{_describe_keys(set(bad))}. Load the base model it was trained on.")
    state.update(obj["state_dict"])
    state.update(extra)
    load_state_dict_strict(model, state, source=str(path))
    model.info.family = "unsamv2"
    model.info.adapter = str(path)
    return obj


def save_adapter(model: UnSAMv2Model, path: str | os.PathLike, *, base_sha256: str | None = None,
                 base_source: str | None = None, metadata: Mapping[str, Any] | None = None,
                 extra_keys: Iterable[str] = ()) -> Path:
    """Write the 70 added tensors (granularity module + gra token + LoRA) and their provenance.

    ``extra_keys``: state-dict names of base tensors that were fine-tuned too (e.g. the mask
    decoder); they are stored in ``extra_state_dict`` (format version 2) and replace the base's
    tensors when the adapter is applied.
    """
    if not model.has_granularity:
        raise CheckpointError("this model has no granularity module to save as an adapter")
    from unsamv2_engine import __version__

    lora = next(m for m in model.sam.sam_mask_decoder.transformer.modules() if hasattr(m, "lora_A"))
    full = model.sam.state_dict()
    extra_names = sorted(set(extra_keys) - {k for k in full if is_added_parameter(k)})
    unknown = [k for k in extra_names if k not in full]
    if unknown:
        raise KeyError(f"not tensors of this model: {', '.join(unknown[:5])}")
    obj = {
        "format": ADAPTER_FORMAT,
        "format_version": 2 if extra_names else 1,
        "state_dict": {k: v.detach().cpu().clone() for k, v in full.items() if is_added_parameter(k)},
        "config": {"lora_rank": lora.rank, "lora_alpha": lora.scale * lora.rank,
                   "fourier_dim": 2 * len(model.sam.sam_prompt_encoder.fourier_embedder.fourier.freq_bands)},
        "base": {"size": model.info.size, "sha256": base_sha256 or model.info.base_sha256,
                 "source": base_source or model.info.source},
        "metadata": {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "engine_version": __version__, **dict(metadata or {})},
    }
    if extra_names:
        obj["extra_state_dict"] = {k: full[k].detach().cpu().clone() for k in extra_names}
    return _atomic_save(obj, path)


# ----------------------------------------------------------------------------------------- full files
def save_checkpoint(model: UnSAMv2Model, path: str | os.PathLike, *, kind: str = "unsamv2",
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a full checkpoint ``{"model": state_dict}``.

    ``kind="unsamv2"``: the published LoRA-wrapped layout (needs a granularity module);
    ``kind="sam2"``: plain SAM 2.1 keys, the original weights without the UnSAMv2 additions.
    A model whose input size is not 1024 also records ``"image_size"``; ``metadata`` (or the
    model's own, ``model.info.extra``) goes under ``"metadata"``.
    """
    state = {k: v.detach().cpu() for k, v in model.sam.state_dict().items()}
    if kind == "unsamv2":
        if not model.has_granularity:
            raise CheckpointError("this model has no granularity module: save it with kind='sam2', "
                                  "or apply an adapter first")
    elif kind == "sam2":
        state = {k.replace(".original_layer.", "."): v for k, v in state.items() if not is_added_parameter(k)}
    else:
        raise ValueError(f"kind must be 'unsamv2' or 'sam2', got {kind!r}")
    obj: dict[str, Any] = {"model": state}
    if model.image_size != 1024:
        obj["image_size"] = model.image_size
    meta = dict(metadata if metadata is not None else model.info.extra)
    if meta:
        obj["metadata"] = meta
    return _atomic_save(obj, path)


def _atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of a checkpoint file: kind, size, tensor and parameter counts (``unsamv2 info FILE``)."""
    obj = read_checkpoint(path)
    kind = checkpoint_kind(obj)
    if kind == "adapter":
        tensors = obj["state_dict"]
        return {"path": str(path), "kind": kind, "tensors": len(tensors),
                "parameters": int(sum(t.numel() for t in tensors.values())), "base": obj.get("base", {}),
                "config": obj.get("config", {}), "metadata": obj.get("metadata", {})}
    state = model_state(obj)
    try:
        size = detect_size(state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    out = {"path": str(path), "kind": kind, "size": size, "tensors": len(state),
           "parameters": int(sum(t.numel() for t in state.values())),
           "added_parameters": int(sum(t.numel() for k, t in state.items() if is_added_parameter(k)))}
    if obj.get("image_size") is not None:
        out["image_size"] = checkpoint_image_size(obj, path)
    if obj.get("metadata"):
        out["metadata"] = obj["metadata"]
    return out
