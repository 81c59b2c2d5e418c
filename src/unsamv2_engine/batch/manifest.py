"""The batch manifest: ``<out>/manifest.json``, one record per input image.

Layout (JSON)::

    {"format": "unsamv2-batch-manifest", "version": 1, "command": "auto", "engine_version": "0.1.0",
     "updated": "2026-...Z", "counts": {"done": 30, "failed": 1, "skipped": 1},
     "items": [{"input": "cells/a.png", "outputs": {"output": "out/a.tif"}, "status": "done",
                "reason": "", "settings": {...}, "seconds": 4.2, "worker": "tcp://127.0.0.1:40213",
                "device": "cpu", "message": "wrote out/a.tif (12 objects ...)", "warnings": []}, ...]}

``status``: ``done`` (made by this run), ``failed`` (``reason`` says why; a re-run tries again) or
``skipped`` (an earlier run made it with the same settings; its outputs are still there). A re-run
skips an item only when its record is done or skipped, its ``settings`` equal the new run's and
every output exists; anything else is redone. ``seconds``: wall time of the item on its worker.
The file is replaced atomically, so an interrupted run leaves the last complete manifest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "STATUSES", "Manifest", "normalize"]

FORMAT = "unsamv2-batch-manifest"
VERSION = 1
STATUSES = ("done", "failed", "skipped")


def normalize(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists, paths -> str), for comparing settings."""
    return json.loads(json.dumps(value, default=str))


class Manifest:
    """Item records of one output folder (keyed by input path), loaded from and saved to ``path``."""

    def __init__(self, path: str | os.PathLike[str], command: str) -> None:
        self.path = Path(path)
        self.command = command
        self.records: dict[str, dict[str, Any]] = {}
        self.note = ""  # why an existing manifest was not used, if so
        self._saved_at = 0.0

    @classmethod
    def load(cls, path: str | os.PathLike[str], command: str) -> Manifest:
        """The manifest at ``path``; empty when there is none, or when it is unreadable or another command's
        (``note`` then says so and the items are redone).
        """
        manifest = cls(path, command)
        if not manifest.path.exists():
            return manifest
        try:
            document = json.loads(manifest.path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT or not isinstance(document.get("items"), list):
                raise ValueError("not a batch manifest")
        except (OSError, ValueError, AttributeError) as exc:
            manifest.note = f"{path} is unreadable ({exc}); every item is redone"
            return manifest
        if document.get("command") != command:
            manifest.note = (f"{path} was written by 'unsamv2 {document.get('command')}'; every item is redone "
                             "(give each command its own output folder)")
            return manifest
        manifest.records = {str(r["input"]): r for r in document["items"] if isinstance(r, dict) and "input" in r}
        return manifest

    def finished(self, input_path: str, outputs: Mapping[str, str], settings: Mapping[str, Any]) -> bool:
        """Whether an earlier run made this item with these ``settings`` and its outputs are all there."""
        record = self.records.get(str(input_path))
        if record is None or record.get("status") not in ("done", "skipped"):
            return False
        if record.get("settings") != normalize(settings):
            return False
        return all(Path(p).exists() for p in outputs.values())

    def skip(self, input_path: str) -> dict[str, Any]:
        """Mark a finished item skipped by this run (its settings, seconds and outputs are kept)."""
        record = dict(self.records[str(input_path)])
        record.update(status="skipped", reason="made by an earlier run with the same settings")
        self.records[str(input_path)] = record
        return record

    def record(self, record: Mapping[str, Any]) -> None:
        """Add or replace the record of ``record["input"]`` (status one of :data:`STATUSES`)."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {record.get('status')!r}")
        self.records[str(record["input"])] = normalize(dict(record))

    def counts(self, inputs: Iterable[str] | None = None) -> dict[str, int]:
        """How many records have each status (only those of ``inputs`` when given)."""
        keys = self.records if inputs is None else [str(i) for i in inputs]
        counts = dict.fromkeys(STATUSES, 0)
        for key in keys:
            status = self.records.get(key, {}).get("status")
            if status in counts:
                counts[status] += 1
        return counts

    def save(self, *, every_s: float = 0.0) -> bool:
        """Write the file atomically; with ``every_s``, only if the last write is older (returns whether it wrote).

        Throttling keeps a batch of thousands of images from rewriting a large file after every item.
        """
        now = time.monotonic()
        if every_s and now - self._saved_at < every_s:
            return False
        from unsamv2_engine import __version__

        document = {"format": FORMAT, "version": VERSION, "command": self.command, "engine_version": __version__,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "counts": self.counts(),
                    "items": sorted(self.records.values(), key=lambda r: str(r["input"]))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._saved_at = now
        return True
