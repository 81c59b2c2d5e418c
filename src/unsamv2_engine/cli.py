"""The ``unsamv2`` command line: segment, sweep granularities, manage weights, convert checkpoints.

Commands (see ``docs/cli.md`` for the full reference)::

    unsamv2 segment IMAGE --point X,Y[,pos|neg] ... --granularity G -o OUT.tif [--json META.json]
    unsamv2 sweep IMAGE --point X,Y ... --granularities 0.1,0.5,1.0|START:STOP:N -o OUT.tif [--table T.csv]
    unsamv2 models [--download NAME] [--json]
    unsamv2 info [CHECKPOINT] [--json]
    unsamv2 convert IN -o OUT --to unsamv2|sam2|adapter [--adapter PATH] [--base PATH]

Import cost is part of the contract: this module imports only the standard library at import
time, so ``unsamv2 --help`` and ``unsamv2 CMD --help`` never import torch or sam2. Heavy modules
are imported inside the command functions.

Exit codes: 0 success; 2 a user error (an :class:`~unsamv2_engine.errors.UnSAMv2Error`: bad option,
bad input file, prompt outside the image, a missing or broken checkpoint...), reported as one
``unsamv2: error: ...`` line on stderr without a traceback (``--traceback`` shows it); 130
interrupted. Any other exception is a bug and keeps its traceback (exit 1). Progress and stage messages go to stderr;
stdout carries only short summaries (or JSON where asked), so it can be piped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations; never imported at run time here
    import numpy as np

    from unsamv2_engine.model.build import UnSAMv2Model
    from unsamv2_engine.session import ImageSession

from unsamv2_engine.argtypes import finite_float  # standard library only
from unsamv2_engine.errors import UnSAMv2Error, is_user_error  # standard library only

PROG = "unsamv2"
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # mirrors unsamv2_engine.devices (which imports torch)
CONVERT_KINDS = ("unsamv2", "sam2", "adapter")
TIFF_SUFFIXES = (".tif", ".tiff")

_POINT_LABELS = {"pos": 1, "positive": 1, "1": 1, "+": 1, "neg": 0, "negative": 0, "0": 0, "-": 0}
# Like Python 3.13's argparse: an argument starting with '-' and a digit is a value, not an option,
# so `--contrast-limits -100,2000` and `--point -0.3,5` work on 3.10-3.12 too.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


class CliError(UnSAMv2Error):
    """A user error found by the command line itself (the message says what to do)."""


# ============================================================================ value parsers
def parse_point(text: str) -> tuple[float, float, int]:
    """``"X,Y"`` or ``"X,Y,LABEL"`` -> ``(x, y, label)``; LABEL is pos/neg, 1/0, +/-, positive/negative."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(
            f"expected X,Y or X,Y,pos|neg (pixel column, row), got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"point coordinates must be numbers, got {text!r}") from None
    label = 1
    if len(parts) == 3:
        key = parts[2].lower()
        if key not in _POINT_LABELS:
            raise argparse.ArgumentTypeError(
                f"point label must be pos or neg (also 1/0, +/-, positive/negative), got {parts[2]!r} in {text!r}")
        label = _POINT_LABELS[key]
    return x, y, label


