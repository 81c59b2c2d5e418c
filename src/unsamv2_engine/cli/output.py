"""What the command line tells its user: stage messages, warnings, result lines, JSON, exit codes.

Progress and stage messages go to stderr (silenced by ``-q``); stdout carries only short summaries
(or JSON where asked), so it can be piped. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unsamv2_engine.errors import UnSAMv2Error, is_user_error

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


def user_error_message(exc: BaseException) -> str | None:
    """Return the one-line message of a user error, or None for a bug (which keeps its traceback).

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
