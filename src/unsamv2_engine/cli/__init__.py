"""The ``unsamv2`` command line: the only part of the engine that knows about argparse.

Commands (see ``docs/cli.md`` for the full reference)::

    unsamv2 segment IMAGE --point X,Y[,pos|neg] ... --granularity G -o OUT.tif [--json META.json]
    unsamv2 sweep IMAGE --point X,Y ... --granularities 0.1,0.5,1.0|START:STOP:N -o OUT.tif [--table T.csv]
    unsamv2 auto | hierarchy | embed | propagate | pseudo-label | finetune | evaluate | synth | serve ...
    unsamv2 models [--download NAME] [--json]
    unsamv2 info [CHECKPOINT] [--json]
    unsamv2 convert IN -o OUT --to unsamv2|sam2|adapter [--adapter PATH] [--base PATH]

Layout: :mod:`.options` (shared option groups and value parsers), :mod:`.loading` (image, prompt,
model and device loading), :mod:`.output` (messages, summaries, JSON, exit codes, user errors), and
one module per command with ``register(subparsers)`` and ``run(args)`` (``auto`` registers
``hierarchy`` too; :mod:`.remote` is the ``--server`` path of ``segment`` and ``sweep``). The
feature packages (``automatic``, ``train``, ``pseudo`` ...) expose plain functions and never import
this package.

Import cost is part of the contract: this package imports only the standard library at import
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
import sys
from collections.abc import Sequence

from unsamv2_engine.cli import (
    auto,
    convert,
    embed,
    evaluate,
    finetune,
    info,
    models,
    napari,
    pretrain_mini,
    propagate,
    pseudo_label,
    segment,
    serve,
    sweep,
    synth,
)
from unsamv2_engine.cli.options import allow_negative_values
from unsamv2_engine.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    PROG,
    engine_version,
    user_error_message,
)

__all__ = ["build_parser", "main"]

#: The commands in the order ``unsamv2 --help`` lists them.
COMMANDS = (segment, sweep, auto, embed, models, info, convert, napari, synth, evaluate, finetune, propagate,
            pseudo_label, serve, pretrain_mini)


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``unsamv2`` argument parser (importing nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UnSAMv2: segment anything at any granularity (SAM 2.1 + a granularity module).",
        epilog="Run 'unsamv2 COMMAND --help' for the options of a command. Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {engine_version()}")
    allow_negative_values(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


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
        message = user_error_message(exc)
        if message is None or args.traceback:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
