"""What the commands read: the image (``--frame``, ``--contrast-limits``), prompts, the model, the device.

Every cheap check (files, options, output names) runs before anything heavy is imported; numpy,
torch and the engine are imported inside the functions, so importing this module stays standard
library only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsamv2_engine.cli.output import CliError, say

if TYPE_CHECKING:  # only for annotations; never imported at run time here
    import numpy as np

    from unsamv2_engine.model.build import UnSAMv2Model

TIFF_SUFFIXES = (".tif", ".tiff")


# ============================================================================ outputs
def model_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Name the model files a command reads (``--checkpoint``, the cached ``--model`` file, ``--adapter``)."""
    from unsamv2_engine import weights

    files: dict[str, Any] = {"--checkpoint": getattr(args, "checkpoint", None),
                             "--adapter": getattr(args, "adapter", None)}
    name = getattr(args, "model", None) or (None if files["--checkpoint"] else weights.DEFAULT_MODEL)
    if name in weights.REGISTRY:
        files["--model"] = weights.cached_path(name)
    return files


def check_command_outputs(args: argparse.Namespace, outputs: dict[str, Any], *,
                          inputs: dict[str, Any] | None = None, image_option: str = "IMAGE") -> None:
    """Check the outputs of a command that reads ``args.image`` and a model, before any work.

    :func:`unsamv2_engine.outputs.check_outputs`: no output may name an input or another output, be
    a folder, or sit in a folder that is missing or read-only.
    """
    from unsamv2_engine.outputs import check_outputs

    check_outputs(outputs, {image_option: getattr(args, "image", None), **model_inputs(args), **(inputs or {})})


def check_output_suffix(path: str, what: str, suffixes: Sequence[str]) -> None:
    """Fail before any work if an output file has the wrong suffix."""
    if Path(path).suffix.lower() not in suffixes:
        raise CliError(f"{what} {path!r} must end in {' or '.join(suffixes)}")


# ============================================================================ image and prompts
def read_image(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Read the image as stored and the uint8 RGB image the model sees (``--frame``, ``--contrast-limits``)."""
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.io import read_image as read

    image = read(args.image)
    image = select_frame(image, args.frame, args.image)
    return image, to_uint8_rgb(image, contrast_limits=args.contrast_limits)


def is_stack(image: np.ndarray) -> bool:
    """Tell whether ``image`` is [N, H, W] (last axis not a colour axis) or [N, H, W, C]."""
    return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (3, 4))


def select_frame(image: np.ndarray, frame: int | None, path: str) -> np.ndarray:
    """Apply ``--frame`` to a stack; refuse a stack without it, and more than one stack axis."""
    if image.ndim > 4 or (image.ndim == 4 and image.shape[-1] not in (3, 4)):
        raise CliError(f"{path} has {image.ndim} axes (shape {tuple(image.shape)}): more than one stack axis (e.g. "
                       "time and z). This command takes a 2D image or one stack [N, H, W] / [N, H, W, C] with --frame; "
                       "save the plane or stack you want as its own file first")
    if frame is None:
        if is_stack(image):
            raise CliError(f"{path} is a stack of {image.shape[0]} images (shape {tuple(image.shape)}); "
                           f"choose one with --frame INDEX (0 .. {image.shape[0] - 1})")
        return image
    if not is_stack(image):
        raise CliError(f"--frame was given but {path} is a single 2D image (shape {tuple(image.shape)})")
    if not -image.shape[0] <= frame < image.shape[0]:
        raise CliError(f"--frame {frame} is out of range: {path} holds {image.shape[0]} images (0 .. "
                       f"{image.shape[0] - 1})")
    return image[frame]


def prompt_arrays(args: argparse.Namespace, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return points [N, 2] and labels [N] from ``--point``, validated against the image size ``hw``."""
    from unsamv2_engine.prompts import check_points

    if not args.point:
        raise CliError("give at least one --point X,Y on the object (x = column, y = row, in pixels)")
    points = [(x, y) for x, y, _ in args.point]
    labels = [label for _, _, label in args.point]
    return check_points(points, labels, hw)


# ============================================================================ model and device
@contextlib.contextmanager
def reading_checkpoints(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Turn torch's unpickling error (a file that is not a checkpoint at all) into a user error."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError as exc:
        names = " or ".join(str(p) for p in paths if p)
        raise CliError(f"cannot read {names} as a PyTorch checkpoint ({type(exc).__name__}); give a .pt file "
                       "written by torch.save (a SAM 2.1, UnSAMv2 or adapter checkpoint)") from exc


def resolve_model_file(args: argparse.Namespace) -> tuple[Path, str]:
    """Return the local checkpoint file of ``--checkpoint`` / ``--model`` and how to name its source."""
    from unsamv2_engine import weights

    if args.checkpoint:
        source = args.checkpoint
    else:
        source = args.model or weights.DEFAULT_MODEL
        weights.get_entry(source)  # unknown names fail here, with the list of known ones
    path = weights.resolve_checkpoint(source, download_missing=args.download, progress=not args.quiet)
    if args.adapter and not Path(args.adapter).is_file():
        raise CliError(f"adapter file not found: {args.adapter}")
    return path, source


def resolve_device(name: str) -> Any:
    """Return ``--device`` as a torch.device, with the engine's message when it is not available."""
    from unsamv2_engine.devices import resolve_device as resolve

    try:
        return resolve(name)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def load_model(path: Path, *, source: str, device: Any, adapter: str | None,
               allow_base_mismatch: bool, merge_lora: bool = True) -> UnSAMv2Model:
    """Load a checkpoint (plus adapter); ``merge_lora=False`` keeps LoRA apart, as the files store it.

    In a batch worker the model is loaded once and kept for every image (:mod:`unsamv2_engine.batch.worker`).
    """
    from unsamv2_engine.batch.worker import reuse_model  # standard library only
    from unsamv2_engine.model.checkpoint import load_checkpoint

    def load() -> UnSAMv2Model:
        with reading_checkpoints(path, adapter):
            return load_checkpoint(path, device=device, adapter=adapter, allow_base_mismatch=allow_base_mismatch,
                                   merge_lora=merge_lora, source=source)

    return reuse_model(load, path=path, source=source, device=device, adapter=adapter,
                       allow_base_mismatch=allow_base_mismatch, merge_lora=merge_lora)


@dataclass
class LoadedModel:
    """A model loaded from the model options, with where it came from."""

    model: UnSAMv2Model
    checkpoint: Path  # the local file
    source: str  # how to name it: the --checkpoint path or the --model name
    device: Any  # torch.device, as --device resolved
    load_s: float


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model the model options name (``--checkpoint/--model/--adapter``), on ``--device``."""
    path, source = resolve_model_file(args)
    device = resolve_device(args.device)
    say(args, f"loading {source} on {device} ...")
    model, load_s = timed(lambda: load_model(path, source=source, device=device, adapter=args.adapter,
                                             allow_base_mismatch=args.allow_base_mismatch), device)
    return LoadedModel(model, path, source, device, load_s)


def synchronize(device: Any) -> None:
    """Wait for queued GPU work, so that timings are honest."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(func: Callable[[], Any], device: Any) -> tuple[Any, float]:
    """Return ``(func(), seconds)``, synchronizing the device after the call."""
    start = time.perf_counter()
    result = func()
    synchronize(device)
    return result, time.perf_counter() - start