def parse_device(text: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (availability is checked when the model loads)."""
    name = text.strip().lower()
    if name in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", name):
        return name
    raise argparse.ArgumentTypeError(f"device must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, got {text!r}")


def parse_contrast_limits(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> ``(lo, hi)`` as floats (validated by the intensity rule later)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"contrast limits must be numbers, got {text!r}") from None


def parse_granularities(text: str) -> list[float]:
    """``"0.1,0.5,1"`` (a list, order kept) or ``"START:STOP:N"`` (N values, linearly spaced, inclusive).

    Values are rounded to 10 decimals so that ``0.1:1.0:10`` gives 0.1, 0.2, ... 1.0 exactly as
    written. The range [0.1, 1.0] is checked later, with the engine's own message.
    """
    text = text.strip()
    if ":" in text:
        return _granularity_range(text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give granularities as 0.1,0.5,1.0 or START:STOP:N")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"granularities must be numbers separated by commas (0.1,0.5,1.0) or START:STOP:N, got {text!r}") from None


def _granularity_range(text: str) -> list[float]:
    """The values of ``START:STOP:N``."""
    parts = text.split(":")
    usage = f"START:STOP:N means N values from START to STOP inclusive (e.g. 0.1:1.0:10), got {text!r}"
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(usage)
    try:
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"N must be at least 1 in START:STOP:N, got {text!r}")
    if count == 1:
        return [round(start, 10)]
    step = (stop - start) / (count - 1)
    return [round(start + i * step, 10) for i in range(count)]


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    """The full ``unsamv2`` argument parser (importing nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UnSAMv2: segment anything at any granularity (SAM 2.1 + a granularity module).",
        epilog="Run 'unsamv2 COMMAND --help' for the options of a command. Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_engine_version()}")
    _allow_negative_values(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inference = [_add_prompt_options, _add_model_options, _add_server_option, _add_common_options]
    _add_segment(sub, inference)
    _add_sweep(sub, inference)
    from unsamv2_engine.automatic.cli import add_parser as add_automatic  # auto, hierarchy; standard library only

    add_automatic(sub, _add_model_options, _add_common_options)
    from unsamv2_engine.tiling.cli import add_embed_parser  # embed; standard library only

    add_embed_parser(sub, _add_model_options, _add_common_options)
    _add_models(sub, [_add_common_options])
    _add_info(sub, [_add_common_options])
    _add_convert(sub, [_add_common_options])
    _add_napari(sub, [_add_model_options, _add_common_options])
    from unsamv2_engine.evaluate.cli import add_parser as add_evaluate  # standard library only
    from unsamv2_engine.synth.cli import add_parser as add_synth

    add_synth(sub)
    add_evaluate(sub)
    from unsamv2_engine.train.cli import add_parser as add_finetune  # standard library only

    add_finetune(sub, _add_model_options, _add_common_options)
    from unsamv2_engine.video.cli import add_parser as add_propagate  # standard library only

    add_propagate(sub, _add_model_options, _add_common_options)
    from unsamv2_engine.pseudo.cli import add_parser as add_pseudo_label  # standard library only

    add_pseudo_label(sub, _add_model_options, _add_common_options)
    from unsamv2_engine.serve_cli import add_parser as add_serve  # standard library only

    add_serve(sub, _add_model_options, _add_common_options)
    from unsamv2_engine.minisam.cli import add_parser as add_pretrain_mini  # standard library only

    add_pretrain_mini(sub, _add_model_options, _add_common_options)
    return parser


def _allow_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let values such as ``-100,2000`` follow an option (see :data:`_NEGATIVE_VALUE`)."""
    parser._negative_number_matcher = _NEGATIVE_VALUE  # type: ignore[attr-defined]


OptionAdder = Callable[[argparse.ArgumentParser], None]


def subparser(sub: Any, name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """Add one subcommand parser with the shared layout (wrapped description, verbatim epilog, negative
    numbers accepted as option values); the command modules use it too."""
    parser = sub.add_parser(name, help=help_text, description=textwrap.fill(description, 79), epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _allow_negative_values(parser)
    return parser


def _finish(parser: argparse.ArgumentParser, shared: list[OptionAdder],
            func: Callable[[argparse.Namespace], int]) -> None:
    """Add the shared option groups (after the command's own options) and the command function."""
    for add in shared:
        add(parser)
    parser.set_defaults(func=func)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options of every subcommand."""
    group = parser.add_argument_group("messages")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress or stage messages on stderr")
    group.add_argument("--traceback", action="store_true",
                       help="show the Python traceback of an error (for bug reports)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Model selection options shared by ``segment`` and ``sweep``."""
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="PATH",
                       help="a SAM 2.1 or UnSAMv2 checkpoint file (.pt)")
    which.add_argument("--model", metavar="NAME",
                       help="a model from the registry ('unsamv2 models' lists them); default: unsamv2-plus")
    group.add_argument("--adapter", metavar="PATH",
                       help="an UnSAMv2 adapter file (granularity module + LoRA) applied on top of the model")
    group.add_argument("--allow-base-mismatch", action="store_true",
                       help="apply --adapter even if it records another base model")
    group.add_argument("--device", default="auto", type=parse_device, metavar="{auto,cpu,cuda,mps}",
                       help="where to run: auto = cuda, then mps, then cpu; cuda:N picks a GPU (default: auto)")
    group.add_argument("--download", action="store_true",
                       help="download the --model if it is not in the cache yet (needs network)")


def _add_server_option(parser: argparse.ArgumentParser) -> None:
    """``--server URL``: run the command on an ``unsamv2 serve`` engine (token from UNSAMV2_TOKEN)."""
    group = parser.add_argument_group("remote engine")
    group.add_argument("--server", metavar="URL",
                       help="compute on an 'unsamv2 serve' engine, e.g. ws://gpu-box:8765 (its token from the "
                            "UNSAMV2_TOKEN variable; the server's model and device are used)")


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """Prompt and image options shared by ``segment`` and ``sweep``."""
    group = parser.add_argument_group("prompt and image")
    group.add_argument("--point", metavar="X,Y[,pos|neg]", action="append", type=parse_point, required=True,
                       help="a point prompt in pixels, x = column, y = row; repeat for more points. "
                            "Label pos (default) or neg; also 1/0, +/-, positive/negative")
    group.add_argument("--mask-threshold", type=finite_float, default=0.0, metavar="T",
                       help="logits above T are foreground (default: 0.0; lower gives larger masks)")
    group.add_argument("--m2m", action="store_true",
                       help="refine: decode again with the first mask as mask input (the authors' M2M pass)")
    group.add_argument("--contrast-limits", type=parse_contrast_limits, metavar="LO,HI",
                       help="intensity range mapped to 0..255 for the model (default: the image's min..max; "
                            "8-bit images are used as they are)")
    group.add_argument("--frame", type=int, metavar="INDEX",
                       help="for a stack ([N, H, W] or [N, H, W, C]): the 2D image to segment, counted from 0")


def _add_segment(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "segment", "segment one object at one granularity",
        "Segment the object under the point prompts at granularity G and write a label TIFF "
        "(foreground = 1, uint8).",
        "example:\n  unsamv2 segment cells.png --point 40,40 --granularity 0.4 -o mask.tif --json mask.json")
    parser.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG or JPEG")
    parser.add_argument("--granularity", "-g", type=float, required=True, metavar="G",
                        help="0.1 (smallest parts) .. 1.0 (whole objects)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="label TIFF to write")
    parser.add_argument("--json", metavar="META.json", help="also write the result's metadata as JSON ('-': stdout)")
    from unsamv2_engine.tiling.cli import add_tiling_options  # standard library only

    add_tiling_options(parser)
    _finish(parser, shared, cmd_segment)


def _add_sweep(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "sweep", "segment one prompt at several granularities",
        "Decode the same prompt at every granularity and write a multi-page label TIFF, one page per "
        "granularity in the order given.",
        "examples:\n  unsamv2 sweep cells.png --point 40,40 --granularities 0.1:1.0:10 -o sweep.tif --table sweep.csv\n"
        "  unsamv2 sweep cells.png --point 40,40 --granularities 0.2,0.5,0.9 -o sweep.tif")
    parser.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG or JPEG")
    parser.add_argument("--granularities", type=parse_granularities, required=True, metavar="G1,G2,...|START:STOP:N",
                        help="a list (0.1,0.5,1.0) or N values from START to STOP inclusive (0.1:1.0:10)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="multi-page label TIFF to write")
    parser.add_argument("--table", metavar="SWEEP.csv", help="also write one CSV row per granularity")
    parser.add_argument("--json", metavar="META.json", help="also write the sweep's metadata as JSON ('-': stdout)")
    _finish(parser, shared, cmd_sweep)


def _add_models(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "models", "list the known models; download one",
        "List the model registry (name, family, size, approximate size, whether it is cached, cache path), "
        "or download one model into the cache.",
        "examples:\n  unsamv2 models\n  unsamv2 models --download unsamv2-plus")
    parser.add_argument("--download", metavar="NAME", help="download this model into the cache and print its path")
    parser.add_argument("--force", action="store_true", help="with --download: download again even if cached")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    _finish(parser, shared, cmd_models)


def _add_info(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "info", "versions, devices, cache, intensity rule; describe a checkpoint",
        "Print versions, available devices, the weights cache directory and the intensity rule; "
        "with CHECKPOINT, also describe that file (kind, model size, tensors, parameters).",
        "examples:\n  unsamv2 info\n  unsamv2 info ~/.cache/unsamv2/unsamv2_plus_ckpt.pt --json")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a checkpoint or adapter file, or a cached registry model name")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    _finish(parser, shared, cmd_info)


def _add_convert(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "convert", "convert between UnSAMv2, SAM 2.1 and adapter files",
        "Load IN (optionally with --adapter applied) and write it as a full UnSAMv2 file, a plain SAM 2.1 "
        "file (the UnSAMv2 additions dropped), or an adapter file (granularity module + LoRA only).",
        "examples:\n  unsamv2 convert unsamv2.pt -o sam2.pt --to sam2\n"
        "  unsamv2 convert unsamv2.pt -o adapter.pt --to adapter --base sam2.pt\n"
        "  unsamv2 convert sam2.pt --adapter adapter.pt -o unsamv2.pt --to unsamv2")
    parser.add_argument("input", metavar="IN", help="a SAM 2.1 or UnSAMv2 checkpoint file (or cached model name)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    parser.add_argument("--to", required=True, choices=CONVERT_KINDS, help="kind of file to write")
    parser.add_argument("--adapter", metavar="PATH", help="an adapter file applied on IN before converting")
    parser.add_argument("--allow-base-mismatch", action="store_true",
                        help="apply --adapter (or accept --base) even if the base model differs")
    parser.add_argument("--base", metavar="PATH",
                        help="with --to adapter: the base checkpoint the adapter is meant for (its sha256 is "
                             "recorded; default: IN)")
    _finish(parser, shared, cmd_convert)


def _add_napari(sub: Any, shared: list[OptionAdder]) -> None:
    parser = subparser(
        sub, "napari", "open napari with the UnSAMv2 widget docked",
        "Open napari on IMAGE (or a bundled sample), dock the UnSAMv2 widget and load the model. Click on an "
        "object, turn the granularity dial, commit objects, sweep a hierarchy.",
        "examples:\n  unsamv2 napari --sample cells --model unsamv2-plus --download\n"
        "  unsamv2 napari cells.tif --checkpoint sam2.1_hiera_small.pt --adapter lab.pt")
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="an image file napari can open")
    parser.add_argument("--sample", default="cells", choices=["cells", "ihc", "cell"],
                        help="sample shown when no IMAGE is given (default: synthetic cells)")
    parser.add_argument("--no-load", action="store_true", help="do not start loading the model")
    _finish(parser, shared, cmd_napari)


def cmd_napari(args: argparse.Namespace) -> int:
    """Run napari with the widget (needs a display and a Qt binding: the pyqt6 extra)."""
    from napari_unsamv2.launch import run_from_args

    return run_from_args(args)


# ============================================================================ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unsamv2`` command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USER_ERROR)
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - user errors are reported, anything else re-raised
        message = _user_error_message(exc)
        if message is None or args.traceback:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _user_error_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback).

    User errors are :class:`~unsamv2_engine.errors.UnSAMv2Error` (and OS errors about a named file:
    no such file, permission denied, disk full), classified as the engine service does; running out
    of device memory is reported too. Any other exception is a bug.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return f"out of device memory ({str(exc).splitlines()[0]}); try a smaller image or --device cpu"
    if not is_user_error(exc):
        return None
    if isinstance(exc, OSError) and not isinstance(exc, UnSAMv2Error) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


# ============================================================================ shared helpers
def _say(args: argparse.Namespace, message: str) -> None:
    """A stage message on stderr (silenced by --quiet)."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _engine_version() -> str:
    from unsamv2_engine import __version__

    return __version__


def model_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The model files a command reads (``--checkpoint``, the cached ``--model`` file, ``--adapter``)."""
    from unsamv2_engine import weights

    files: dict[str, Any] = {"--checkpoint": getattr(args, "checkpoint", None),
                             "--adapter": getattr(args, "adapter", None)}
    name = getattr(args, "model", None) or (None if files["--checkpoint"] else weights.DEFAULT_MODEL)
    if name in weights.REGISTRY:
        files["--model"] = weights.cached_path(name)
    return files


def check_command_outputs(args: argparse.Namespace, outputs: dict[str, Any], *,
                          inputs: dict[str, Any] | None = None, image_option: str = "IMAGE") -> None:
    """:func:`unsamv2_engine.outputs.check_outputs` for a command that reads ``args.image`` and a model:
    before any work, no output may name an input or another output, be a folder, or sit in a folder
    that is missing or read-only."""
    from unsamv2_engine.outputs import check_outputs

    check_outputs(outputs, {image_option: getattr(args, "image", None), **model_inputs(args), **(inputs or {})})


def _check_output_suffix(path: str, what: str, suffixes: Sequence[str]) -> None:
    """Fail before any work if an output file has the wrong suffix."""
    if Path(path).suffix.lower() not in suffixes:
        raise CliError(f"{what} {path!r} must end in {' or '.join(suffixes)}")


@contextlib.contextmanager
def _reading_checkpoints(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Turn torch's unpickling error (a file that is not a checkpoint at all) into a user error."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError as exc:
        names = " or ".join(str(p) for p in paths if p)
        raise CliError(f"cannot read {names} as a PyTorch checkpoint ({type(exc).__name__}); give a .pt file "
                       "written by torch.save (a SAM 2.1, UnSAMv2 or adapter checkpoint)") from exc


def _read_image(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The image as stored and the uint8 RGB image the model sees (``--frame``, ``--contrast-limits``)."""
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.io import read_image

    image = read_image(args.image)
    image = _select_frame(image, args.frame, args.image)
    return image, to_uint8_rgb(image, contrast_limits=args.contrast_limits)


def _is_stack(image: np.ndarray) -> bool:
    """[N, H, W] (last axis not a colour axis) or [N, H, W, C]."""
    return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (3, 4))


def _select_frame(image: np.ndarray, frame: int | None, path: str) -> np.ndarray:
    """Apply ``--frame`` to a stack; refuse a stack without it, and more than one stack axis."""
    if image.ndim > 4 or (image.ndim == 4 and image.shape[-1] not in (3, 4)):
        raise CliError(f"{path} has {image.ndim} axes (shape {tuple(image.shape)}): more than one stack axis (e.g. "
                       "time and z). This command takes a 2D image or one stack [N, H, W] / [N, H, W, C] with --frame; "
                       "save the plane or stack you want as its own file first")
    if frame is None:
        if _is_stack(image):
            raise CliError(f"{path} is a stack of {image.shape[0]} images (shape {tuple(image.shape)}); "
                           f"choose one with --frame INDEX (0 .. {image.shape[0] - 1})")
        return image
    if not _is_stack(image):
        raise CliError(f"--frame was given but {path} is a single 2D image (shape {tuple(image.shape)})")
    if not -image.shape[0] <= frame < image.shape[0]:
        raise CliError(f"--frame {frame} is out of range: {path} holds {image.shape[0]} images (0 .. "
                       f"{image.shape[0] - 1})")
    return image[frame]


def _prompt_arrays(args: argparse.Namespace, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, 2] and labels [N] from ``--point``, validated against the image size."""
    from unsamv2_engine.prompts import check_points

    if not args.point:
        raise CliError("give at least one --point X,Y on the object (x = column, y = row, in pixels)")
    points = [(x, y) for x, y, _ in args.point]
    labels = [label for _, _, label in args.point]
    return check_points(points, labels, hw)


def _resolve_model_file(args: argparse.Namespace) -> tuple[Path, str]:
    """The local checkpoint file of ``--checkpoint`` / ``--model`` and how to name its source."""
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


def _resolve_device(name: str) -> Any:
    """``--device`` as a torch.device, with the engine's message when it is not available."""
    from unsamv2_engine.devices import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def _load_model(path: Path, *, source: str, device: Any, adapter: str | None,
                allow_base_mismatch: bool) -> UnSAMv2Model:
    """Load a checkpoint (plus adapter) for inference; a batch worker loads it once and keeps it."""
    from unsamv2_engine.batch.worker import reuse_model  # standard library only
    from unsamv2_engine.model.checkpoint import load_checkpoint

    def load() -> UnSAMv2Model:
        with _reading_checkpoints(path, adapter):
            return load_checkpoint(path, device=device, adapter=adapter, allow_base_mismatch=allow_base_mismatch,
                                   source=source)

    return reuse_model(load, path=path, source=source, device=device, adapter=adapter,
                       allow_base_mismatch=allow_base_mismatch)


def _embed(session: ImageSession, rgb8: np.ndarray) -> None:
    """Compute the image embedding of ``rgb8`` in ``session``."""
    session.set_image(rgb8)


def _synchronize(device: Any) -> None:
    """Wait for queued GPU work, so that timings are honest."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(func: Callable[[], Any], device: Any) -> tuple[Any, float]:
    """``(func(), seconds)``, synchronizing the device after the call."""
    start = time.perf_counter()
    result = func()
    _synchronize(device)
    return result, time.perf_counter() - start


@dataclass
class _Run:
    """What ``segment`` and ``sweep`` share once the model is loaded and the image embedded."""

    image: np.ndarray  # as stored in the file (after --frame)
    points: np.ndarray  # [N, 2] float32 (x, y)
    labels: np.ndarray  # [N] int32
    checkpoint: Path
    device: Any  # torch.device
    model: UnSAMv2Model
    session: ImageSession
    load_s: float
    embed_s: float


def _prepare(args: argparse.Namespace) -> _Run:
    """Everything ``segment`` and ``sweep`` share: validated inputs, loaded model, embedded image.

    Every cheap check (image, points, output names, model file) runs before the model is loaded.
    """
    image, rgb8 = _read_image(args)
    points, labels = _prompt_arrays(args, rgb8.shape[:2])
    _refuse_uniform(args, image, rgb8)
    path, source = _resolve_model_file(args)
    device = _resolve_device(args.device)
    _say(args, f"loading {source} on {device} ...")
    model, load_s = _timed(lambda: _load_model(path, source=source, device=device, adapter=args.adapter,
                                               allow_base_mismatch=args.allow_base_mismatch), device)
    if not model.has_granularity:
        _warn("this model has no granularity module (plain SAM 2.1): the granularity picks one of SAM's "
              "three candidate masks (g < 0.4 smallest, g < 0.7 middle, else largest)")
    from unsamv2_engine.session import ImageSession

    session = ImageSession(model, mask_threshold=args.mask_threshold)
    _say(args, f"embedding {args.image} ({rgb8.shape[1]}x{rgb8.shape[0]}) ...")
    _, embed_s = _timed(lambda: _embed(session, rgb8), device)
    return _Run(image=image, points=points, labels=labels, checkpoint=path, device=device, model=model,
                session=session, load_s=load_s, embed_s=embed_s)


def _refuse_uniform(args: argparse.Namespace, image: np.ndarray, rgb8: np.ndarray) -> None:
    """A uniform image (constant, all NaN, or flattened by --contrast-limits) has nothing to segment: say so
    instead of letting the prompt, granularity or threshold take the blame for an empty mask."""
    import numpy as np

    lo, hi = int(rgb8.min()), int(rgb8.max())
    if lo != hi:
        return
    from unsamv2_engine.errors import ImageError

    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        what = "has no finite value (all NaN or infinite)"
    elif args.contrast_limits and image.min() != image.max():
        what = f"is uniform after --contrast-limits {args.contrast_limits[0]:g},{args.contrast_limits[1]:g}"
    else:
        what = f"is uniform (every pixel is {image.reshape(-1)[0].item()!r})"
    raise ImageError(f"{args.image}{'' if args.frame is None else f' frame {args.frame}'} {what}: there is nothing "
                     "to segment; check the file" + (", --frame" if args.frame is not None else "")
                     + " or --contrast-limits")


def _base_metadata(args: argparse.Namespace, run: _Run) -> dict[str, Any]:
    """JSON fields shared by ``segment`` and ``sweep``."""
    model = run.model
    return {
        "engine_version": _engine_version(),
        "image": str(args.image),
        "image_shape": list(run.image.shape),
        "image_dtype": str(run.image.dtype),
        "frame": args.frame,
        "contrast_limits": list(args.contrast_limits) if args.contrast_limits else None,
        "points": run.points.tolist(),
        "labels": run.labels.tolist(),
        "mask_threshold": args.mask_threshold,
        "m2m": bool(args.m2m),
        "model": model.info.label,
        "model_family": model.info.family,
        "model_size": model.info.size,
        "checkpoint": str(run.checkpoint),
        "adapter": str(args.adapter) if args.adapter else None,
        "device": str(run.device),
    }


def _emit_json(path: str | None, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (``-``: stdout); nothing when ``path`` is None."""
    if path is None:
        return
    from unsamv2_engine.io import to_jsonable, write_json

    if path == "-":
        print(json.dumps(to_jsonable(document), indent=2))
    else:
        write_json(path, document)


def _summary(args: argparse.Namespace, line: str) -> None:
    """A result line on stdout (on stderr when stdout carries JSON)."""
    print(line, file=sys.stderr if getattr(args, "json", None) == "-" else sys.stdout, flush=True)


# ============================================================================ segment
def cmd_segment(args: argparse.Namespace) -> int:
    """``unsamv2 segment``: one object at one granularity -> label TIFF (+ JSON)."""
    from unsamv2_engine.outputs import staged_outputs
    from unsamv2_engine.prompts import check_granularity, check_mask_threshold

    _check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    granularity = check_granularity(args.granularity)
    check_mask_threshold(args.mask_threshold)
    check_command_outputs(args, {"-o": args.output, "--json": args.json})
    if args.server:
        from unsamv2_engine import remote_cli

        return remote_cli.segment(args, granularity)
    from unsamv2_engine.tiling.cli import run_tiled_segment, wants_tiles  # large images: decoded on a tile

    if wants_tiles(args):
        return run_tiled_segment(args, granularity)
    run = _prepare(args)
    _say(args, f"decoding at granularity {granularity:g} ...")
    pred, decode_s = _timed(lambda: run.session.predict(run.points, run.labels, granularity, m2m=args.m2m),
                            run.device)
    meta = {**_base_metadata(args, run), "granularity": granularity, "score": pred.score,
            "object_score": pred.object_score, "area": pred.area}
    from unsamv2_engine.io import write_labels

    meta["output"] = str(args.output)
    meta["timings"] = {"load_s": run.load_s, "embed_s": run.embed_s, "decode_s": decode_s}
    with staged_outputs() as out:
        write_labels(out.path(args.output), pred.mask, metadata={k: meta[k] for k in (
            "granularity", "score", "object_score", "area", "model", "points", "labels", "mask_threshold", "m2m")})
        _emit_json(out.path(args.json), meta)
    if pred.area == 0:
        _warn(f"the mask is empty (object score {pred.object_score:.2f}): try another point, granularity "
              "or a lower --mask-threshold")
    _summary(args, f"wrote {args.output} (area {pred.area} px, score {pred.score:.2f}, granularity "
                   f"{granularity:g})")
    return EXIT_OK


# ============================================================================ sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    """``unsamv2 sweep``: one prompt at several granularities -> multi-page label TIFF (+ CSV, JSON)."""
    from unsamv2_engine.outputs import staged_outputs
    from unsamv2_engine.prompts import check_granularities, check_mask_threshold

    _check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    granularities = check_granularities(args.granularities)
    check_mask_threshold(args.mask_threshold)
    check_command_outputs(args, {"-o": args.output, "--table": args.table, "--json": args.json})
    if args.server:
        from unsamv2_engine import remote_cli

        return remote_cli.sweep(args, granularities)
    run = _prepare(args)
    _say(args, f"decoding {len(granularities)} granularities ...")
    sweep, decode_s = _timed(lambda: run.session.sweep(run.points, run.labels, granularities, m2m=args.m2m),
                             run.device)
    rows = _sweep_rows(granularities, sweep)
    base = _base_metadata(args, run)
    from unsamv2_engine.io import write_labels, write_table_csv

    meta = {**base, "granularities": granularities, "pages": rows, "output": str(args.output),
            "table": args.table, "timings": {"load_s": run.load_s, "embed_s": run.embed_s,
                                             "decode_s": decode_s}}
    with staged_outputs() as out:
        write_labels(out.path(args.output), sweep.masks, metadata={
            "granularities": granularities, "areas": [r["area"] for r in rows],
            "scores": [r["score"] for r in rows], "object_scores": [r["object_score"] for r in rows],
            **{k: base[k] for k in ("model", "points", "labels", "mask_threshold", "m2m")}})
        if args.table:
            write_table_csv(out.path(args.table), rows, columns=["page", "granularity", "area", "score",
                                                                 "object_score"])
        _emit_json(out.path(args.json), meta)
    _summary(args, f"wrote {args.output} ({len(rows)} pages)" + (f" and {args.table}" if args.table else ""))
    for row in rows:
        _summary(args, f"  page {row['page']:>3}  g {row['granularity']:<6g} area {row['area']:>9} px  "
                       f"score {row['score']:.3f}")
    return EXIT_OK


def _sweep_rows(granularities: list[float], sweep: Any) -> list[dict[str, Any]]:
    """One table row per granularity, in page order."""
    areas = sweep.areas
    return [{"page": i, "granularity": g, "area": int(areas[i]), "score": float(sweep.scores[i]),
             "object_score": float(sweep.object_scores[i])} for i, g in enumerate(granularities)]


# ============================================================================ models
def cmd_models(args: argparse.Namespace) -> int:
    """``unsamv2 models``: list the registry, or download one model."""
    from unsamv2_engine import weights

    if args.download:
        weights.get_entry(args.download)
        _say(args, f"downloading {args.download} into {weights.cache_dir()} ...")
        path = weights.download(args.download, progress=not args.quiet, force=args.force)
        print(json.dumps({"name": args.download, "path": str(path)}) if args.json else path)
        return EXIT_OK
    if args.force:
        raise CliError("--force only makes sense with --download NAME")
    rows = weights.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_format_models_table(rows))
    return EXIT_OK


def _format_models_table(rows: list[dict[str, Any]]) -> str:
    """The registry as an aligned text table."""
    header = ("NAME", "FAMILY", "SIZE", "~MB", "CACHED", "SHA256", "PATH")
    body = [(r["name"], r["family"], r["size"], "?" if r["approx_mb"] is None else str(r["approx_mb"]),
             "yes" if r["cached"] else ("no" if r["size_ok"] else "bad size"), r["digest"], r["path"]) for r in rows]
    notes = []
    if any(r["digest"] != "published" for r in rows):
        notes.append("SHA256: 'published' = checked against the publisher's digest; 'recorded' = none is published, "
                     "the digest of the first download is recorded beside the file and checked; 'none yet' = none "
                     "published and not downloaded yet.")
    if any(not r["size_ok"] for r in rows):
        notes.append("'bad size': the cached file is not the published one; run 'unsamv2 models --download NAME "
                     "--force'.")
    return _align([header, *body]) + "".join("\n" + textwrap.fill(n, 100) for n in notes)


def _align(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]
    return "\n".join(lines)


# ============================================================================ info
def cmd_info(args: argparse.Namespace) -> int:
    """``unsamv2 info``: versions, devices, cache, intensity rule, and optionally a checkpoint."""
    from unsamv2_engine import weights
    from unsamv2_engine.intensity import describe_intensity_rule

    info: dict[str, Any] = {"versions": _versions(), "devices": _devices(), "cache_dir": str(weights.cache_dir()),
                            "cached_models": [r["name"] for r in weights.list_models() if r["cached"]],
                            "intensity_rule": describe_intensity_rule()}
    if args.checkpoint:
        from unsamv2_engine.model.checkpoint import describe_checkpoint

        path = weights.resolve_checkpoint(args.checkpoint)
        with _reading_checkpoints(path):
            info["checkpoint"] = describe_checkpoint(path)
    if args.json:
        from unsamv2_engine.io import to_jsonable

        print(json.dumps(to_jsonable(info), indent=2))
    else:
        print(_format_info(info))
    return EXIT_OK


def _versions() -> dict[str, str]:
    """Installed versions of the packages that matter for bug reports."""
    from importlib import metadata

    versions = {}
    for dist in ("napari-unsamv2", "torch", "sam2", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def _devices() -> dict[str, Any]:
    """``devices.available_devices()``, or why it could not be asked."""
    try:
        from unsamv2_engine.devices import available_devices
    except ImportError as exc:
        return {"error": f"torch cannot be imported: {exc}"}
    return available_devices()


def _format_info(info: dict[str, Any]) -> str:
    """``info`` as readable text."""
    lines = ["versions:"]
    lines += [f"  {name:<15} {version}" for name, version in info["versions"].items()]
    lines.append("devices:")
    lines += [f"  {name:<15} {_plain(value)}" for name, value in info["devices"].items()]
    cached = ", ".join(info["cached_models"]) or "none"
    lines += ["weights cache:", f"  {info['cache_dir']}", f"  cached models: {cached}", "intensity rule:"]
    lines += textwrap.wrap(info["intensity_rule"], width=88, initial_indent="  ", subsequent_indent="  ")
    if "checkpoint" in info:
        lines.append("checkpoint:")
        lines += [f"  {key:<17} {_plain(value)}" for key, value in info["checkpoint"].items()]
    return "\n".join(lines)


def _plain(value: Any) -> str:
    """A value for the text output: booleans as yes/no, containers as compact JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


# ============================================================================ convert
def cmd_convert(args: argparse.Namespace) -> int:
    """``unsamv2 convert``: rewrite a checkpoint as an UnSAMv2, SAM 2.1 or adapter file."""
    from unsamv2_engine import weights
    from unsamv2_engine.model.checkpoint import save_adapter, save_checkpoint

    source = weights.resolve_checkpoint(args.input)
    if args.base and args.to != "adapter":
        raise CliError("--base is only used with --to adapter (it names the base model the adapter is for)")
    if args.adapter and not Path(args.adapter).is_file():
        raise CliError(f"adapter file not found: {args.adapter}")
    base = Path(args.base) if args.base else source
    if not base.is_file():
        raise CliError(f"base checkpoint not found: {args.base}")
    from unsamv2_engine.outputs import check_outputs

    check_outputs({"-o": args.output}, {"IN": source, "--adapter": args.adapter, "--base": base})
    _say(args, f"loading {source}" + (f" + adapter {args.adapter}" if args.adapter else "") + " ...")
    model = _load_for_convert(source, adapter=args.adapter, allow_base_mismatch=args.allow_base_mismatch,
                              source=args.input)
    if args.to == "adapter":
        if args.base:
            _check_base(model, base, args.allow_base_mismatch)
        _say(args, f"hashing base {base} ...")
        save_adapter(model, args.output, base_sha256=weights.sha256_file(base),
                     base_source=str(args.base or args.input), metadata={"converted_from": str(args.input)})
    else:
        save_checkpoint(model, args.output, kind=args.to)
    print(f"wrote {args.output} ({args.to}, {model.info.size})")
    return EXIT_OK


def _load_for_convert(path: Path, *, adapter: str | None, allow_base_mismatch: bool, source: str) -> UnSAMv2Model:
    """Load a checkpoint (plus adapter) on the CPU with LoRA unmerged, as the files store it."""
    from unsamv2_engine.model.checkpoint import load_checkpoint

    with _reading_checkpoints(path, adapter):
        return load_checkpoint(path, device="cpu", adapter=adapter, allow_base_mismatch=allow_base_mismatch,
                               merge_lora=False, source=source)


def _check_base(model: UnSAMv2Model, base: Path, allow_mismatch: bool) -> None:
    """Refuse a ``--base`` whose SAM 2.1 weights differ from the converted model's own."""
    import torch

    from unsamv2_engine.model.build import is_added_parameter
    from unsamv2_engine.model.checkpoint import checkpoint_kind, model_state, read_checkpoint

    with _reading_checkpoints(base):
        obj = read_checkpoint(base)
    if checkpoint_kind(obj) == "adapter":
        raise CliError(f"--base {base} is an adapter file; give the SAM 2.1 or UnSAMv2 checkpoint it applies to")

    def sam_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.replace(".original_layer.", "."): v for k, v in state.items() if not is_added_parameter(k)}

    ours, theirs = sam_weights(model.sam.state_dict()), sam_weights(model_state(obj))
    same = ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k].cpu(), theirs[k]) for k in ours)
    if not same:
        message = (f"--base {base} does not hold the same SAM 2.1 weights as {model.info.source}; the adapter "
                   "would not reproduce this model on it")
        if not allow_mismatch:
            raise CliError(message + " (pass --allow-base-mismatch to record it anyway)")
        _warn(message)
