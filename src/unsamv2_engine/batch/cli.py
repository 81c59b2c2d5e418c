"""Command-line glue of the batch path: the options and the one call each command makes.

::

    from unsamv2_engine.batch.cli import add_batch_options, run_batch
    add_batch_options(parser)                      # in the command's add_parser
    code = run_batch(args, "auto")                 # first thing in the command's run function
    if code is not None:
        return code

Standard library only (``unsamv2 CMD --help`` imports neither torch nor dask).
"""

from __future__ import annotations

import argparse

from unsamv2_engine.argtypes import positive_int

__all__ = ["add_batch_options", "run_batch"]


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--scheduler ADDRESS`` (used when the input is a folder or a glob)."""
    group = parser.add_argument_group(
        "batch (a folder or a quoted glob as input; -o then names a folder)",
        "Each image gets <output folder>/<image stem><suffix>; <output folder>/manifest.json records every "
        "image (done, failed with the reason, skipped); a re-run skips what is done with the same settings. "
        "See docs/batch.md.")
    group.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="images in parallel on a local Dask cluster of N worker processes, each loading the "
                            "model once (default: 1, in this process, no Dask)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the workers of an existing dask.distributed scheduler, e.g. tcp://node:8786 "
                            "(dask-jobqueue on SLURM; the files must be on a filesystem the workers share)")


def run_batch(args: argparse.Namespace, command: str) -> int | None:
    """The batch run's exit code when ``args`` names a folder or glob of images, else None (one image)."""
    from unsamv2_engine.batch.commands import run_command

    return run_command(args, command)
