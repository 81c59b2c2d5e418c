"""Run ``unsamv2 finetune`` in a child process and follow it (Qt-free, so it is testable without a GUI).

The plugin never trains inside napari's process: a crash, a CUDA out-of-memory or a long run must
not take the viewer down. :class:`FinetuneJob` starts ``python -m unsamv2_engine finetune ...
--json-progress``, reads the JSON lines the command prints on stdout (one event per line, see
``docs/fine-tuning.md``), and hands each event to a callback on its reader thread. ``cancel()``
sends SIGINT, on which the command saves a checkpoint and exits with code 130; if it has not
exited after ``grace_s`` seconds it is terminated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FinetuneOptions", "FinetuneJob", "JobResult", "RemoteFinetuneJob"]

Event = dict[str, Any]


@dataclass
class FinetuneOptions:
    """The options of one fine-tuning run, as the widget collects them.

    ``base`` is a checkpoint path or a registry model name; ``output`` the adapter file to write.
    """

    images: str
    base: str
    output: str
    pseudo_labels: str | None = None
    max_steps: int = 200
    trainable: str = "granularity"
    device: str = "auto"
    extra: Sequence[str] = field(default_factory=tuple)

    def command(self, python: str = sys.executable) -> list[str]:
        """The argument vector of the child process."""
        argv = [python, "-m", "unsamv2_engine", "finetune", "--images", self.images, "--base", self.base,
                "-o", self.output, "--max-steps", str(self.max_steps), "--trainable", self.trainable,
                "--device", self.device, "--json-progress"]
        if self.pseudo_labels:
            argv += ["--pseudo-labels", self.pseudo_labels]
        return argv + list(self.extra)


@dataclass
class JobResult:
    """How a run ended: ``status`` is "done", "cancelled" or "failed"."""

    status: str
    returncode: int
    adapter: str | None
    message: str


class FinetuneJob:
    """One ``unsamv2 finetune`` child process.

    ``on_event(event)`` receives every JSON event (a dict with an ``"event"`` key); ``on_exit(result)``
    is called once when the process has ended. Both run on the job's reader thread.
    """

    def __init__(self, options: FinetuneOptions, *, on_event: Callable[[Event], None] | None = None,
                 on_exit: Callable[[JobResult], None] | None = None, grace_s: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        self.options = options
        self._on_event = on_event or (lambda event: None)
        self._on_exit = on_exit or (lambda result: None)
        self._grace_s = grace_s
        self._env = env
        self._process: subprocess.Popen[str] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._cancelled = False
        self._adapter: str | None = None
        self._error: str | None = None
        self._threads: list[threading.Thread] = []
        self.result: JobResult | None = None
        self.events: list[Event] = []

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child process (returns at once)."""
        if self._process is not None:
            raise RuntimeError("this fine-tuning job was already started; create a new one")
        Path(self.options.output).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._process = subprocess.Popen(
            self.options.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
            start_new_session=True)  # its own process group: napari's Ctrl-C does not reach it
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True, name="finetune-stderr"),
                         threading.Thread(target=self._read_stdout, daemon=True, name="finetune-stdout")]
        for thread in self._threads:
            thread.start()

    def cancel(self) -> None:
        """Ask the run to stop: SIGINT (it saves a checkpoint and exits), then terminate after the grace time."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._cancelled = True
        try:
            process.send_signal(signal.SIGINT if os.name == "posix" else signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except (OSError, ValueError):
            process.terminate()
            return

        def escalate() -> None:
            try:
                process.wait(self._grace_s)
            except subprocess.TimeoutExpired:
                process.terminate()

        threading.Thread(target=escalate, daemon=True, name="finetune-cancel").start()

    def wait(self, timeout: float | None = None) -> JobResult | None:
        """Block until the job has ended and its result is known (tests, scripts)."""
        for thread in self._threads:
            thread.join(timeout)
        return self.result

    # ------------------------------------------------------------------ reader threads
    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip()
            if line:
                self._stderr_tail.append(line)

    def _read_stdout(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            event = _parse_event(line)
            if event is None:
                continue
            if event.get("event") == "done":
                self._adapter = event.get("adapter") or event.get("output") or self._adapter
            elif event.get("event") == "error":
                self._error = str(event.get("message", "")) or None
            self.events.append(event)
            self._on_event(event)
        returncode = process.wait()
        self._threads[0].join(5.0)
        self.result = self._result(returncode)
        self._on_exit(self.result)

    def _result(self, returncode: int) -> JobResult:
        if returncode == 0 and self._adapter:
            return JobResult("done", returncode, self._adapter, f"adapter written to {self._adapter}")
        if self._cancelled:
            return JobResult("cancelled", returncode, None, "fine-tuning cancelled (the last checkpoint is kept; "
                             "tick 'resume' and start again to continue)")
        detail = self._error or _last_error_line(self._stderr_tail) or f"exit code {returncode}"
        return JobResult("failed", returncode, None, f"fine-tuning failed: {detail}")


class RemoteFinetuneJob:
    """One fine-tuning run on an ``unsamv2 serve`` server (started with ``--data-root``), with the interface of
    :class:`FinetuneJob`.

    ``options.images``, ``pseudo_labels`` and ``output`` are paths **on the server** (absolute, or relative to
    its data root); ``base`` and ``device`` are the server's (its model's checkpoint and device) and ignored
    here. The run gets its own connection to ``url``, so the widget's session keeps decoding meanwhile;
    ``cancel()`` asks the server to save a checkpoint after the current step.
    """

    def __init__(self, options: FinetuneOptions, url: str, token: str | None, *,
                 on_event: Callable[[Event], None] | None = None,
                 on_exit: Callable[[JobResult], None] | None = None) -> None:
        self.options = options
        self.url, self.token = url, token
        self._on_event = on_event or (lambda event: None)
        self._on_exit = on_exit or (lambda result: None)
        self._client = None
        self._done = threading.Event()
        self._cancelled = False
        self.result: JobResult | None = None
        self.events: list[Event] = []

    @property
    def running(self) -> bool:
        return self._client is not None and not self._done.is_set()

    def request(self):
        """The :class:`~unsamv2_engine.protocol.FineTune` request of these options."""
        from unsamv2_engine import protocol as p

        return p.FineTune(self.options.images, self.options.output, pseudo_labels=self.options.pseudo_labels,
                          max_steps=self.options.max_steps, trainable=self.options.trainable,
                          resume="--resume" in self.options.extra)

    def start(self) -> None:
        """Connect and send the request (returns at once); raises RemoteEngineError when no server answers."""
        from unsamv2_engine.client import EngineClient, RemoteTransport

        if self._client is not None:
            raise RuntimeError("this fine-tuning job was already started; create a new one")
        self._client = EngineClient(RemoteTransport(self.url, self.token))
        self._client.submit(self.request(), self._on_reply)

    def cancel(self) -> None:
        """Ask the server to stop the run (it saves a checkpoint after the current step)."""
        if self.running:
            self._cancelled = True
            self._client.cancel()

    def wait(self, timeout: float | None = None) -> JobResult | None:
        """Block until the run has ended and its result is known (tests, scripts)."""
        self._done.wait(timeout)
        return self.result

    def _on_reply(self, reply) -> None:
        from unsamv2_engine import protocol as p

        if isinstance(reply, p.FineTuneEvent):
            self.events.append(reply.event)
            self._on_event(reply.event)
            return
        if isinstance(reply, p.Progress):
            return
        if isinstance(reply, p.FineTuned):
            if reply.cancelled:
                result = JobResult("cancelled", 130, None, f"fine-tuning cancelled at step {reply.steps} (checkpoint "
                                   f"{reply.checkpoint} on the server; tick 'resume' and start again to continue)")
            else:
                loss = f", final loss {reply.final_loss:.4f}" if reply.final_loss is not None else ""
                result = JobResult("done", 0, reply.adapter, f"adapter written on the server: {reply.adapter} "
                                   f"({reply.steps} steps{loss})")
        elif isinstance(reply, p.Failure):
            result = JobResult("failed", 1, None, f"fine-tuning failed on the server: {reply.message}")
        else:
            return
        self.result = result
        self._done.set()
        threading.Thread(target=self._client.close, daemon=True, name="finetune-close").start()
        self._on_exit(result)


def _parse_event(line: str) -> Event | None:
    """One stdout line -> an event dict, or None for anything that is not a JSON object with "event"."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _last_error_line(lines: Sequence[str]) -> str | None:
    """The most useful stderr line: the ``unsamv2: error: ...`` one, else the last line."""
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else None
