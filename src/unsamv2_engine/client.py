"""Talk to the engine through the protocol, without blocking the caller.

``EngineClient(ThreadTransport(...))`` runs the engine in a worker thread of this process (tests,
scripts); ``EngineClient(ProcessTransport(...))`` runs it in a separate engine process, which
frees all of its memory (GPU included) when closed and never competes with the GUI for the GIL.
A remote engine would be one more transport: the client and the protocol stay the same.

Decoding requests (:class:`~unsamv2_engine.protocol.Predict`) follow **latest wins**: while one
is being computed, a newer one replaces any that is still waiting, so moving a dial quickly never
builds a queue. Superseded requests get no reply.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from unsamv2_engine import protocol as p

log = logging.getLogger(__name__)
Callback = Callable[[p.Reply], None]
_FINAL = (p.ModelLoaded, p.ImageEmbedded, p.Decoded, p.SweepDecoded, p.Segmented, p.HierarchyBuilt, p.Failure,
          p.Stopped, p.Propagated)


#: ``Failure.kind`` of the requests pending when the engine process ended (crashed, killed, out of memory).
ENGINE_DIED = "EngineDied"


class EngineRequestError(RuntimeError):
    """Raised by :meth:`EngineClient.call` when the engine answers with a Failure."""

    def __init__(self, failure: p.Failure) -> None:
        text = failure.message if failure.user_error else (
            f"engine error {failure.kind}: {failure.message}" + (f"\n{failure.traceback}" if failure.traceback else ""))
        super().__init__(text)
        self.failure = failure

    @property
    def engine_died(self) -> bool:
        """Whether the request failed because the engine process ended (restart the engine)."""
        return self.failure.kind == ENGINE_DIED


class Transport(Protocol):
    cancel_event: object  # threading.Event or multiprocessing Event shared with the engine

    def start(self, on_reply: Callback) -> None: ...
    def send(self, request: p.Request) -> None: ...
    def close(self, timeout: float) -> None: ...


class EngineClient:
    """Submit requests; replies arrive on a background thread through the given callbacks."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callback | None] = {}
        self._decode_in_flight: int | None = None
        self._decode_waiting: tuple[p.Predict, Callback | None] | None = None
        self._closed = False
        transport.start(self._on_reply)

    def submit(self, request: p.Request, callback: Callback | None = None) -> int:
        """Send ``request``; ``callback`` gets its progress messages and its final reply."""
        if self._closed:
            raise RuntimeError("the engine client is closed")
        with self._lock:
            if isinstance(request, p.Predict):
                if self._decode_in_flight is not None:
                    self._decode_waiting = (request, callback)  # replaces an older waiting one
                    return request.request_id
                self._decode_in_flight = request.request_id
            self._callbacks[request.request_id] = callback
        self._transport.send(request)
        return request.request_id

    def call(self, request: p.Request, timeout: float | None = None) -> p.Reply:
        """Send and wait for the final reply; a Failure raises :class:`EngineRequestError`."""
        done = threading.Event()
        box: list[p.Reply] = []

        def on_reply(reply: p.Reply) -> None:
            if isinstance(reply, _FINAL):
                box.append(reply)
                done.set()

        self.submit(request, on_reply)
        if not done.wait(timeout):
            raise TimeoutError(f"no reply to {p.describe(request)} within {timeout} s")
        if isinstance(box[0], p.Failure):
            raise EngineRequestError(box[0])
        return box[0]

    def cancel(self) -> None:
        """Stop the running whole-image job at its next batch (it then answers with a Failure
        of kind ``Cancelled``). Works while the engine is busy: the flag is shared, not queued."""
        self._transport.cancel_event.set()

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport.close(timeout)

    def _on_reply(self, reply: p.Reply) -> None:
        final = isinstance(reply, _FINAL)
        with self._lock:
            callback = self._callbacks.pop(reply.request_id, None) if final else \
                self._callbacks.get(reply.request_id)
            waiting = None
            if final and reply.request_id == self._decode_in_flight:
                self._decode_in_flight = None
                if self._decode_waiting is not None:
                    waiting, self._decode_waiting = self._decode_waiting, None
                    self._decode_in_flight = waiting[0].request_id
                    self._callbacks[waiting[0].request_id] = waiting[1]
        if waiting is not None:
            self._transport.send(waiting[0])
        if callback is not None:
            try:
                callback(reply)
            except Exception:  # a front end's callback must not kill the reply thread
                log.exception("engine reply callback failed for %s", p.describe(reply))


