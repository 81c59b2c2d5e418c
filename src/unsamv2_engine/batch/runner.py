"""Run a batch: skip what the manifest says is done, run the rest, record every item, show progress.

:func:`executor` picks where items run: ``workers == 1`` without a scheduler is the command's own
process (:class:`InProcessExecutor`: items one after the other, the model loaded once); anything
else is Dask (:mod:`.cluster`). :func:`run_tasks` is the same loop for both, so the outputs do not
depend on where the items ran. Progress: one bar on stderr (images done of the batch), a warning
line per failed item; the manifest is saved every :data:`SAVE_EVERY_S` seconds and at the end
(also after Ctrl-C or an error, so a re-run resumes).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unsamv2_engine.batch.items import ItemTask, describe_error
from unsamv2_engine.batch.manifest import Manifest

__all__ = ["SAVE_EVERY_S", "BatchSummary", "InProcessExecutor", "executor", "run_tasks"]

SAVE_EVERY_S = 5.0


@dataclass
class BatchSummary:
    """What a batch did: the records of this run by status, its wall time (s) and where it ran."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    where: str = ""
    manifest: str = ""

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)

    def line(self, command: str) -> str:
        """The one-line summary the commands print on stdout."""
        rate = f", {len(self.done) / self.seconds * 60:.1f} images/min" if self.done and self.seconds > 0 else ""
        return (f"{command}: {len(self.done)} done, {len(self.skipped)} skipped (already done), {len(self.failed)} "
                f"failed of {self.total} images in {self.seconds:.1f} s{rate} ({self.where}); manifest {self.manifest}")


class InProcessExecutor:
    """Items one after the other in this process (``--workers 1``, the default)."""

    description = "1 worker, in this process"

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return fn(arg)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            yield task, fn(task)


@contextlib.contextmanager
def executor(*, workers: int = 1, scheduler: str | None = None, device: str = "auto",
             say: Callable[[str], None] = lambda _m: None) -> Iterator[Any]:
    """Where the items run (see the module docstring); the model cache is active inside."""
    if workers == 1 and not scheduler:
        from unsamv2_engine.batch import worker

        worker.activate(None)
        try:
            yield InProcessExecutor()
        finally:
            worker.deactivate()
        return
    from unsamv2_engine.batch.cluster import dask_executor  # imports distributed

    with dask_executor(workers=workers, scheduler=scheduler, device=device, say=say) as ex:
        yield ex


def _failed_record(task: ItemTask, exc: BaseException) -> dict[str, Any]:
    """The record of an item whose task itself failed (its worker died too often, ...)."""
    if type(exc).__name__ == "KilledWorker":
        reason = ("its worker died while running it, on every retry (out of memory or a crash: see the worker logs; "
                  "a re-run tries it again)")
    else:
        reason = describe_error(exc)
    return {"input": task.input, "outputs": dict(task.outputs), "status": "failed", "reason": reason,
            "seconds": None, "worker": None, "device": None, "message": "", "warnings": []}


def run_tasks(tasks: Sequence[ItemTask], fn: Callable[[ItemTask], dict[str, Any]], *, manifest: Manifest,
              settings: Mapping[str, Any], ex: Any, label: str, quiet: bool = False,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              skip_finished: bool = True, skipped: Sequence[dict[str, Any]] = ()) -> BatchSummary:
    """Run ``fn`` on every task not finished in ``manifest`` (same ``settings``, outputs present).

    Args:
        tasks: one per image; ``fn``: :func:`unsamv2_engine.cli.batch.run_cli_item` or :func:`.items.run_pseudo_item`.
        manifest: loaded from the output folder; updated and saved as items finish.
        settings: what decides the outputs (recorded per item; a re-run skips only on equality).
        ex: an executor from :func:`executor`; ``label``: the progress bar's name (the command).
        on_record: called on the client with each finished item's record (after it is recorded).
        skip_finished: skip by the manifest (``pseudo-label`` decides by its JSONs' own settings instead).
        skipped: records of items the caller found done already (recorded as skipped, not run).

    Returns
    -------
        The :class:`BatchSummary` of this run.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    summary = BatchSummary(where=ex.description, manifest=str(manifest.path))
    for record in skipped:
        manifest.record({**record, "settings": dict(settings)})
        summary.skipped.append(record)
    todo = []
    for task in tasks:
        if skip_finished and manifest.finished(task.input, task.outputs, settings):
            summary.skipped.append(manifest.skip(task.input))
        else:
            todo.append(task)
    bar = tqdm(total=len(tasks) + len(skipped), initial=len(summary.skipped), disable=quiet, file=sys.stderr,
               unit="img", desc=label, dynamic_ncols=True)
    try:
        for task, result in ex.map_unordered(fn, todo):
            record = result if isinstance(result, dict) else _failed_record(task, result)
            record["settings"] = dict(settings)
            manifest.record(record)
            getattr(summary, record["status"]).append(record)
            if record["status"] == "failed":
                bar.write(f"unsamv2: warning: {task.input}: {record['reason']}", file=sys.stderr)
            bar.set_postfix_str(f"{len(summary.failed)} failed" if summary.failed else "", refresh=False)
            bar.update(1)
            manifest.save(every_s=SAVE_EVERY_S)
            if on_record is not None:
                on_record(record)
    finally:
        bar.close()
        manifest.save()
        summary.seconds = time.perf_counter() - start
    return summary
