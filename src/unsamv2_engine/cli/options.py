"""Options and value parsers shared by the ``unsamv2`` commands (standard library only).

Value parsers (argparse ``type=``) raise :class:`argparse.ArgumentTypeError` with a message that says
what to give; option groups (``add_*_options``) declare each shared option once, so that it is
spelled and documented the same way in every command; :func:`subparser` gives every command the
same layout.
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from collections.abc import Callable
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # mirrors unsamv2_engine.devices (which imports torch)

_POINT_LABELS = {"pos": 1, "positive": 1, "1": 1, "+": 1, "neg": 0, "negative": 0, "0": 0, "-": 0}
# Like Python 3.13's argparse: an argument starting with '-' and a digit is a value, not an option,
# so `--contrast-limits -100,2000` and `--point -0.3,5` work on 3.10-3.12 too.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")

OptionAdder = Callable[[argparse.ArgumentParser], None]


# ============================================================================ numbers


def _number(text: str, kind: type, what: str):
    """``kind(text)``, or an argparse error naming ``what`` was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _number(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _number(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite number."""
    value = _number(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


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


# ============================================================================ parsers and option groups
def allow_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let values such as ``-100,2000`` follow an option (see :data:`_NEGATIVE_VALUE`)."""
    parser._negative_number_matcher = _NEGATIVE_VALUE  # type: ignore[attr-defined]


def subparser(sub: Any, name: str, help_text: str, description: str, epilog: str, *,
              wrap: bool = True) -> argparse.ArgumentParser:
    """Add one command's parser with the shared layout.

    The layout: the description wrapped at 79 columns, the epilog verbatim, negative numbers
    accepted as option values. ``wrap=False`` leaves both to argparse's default formatter (which
    wraps them to the terminal width).
    """
    if wrap:
        parser = sub.add_parser(name, help=help_text, description=textwrap.fill(description, 79), epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        parser = sub.add_parser(name, help=help_text, description=description, epilog=epilog)
    allow_negative_values(parser)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-q/--quiet`` and ``--traceback`` (every command has them)."""
    group = parser.add_argument_group("messages")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress or stage messages on stderr")
    group.add_argument("--traceback", action="store_true",
                       help="show the Python traceback of an error (for bug reports)")


_MODEL_HELP = {
    "--checkpoint": "a SAM 2.1 or UnSAMv2 checkpoint file (.pt)",
    "--model": "a model from the registry ('unsamv2 models' lists them); default: unsamv2-plus",
    "--adapter": "an UnSAMv2 adapter file (granularity module + LoRA) applied on top of the model",
    "--allow-base-mismatch": "apply --adapter even if it records another base model",
    "--device": "where to run: auto = cuda, then mps, then cpu; cuda:N picks a GPU (default: auto)",
    "--download": "download the --model if it is not in the cache yet (needs network)",
}


def add_model_options(parser: argparse.ArgumentParser, *, help_texts: dict[str, str] | None = None,
                      extra: Callable[[Any], None] | None = None) -> None:
    """Add the model selection group (``--checkpoint | --model``, ``--adapter``, ``--device`` ...).

    Parameters
    ----------
    parser
        the command's parser.
    help_texts
        per-option help that replaces the shared wording (keyed by option, e.g. ``"--model"``).
    extra
        adds command-specific model options to the group, after ``--allow-base-mismatch``.
    """
    text = {**_MODEL_HELP, **(help_texts or {})}
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="PATH", help=text["--checkpoint"])
    which.add_argument("--model", metavar="NAME", help=text["--model"])
    group.add_argument("--adapter", metavar="PATH", help=text["--adapter"])
    group.add_argument("--allow-base-mismatch", action="store_true", help=text["--allow-base-mismatch"])
    if extra is not None:
        extra(group)
    group.add_argument("--device", default="auto", type=parse_device, metavar="{auto,cpu,cuda,mps}",
                       help=text["--device"])
    group.add_argument("--download", action="store_true", help=text["--download"])


def add_server_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--server URL``: run the command on an ``unsamv2 serve`` engine (token from UNSAMV2_TOKEN)."""
    group = parser.add_argument_group("remote engine")
    group.add_argument("--server", metavar="URL",
                       help="compute on an 'unsamv2 serve' engine, e.g. ws://gpu-box:8765 (its token from the "
                            "UNSAMV2_TOKEN variable; the server's model and device are used)")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """Add the prompt and image options shared by ``segment`` and ``sweep``."""
    group = parser.add_argument_group("prompt and image")
    group.add_argument("--point", metavar="X,Y[,pos|neg]", action="append", type=parse_point, required=True,
                       help="a point prompt in pixels, x = column, y = row; repeat for more points. "
                            "Label pos (default) or neg; also 1/0, +/-, positive/negative")
    group.add_argument("--mask-threshold", type=finite_float, default=0.0, metavar="T",
                       help="logits above T are foreground (default: 0.0; lower gives larger masks)")
    group.add_argument("--m2m", action="store_true",
                       help="refine: decode again with the first mask as mask input (the authors' M2M pass)")
    add_image_options(group)


def add_image_options(group: Any) -> None:
    """Add ``--contrast-limits`` and ``--frame`` to a parser or an argument group."""
    group.add_argument("--contrast-limits", type=parse_contrast_limits, metavar="LO,HI",
                       help="intensity range mapped to 0..255 for the model (default: the image's min..max; "
                            "8-bit images are used as they are)")
    group.add_argument("--frame", type=int, metavar="INDEX",
                       help="for a stack ([N, H, W] or [N, H, W, C]): the 2D image to segment, counted from 0")


def finish(parser: argparse.ArgumentParser, shared: list[OptionAdder],
           func: Callable[[argparse.Namespace], int]) -> None:
    """Add the shared option groups (after the command's own options) and the command function."""
    for add in shared:
        add(parser)
    parser.set_defaults(func=func)
