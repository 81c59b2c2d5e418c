"""``unsamv2 info``: versions, devices, weights cache, intensity rule; optionally describe a checkpoint."""

from __future__ import annotations

import argparse
import json
import platform
import textwrap
from typing import Any

from unsamv2_engine.cli.loading import reading_checkpoints
from unsamv2_engine.cli.options import add_common_options, finish, subparser
from unsamv2_engine.cli.output import EXIT_OK


def register(sub: Any) -> None:
    """Add ``info`` to the ``unsamv2`` subparsers."""
    parser = subparser(
        sub, "info", "versions, devices, cache, intensity rule; describe a checkpoint",
        "Print versions, available devices, the weights cache directory and the intensity rule; "
        "with CHECKPOINT, also describe that file (kind, model size, tensors, parameters).",
        "examples:\n  unsamv2 info\n  unsamv2 info ~/.cache/unsamv2/unsamv2_plus_ckpt.pt --json")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a checkpoint or adapter file, or a cached registry model name")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    finish(parser, [add_common_options], run)


def run(args: argparse.Namespace) -> int:
    """``unsamv2 info``: versions, devices, cache, intensity rule, and optionally a checkpoint."""
    from unsamv2_engine import weights
    from unsamv2_engine.intensity import describe_intensity_rule

    info: dict[str, Any] = {"versions": _versions(), "devices": _devices(), "cache_dir": str(weights.cache_dir()),
                            "cached_models": [r["name"] for r in weights.list_models() if r["cached"]],
                            "intensity_rule": describe_intensity_rule()}
    if args.checkpoint:
        from unsamv2_engine.model.checkpoint import describe_checkpoint

        path = weights.resolve_checkpoint(args.checkpoint)
        with reading_checkpoints(path):
            info["checkpoint"] = describe_checkpoint(path)
    if args.json:
        from unsamv2_engine.io import to_jsonable

        print(json.dumps(to_jsonable(info), indent=2))
    else:
        print(_format_info(info))
    return EXIT_OK


def _versions() -> dict[str, str]:
    """Return the installed versions of the packages that matter for bug reports."""
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
    """Return ``devices.available_devices()``, or why it could not be asked."""
    try:
        from unsamv2_engine.devices import available_devices
    except ImportError as exc:
        return {"error": f"torch cannot be imported: {exc}"}
    return available_devices()


def _format_info(info: dict[str, Any]) -> str:
    """Format ``info`` as readable text."""
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
    """Format a value for the text output: booleans as yes/no, containers as compact JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)
