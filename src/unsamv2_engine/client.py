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
          p.Stopped, p.Propagated, p.FineTuned)


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
    """How an :class:`EngineClient` reaches its engine: a thread, a process or a server."""

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
        of kind ``Cancelled``). Works while the engine is busy: the flag is shared, not queued.
        """
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
        ``EngineDied`` :class:`~unsamv2_engine.protocol.Failure` instead of waiting forever.
        """
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


class RemoteEngineError(ConnectionError):
    """The engine server cannot be used: not reachable, token refused, versions differ (the message says
    what to do).
    """


class _RemoteCancel:
    """``cancel_event`` of a remote engine: ``set()`` sends a Cancel message (it is handled at once, even
    while the client's job runs).
    """

    def __init__(self, transport: RemoteTransport) -> None:
        self._transport = transport

    def set(self) -> None:
        from unsamv2_engine import wire

        self._transport.send_control(wire.Cancel())


class RemoteTransport:
    """The engine on an ``unsamv2 serve`` server (``ws://host:port``, or ``wss://`` behind a TLS proxy).

    token: sent as ``Authorization: Bearer TOKEN`` (default: the ``UNSAMV2_TOKEN`` variable). ``start``
    connects and shakes hands; it raises :class:`RemoteEngineError` with a message for the user when
    the server is not there, refuses the token, or runs another protocol version. Afterwards a lost
    connection (server stopped or restarted, network cut: noticed by keepalive pings within
    ``ping_timeout`` s) answers every request still waiting with a Failure of kind ``ConnectionLost``,
    and later requests get the same at once: nothing waits forever. :attr:`welcome` holds the server's
    version, device, model and limits.

    ping_interval / ping_timeout: keepalive pings every ``ping_interval`` s; no pong within ``ping_timeout``
    s counts as a cut network (default: the ``UNSAMV2_PING_INTERVAL`` / ``UNSAMV2_PING_TIMEOUT`` variables,
    else 10 and 20 s).
    """

    def __init__(self, url: str, token: str | None = None, *, open_timeout: float = 10.0,
                 ping_interval: float | None = None, ping_timeout: float | None = None) -> None:
        import os

        ping_interval = ping_interval if ping_interval is not None else _env_seconds("UNSAMV2_PING_INTERVAL", 10.0)
        ping_timeout = ping_timeout if ping_timeout is not None else _env_seconds("UNSAMV2_PING_TIMEOUT", 20.0)

        if not url.startswith(("ws://", "wss://")):
            raise RemoteEngineError(f"server URL {url!r} must start with ws:// (or wss:// behind a TLS proxy), "
                                    "e.g. ws://gpu-box:8765")
        self.url = url
        self.token = token if token is not None else os.environ.get("UNSAMV2_TOKEN") or None
        self.open_timeout, self.ping_interval, self.ping_timeout = open_timeout, ping_interval, ping_timeout
        self.cancel_event = _RemoteCancel(self)
        self.welcome = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._conn = None
        self._on_reply: Callback | None = None
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._reader: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ connecting
    def start(self, on_reply: Callback) -> None:
        import inspect
        from urllib.parse import urlsplit

        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        from unsamv2_engine import __version__, wire

        self._on_reply = on_reply
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        host = urlsplit(self.url).hostname or ""
        local = host in ("localhost", "127.0.0.1", "::1")
        options = {"proxy": None} if local else {}
        if "legacy" in inspect.signature(connect).parameters:  # websockets >= 17: a plain connection, no `with`
            options["legacy"] = True
        try:
            self._conn = connect(self.url, additional_headers=headers, compression=None, max_size=None,
                                 open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                                 ping_timeout=self.ping_timeout, close_timeout=2, **options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise RemoteEngineError(
                    f"the engine server at {self.url} refused the token ("
                    f"{'none was given' if not self.token else 'wrong token'}): set UNSAMV2_TOKEN (CLI) or the "
                    "widget's token field to the token the server was started with") from None
            raise RemoteEngineError(f"the engine server at {self.url} answered HTTP {status}: is it an unsamv2 "
                                    "server ('unsamv2 serve')?") from None
        except InvalidURI as exc:
            raise RemoteEngineError(f"bad server URL {self.url!r}: {exc}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise RemoteEngineError(
                f"no engine server answers at {self.url} ({_reason(exc)}): start one on the GPU machine with "
                "'unsamv2 serve' and check the address, the port and any SSH tunnel") from None
        try:
            self._conn.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, __version__)))
            answer = wire.decode(self._conn.recv(timeout=self.open_timeout))
        except Exception as exc:  # noqa: BLE001
            self._conn.close()
            raise RemoteEngineError(f"the engine server at {self.url} did not complete the handshake "
                                    f"({_reason(exc)})") from None
        if isinstance(answer, wire.Refused):
            self._conn.close()
            raise RemoteEngineError(f"the engine server at {self.url} refused this client: {answer.message}")
        if not isinstance(answer, wire.Welcome):
            self._conn.close()
            raise RemoteEngineError(f"{self.url} is not an unsamv2 engine server (it answered "
                                    f"{type(answer).__name__})")
        self.welcome = answer
        self._reader = threading.Thread(target=self._read, name="unsamv2-remote-replies", daemon=True)
        self._reader.start()

    @property
    def where(self) -> str:
        """``server ws://host:port, cuda:0`` (for status lines)."""
        device = self.welcome.device if self.welcome is not None else "?"
        return f"server {self.url}, {device}"

    # ------------------------------------------------------------------ traffic
    def send(self, request: p.Request) -> None:
        from unsamv2_engine import wire

        if isinstance(request, p.Shutdown):
            self._fail(request.request_id, "Stopped")
            return
        with self._lock:
            lost = self._lost
            if lost is None:
                self._pending.add(request.request_id)
        if lost is not None:
            self._fail(request.request_id, lost)
            return
        try:
            frame = wire.encode(request)
        except wire.WireError as exc:
            self._fail(request.request_id, str(exc), kind="RequestRefused")
            return
        limit = self.welcome.limits.get("max_frame_bytes") if self.welcome else None
        if limit is not None and len(frame) > limit:
            self._fail(request.request_id, f"request too large: {len(frame) / 2**20:.1f} MiB compressed, the server "
                                           f"accepts frames of at most {limit / 2**20:.1f} MiB (crop or downsample "
                                           "the image, or raise the server's --max-frame-mb)", kind="RequestRefused")
            return
        try:
            self._conn.send(frame)
            self.bytes_sent += len(frame)
        except Exception as exc:  # noqa: BLE001 - the reader thread reports the loss for the others
            self._fail(request.request_id, self._loss_message(exc))

    def send_control(self, message) -> None:
        """A control message (Cancel) without a reply; dropped if the connection is gone."""
        from unsamv2_engine import wire

        if self._lost is None and self._conn is not None:
            try:
                self._conn.send(wire.encode(message))
            except Exception:  # noqa: BLE001
                pass

    def _read(self) -> None:
        from unsamv2_engine import wire

        while True:
            try:
                frame = self._conn.recv()
            except Exception as exc:  # noqa: BLE001 - ConnectionClosed, OSError: the server is gone
                if not self._closing:  # closed by this client: what was still waiting is simply dropped
                    self._lose(self._loss_message(exc))
                return
            self.bytes_received += len(frame)
            try:
                reply = wire.decode(frame)
            except wire.WireError as exc:
                log.error("undecodable reply from %s: %s", self.url, exc)
                continue
            if isinstance(reply, _FINAL):
                with self._lock:
                    self._pending.discard(reply.request_id)
            self._on_reply(reply)

    def _loss_message(self, exc: BaseException) -> str:
        from websockets.exceptions import ConnectionClosed

        from unsamv2_engine import remote_server as rs

        code = getattr(getattr(exc, "rcvd", None), "code", None) if isinstance(exc, ConnectionClosed) else None
        reason = getattr(getattr(exc, "rcvd", None), "reason", "") if code is not None else ""
        if code == rs.CLOSE_IDLE:
            return f"the engine server at {self.url} closed this idle session ({reason})"
        if code == rs.CLOSE_SHUTDOWN:
            return f"the engine server at {self.url} was shut down; reconnect when it is back"
        if code == 1009:
            return (f"the engine server at {self.url} refused a message larger than its frame limit and closed the "
                    "connection: use a smaller image, or raise the server's --max-frame-mb")
        return (f"lost the connection to the engine server at {self.url} ({_reason(exc)}): the server stopped or "
                "restarted, or the network is cut; its embeddings are gone, reconnect (load the model again)")

    def _lose(self, message: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = message
            message = self._lost
            pending, self._pending = sorted(self._pending), set()
        for rid in pending:
            self._fail(rid, message)

    def _fail(self, request_id: int, message: str, kind: str = "ConnectionLost") -> None:
        if message == "Stopped":
            self._on_reply(p.Stopped(request_id))
            return
        with self._lock:
            self._pending.discard(request_id)
        self._on_reply(p.Failure(request_id, kind, message, True))

    @property
    def connected(self) -> bool:
        return self._lost is None and self._conn is not None

    def close(self, timeout: float) -> None:
        self._closing = True
        if self._conn is not None:
            with self._lock:
                if self._lost is None:
                    self._lost = f"the connection to {self.url} was closed by this client"
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
        if self._reader is not None:
            self._reader.join(timeout)


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the variable ``name`` (unset or invalid: ``default``)."""
    import os

    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    if not value > 0:
        return default
    return value


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