# ------------------------------------------------------------------------------------ transports
class ThreadTransport:
    """The engine in a worker thread of this process (tests, scripts, the plugin's in-process mode)."""

    def __init__(self, service=None) -> None:
        from unsamv2_engine.service import EngineService

        self.service = service or EngineService()
        self.cancel_event = self.service.cancel_event
        self._queue: queue.Queue[p.Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self, on_reply: Callback) -> None:
        def loop() -> None:
            while (request := self._queue.get()) is not None:
                on_reply(self.service.handle(request, on_reply))
                if isinstance(request, p.Shutdown):
                    break

        self._thread = threading.Thread(target=loop, name="unsamv2-engine", daemon=True)
        self._thread.start()

    def send(self, request: p.Request) -> None:
        self._queue.put(request)

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)


class ProcessTransport:
    """The engine in its own process (``spawn``), talking over a pipe."""

    def __init__(self, *, torch_threads: int | None = None) -> None:
        self._torch_threads = torch_threads
        self._ctx = mp.get_context("spawn")
        self.cancel_event = self._ctx.Event()
        self._conn = None
        self._process = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._pending: set[int] = set()  # request ids sent and not answered yet
        self._stopped = False  # a Stopped reply arrived: the engine ended on request
        self._dead_message: str | None = None

    def start(self, on_reply: Callback) -> None:
        from unsamv2_engine.server import serve_connection

        ctx = self._ctx
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=serve_connection, args=(child, self._torch_threads, self.cancel_event),
                                    name="unsamv2-engine", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        self._on_reply = on_reply

        def read() -> None:
            while True:
                try:
                    reply = parent.recv()
                except (EOFError, OSError):
                    break
                if isinstance(reply, _FINAL):
                    with self._send_lock:
                        self._pending.discard(reply.request_id)
                on_reply(reply)
                if isinstance(reply, p.Stopped):
                    self._stopped = True
                    break
            if not self._stopped:
                self._engine_died(on_reply)

        self._reader = threading.Thread(target=read, name="unsamv2-engine-replies", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """Whether the engine process is running and has not ended on its own."""
        return self._process is not None and self._process.is_alive() and self._dead_message is None

    def send(self, request: p.Request) -> None:
        """Send ``request``; if the engine process has ended, it is answered at once with an
        ``EngineDied`` :class:`~unsamv2_engine.protocol.Failure` instead of waiting forever."""
        with self._send_lock:
            if self._dead_message is None:
                try:
                    self._conn.send(request)
                    self._pending.add(request.request_id)
                    return
                except (OSError, EOFError, ValueError):  # broken pipe: the reader reports the death
                    pass
        self._reader.join(5.0)
        self._on_reply(p.Failure(request.request_id, ENGINE_DIED, self._dead_message or "the engine process ended",
                                 True))

    def _engine_died(self, on_reply: Callback) -> None:
        """Fail every pending request: the engine process ended without being asked to."""
        self._process.join(1.0)
        code = self._process.exitcode
        how = ("was killed by signal " + str(-code)) if code is not None and code < 0 else f"exited with code {code}"
        self._dead_message = (f"the engine process (pid {self._process.pid}) {how} while working, perhaps out of "
                              "memory; the request was lost. Restart the engine (the widget's 'Restart engine' "
                              "button, or a new EngineClient) and try again, with a smaller image or model if it "
                              "happens again.")
        with self._send_lock:
            pending, self._pending = sorted(self._pending), set()
        for request_id in pending:
            on_reply(p.Failure(request_id, ENGINE_DIED, self._dead_message, True))

    def close(self, timeout: float) -> None:
        if self._process is None:
            return
        try:
            self.send(p.Shutdown())
        except (OSError, BrokenPipeError):
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        self._conn.close()
