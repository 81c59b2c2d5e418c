"""``unsamv2 napari``: open napari with the UnSAMv2 widget docked (needs the napari and pyqt6 extras)."""

from __future__ import annotations

import argparse
from typing import Any

from unsamv2_engine.cli.options import add_common_options, add_model_options, finish, subparser


def register(sub: Any) -> None:
    """Add ``napari`` to the ``unsamv2`` subparsers."""
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
    finish(parser, [add_model_options, add_common_options], run)


def run(args: argparse.Namespace) -> int:
    """Run napari with the widget (needs a display and a Qt binding: the pyqt6 extra)."""
    from napari_unsamv2.launch import run_from_args

    return run_from_args(args)
