"""What the command line tells its user: stage messages, warnings, result lines, JSON, exit codes.

Progress and stage messages go to stderr (silenced by ``-q``); stdout carries only short summaries
(or JSON where asked), so it can be piped. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unsamv2_engine.errors import UnSAMv2Error, user_error_message  # noqa: F401 (re-exported)

PROG = "unsamv2"
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CliError(UnSAMv2Error):
    """A user error found by the command line itself (the message says what to do)."""


def say(args: argparse.Namespace, message: str) -> None:
    """Print a stage message on stderr (silenced by ``--quiet``)."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print ``unsamv2: warning: MESSAGE`` on stderr (never silenced)."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def summary(args: argparse.Namespace, line: str) -> None:
    """Print a result line on stdout (on stderr when stdout carries JSON)."""
    print(line, file=sys.stderr if getattr(args, "json", None) == "-" else sys.stdout, flush=True)


def summarise_hierarchy(args: argparse.Namespace, table: list[dict[str, Any]], granularities: list[float],
                        masks_per_level: list[int]) -> None:
    """The result lines of ``hierarchy``: what was written, then objects (of masks) per level."""
    per_level = [sum(1 for row in table if row["level"] == i) for i in range(len(granularities))]
    outputs = [name for name in (args.table, args.json if args.json != "-" else None) if name]
    summary(args, f"wrote {args.output} ({len(granularities)} levels, {len(table)} objects)"
            + "".join(f" and {name}" for name in outputs))
    for i, g in enumerate(granularities):
        summary(args, f"  level {i:>2}  g {g:<6g} objects {per_level[i]:>6}  (of {masks_per_level[i]} masks)")


def emit_json(path: str | None, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (``-``: stdout); nothing when ``path`` is None."""
    if path is None:
        return
    from unsamv2_engine.io import to_jsonable, write_json

    if path == "-":
        print(json.dumps(to_jsonable(document), indent=2))
    else:
        write_json(path, document)


def engine_version() -> str:
    """The installed engine's version string."""
    from unsamv2_engine import __version__

    return __version__
