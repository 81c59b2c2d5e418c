"""``unsamv2 models``: list the model registry, or download one model into the cache."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from typing import Any

from unsamv2_engine.cli.options import add_common_options, finish, subparser
from unsamv2_engine.cli.output import EXIT_OK, CliError, say


def register(sub: Any) -> None:
    """Add ``models`` to the ``unsamv2`` subparsers."""
    parser = subparser(
        sub, "models", "list the known models; download one",
        "List the model registry (name, family, size, approximate size, whether it is cached, cache path), "
        "or download one model into the cache.",
        "examples:\n  unsamv2 models\n  unsamv2 models --download unsamv2-plus")
    parser.add_argument("--download", metavar="NAME", help="download this model into the cache and print its path")
    parser.add_argument("--force", action="store_true", help="with --download: download again even if cached")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    finish(parser, [add_common_options], run)


def run(args: argparse.Namespace) -> int:
    """``unsamv2 models``: list the registry, or download one model."""
    from unsamv2_engine import weights

    if args.download:
        weights.get_entry(args.download)
        say(args, f"downloading {args.download} into {weights.cache_dir()} ...")
        path = weights.download(args.download, progress=not args.quiet, force=args.force)
        print(json.dumps({"name": args.download, "path": str(path)}) if args.json else path)
        return EXIT_OK
    if args.force:
        raise CliError("--force only makes sense with --download NAME")
    rows = weights.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_models_table(rows))
    return EXIT_OK


def format_models_table(rows: list[dict[str, Any]]) -> str:
    """Format the registry as an aligned text table."""
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
    """Left-align columns separated by two spaces (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]
    return "\n".join(lines)
