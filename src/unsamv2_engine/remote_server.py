"""The engine behind a WebSocket endpoint (``unsamv2 serve``): one model, one session per client.

Stack: the ``websockets`` library (BSD-3-Clause), its threaded server: one thread per connection,
no event loop to share with torch, HTTP headers for the token, a frame-size limit enforced by the
library before a frame is read, keepalive pings that notice a cut network, and a protocol every
reverse proxy (nginx, Caddy) forwards with TLS. Frames are :mod:`unsamv2_engine.wire` (never pickle).

Per client: an :class:`~unsamv2_engine.service.EngineService` on the shared model (its own
embedding cache and propagation session), a worker thread, and a cancel flag. Embeddings stay on
the server; decode requests carry points and get back a compressed mask. Engine work of all clients
is serialised by one lock (one accelerator). A client that disconnects, or stays idle longer than
the idle timeout, loses its session and its memory is released (GPU cache included).

Fine-tuning (:class:`~unsamv2_engine.protocol.FineTune`) runs in the client's worker thread too, on a fresh
copy of the base checkpoint and outside the engine lock (other clients keep decoding meanwhile), one run at
a time, and only on folders inside the operator's ``data_root`` (:mod:`unsamv2_engine.remote_finetune`).
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import logging
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus

from unsamv2_engine import __version__, wire
from unsamv2_engine import protocol as p

log = logging.getLogger(__name__)

#: Close codes (application range 4000-4999) the client turns into messages.
CLOSE_IDLE = 4001
CLOSE_SHUTDOWN = 4002
CLOSE_REFUSED = 4003


@dataclass
class ServerLimits:
    """What one client may send. max_image_pixels: pixels of one 2D image (or stack slice); max_request_bytes:
    decoded arrays of one request (a stack counts whole); max_frame_bytes: one compressed frame, refused by the
    WebSocket layer before it is read; idle_timeout_s: a client that sends nothing for this long (and has no
    job running) is disconnected and its session freed; ping_interval_s / ping_timeout_s: keepalive pings to
    every client, and how long a pong may take before the connection counts as cut and the session is freed.
    """

    max_image_pixels: int = 8192 * 8192
    max_request_bytes: int = 2 << 30
    max_frame_bytes: int = 1 << 30
    idle_timeout_s: float = 900.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 20.0


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EngineServer:
    """``model`` (a loaded UnSAMv2Model) served on ``host:port`` (port 0: a free one, see :attr:`port`).

    token: required from every client (``Authorization: Bearer TOKEN``, compared in constant time);
    mandatory when ``host`` is not a loopback address. data_root: the folder whose images clients may
    fine-tune on and where they may write adapters (None: FineTune requests are refused); checkpoint: the
    file ``model`` was loaded from (the base of those runs).
    """

    def __init__(self, model, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 limits: ServerLimits | None = None, data_root=None, checkpoint=None) -> None:
        from unsamv2_engine.remote_finetune import RemoteFinetuner

        if not is_loopback(host) and not token:
            raise ValueError(f"refusing to listen on {host} without a token: anyone who can reach it could use the "
                             "GPU. Give --token TOKEN (or set UNSAMV2_TOKEN), or keep the default --host 127.0.0.1")
        self.model = model
        self.host, self.token = host, token
        self.limits = limits or ServerLimits()
        self.engine_lock = threading.Lock()
        self._clients: set[_ClientSession] = set()
        self._clients_lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._port = port
        self.finetuner = RemoteFinetuner(data_root, checkpoint, getattr(model, "device", "cpu"))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        """Listen (in a background thread) and return the bound port."""
        from websockets.sync.server import serve

        limit_malloc_arenas()

        self._server = serve(self._handle, self.host, self._port, process_request=self._check_token,
                             compression=None, max_size=self.limits.max_frame_bytes,
                             ping_interval=self.limits.ping_interval_s, ping_timeout=self.limits.ping_timeout_s,
                             close_timeout=min(2.0, self.limits.ping_timeout_s), server_header=f"unsamv2/{__version__}",
                             logger=log)
        self._port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="unsamv2-serve", daemon=True)
        self._thread.start()
        return self._port

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}"

    def serve_forever(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C in the caller)."""
        if self._thread is None:
            self.start()
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop listening and end every session."""
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            client.close(CLOSE_SHUTDOWN, "the server is shutting down")
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def n_sessions(self) -> int:
        """Sessions open now (each holds its client's embeddings)."""
        with self._clients_lock:
            return len(self._clients)

    # ------------------------------------------------------------------ connections
    def _check_token(self, connection, request):
        if self.token is None:
            return None
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        why = "no token given" if not given else "wrong token"
        log.warning("refused %s: %s", connection.remote_address, why)
        return connection.respond(HTTPStatus.UNAUTHORIZED, f"unsamv2 server: {why}\n")

    def _handle(self, connection) -> None:
        try:
            hello = wire.decode(connection.recv(timeout=10), max_array_bytes=0)
        except Exception as exc:  # noqa: BLE001 - a client that cannot say hello is simply dropped
            log.info("dropped %s before the handshake: %s", connection.remote_address, exc)
            return
        if not isinstance(hello, wire.Hello) or hello.protocol != wire.PROTOCOL_VERSION:
            client = getattr(hello, "client_version", "?")
            connection.send(wire.encode(wire.Refused(
                f"version mismatch: this server runs unsamv2 {__version__} (protocol {wire.PROTOCOL_VERSION}), the "
                f"client unsamv2 {client} (protocol {getattr(hello, 'protocol', '?')}); install the same version "
                "on both machines")))
            connection.close(CLOSE_REFUSED, "version mismatch")
            return
        client = _ClientSession(self, connection)  # registered before the Welcome: the client may count on it
        try:
            peer = connection.remote_address
        except OSError:
            peer = "?"
        with self._clients_lock:
            self._clients.add(client)
        model = self.model
        info = None if model is None else asdict(p.ModelLoaded(0, model.info.label, model.info.family,
                                                               model.info.size, model.has_granularity,
                                                               str(model.device)))
        log.info("session opened for %s (%d open)", peer, self.n_sessions)
        try:
            connection.send(wire.encode(wire.Welcome(wire.PROTOCOL_VERSION, __version__,
                                                     str(model.device) if model is not None else "none", info,
                                                     asdict(self.limits))))
            client.run()
        finally:
            with self._clients_lock:
                self._clients.discard(client)
            client.release()
            log.info("session closed for %s (%d open)", peer, self.n_sessions)


class _ClientSession:
    """One connected client: its service (embeddings), its worker thread, its cancel flag."""

    def __init__(self, server: EngineServer, connection) -> None:
        from unsamv2_engine.service import EngineService

        self.server, self.connection = server, connection
        self.cancel_event = threading.Event()
        self.service = EngineService(server.model, cancel_event=self.cancel_event, allow_paths=False)
        self._requests: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._send_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="unsamv2-serve-session", daemon=True)
        self._closed = False

    def run(self) -> None:
        """Read requests until the client leaves, is idle too long, or the connection breaks."""
        from websockets.exceptions import ConnectionClosed

        self._worker.start()
        limits = self.server.limits
        last = time.monotonic()
        try:
            while True:
                try:
                    frame = self.connection.recv(timeout=min(5.0, limits.idle_timeout_s))
                except TimeoutError:
                    if self._busy.is_set() or not self._requests.empty():
                        last = time.monotonic()
                    elif time.monotonic() - last >= limits.idle_timeout_s:
                        self.close(CLOSE_IDLE, f"idle for {limits.idle_timeout_s:g} s: session closed and its "
                                               "memory freed; reconnect to continue")
                        return
                    continue
                last = time.monotonic()
                try:
                    request = wire.decode(frame, max_array_bytes=limits.max_request_bytes,
                                          max_image_pixels=limits.max_image_pixels)
                except wire.WireError as exc:
                    self._send(p.Failure(_request_id(frame), "RequestRefused", str(exc), True))
                    continue
                if isinstance(request, wire.Cancel):
                    self.cancel_event.set()
                elif isinstance(request, p.Shutdown):  # the client leaves; the server keeps serving others
                    self._send(p.Stopped(request.request_id))
                    self.close(1000, "bye")
                    return
                elif isinstance(request, tuple(_REQUESTS)):
                    self._requests.put(request)
                else:
                    self._send(p.Failure(getattr(request, "request_id", -1), "RequestRefused",
                                         f"{type(request).__name__} is not a request", True))
        except ConnectionClosed:
            return

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            if self._closed:
                continue  # the client is gone: what it left queued is dropped
            self._busy.set()
            try:
                if isinstance(request, p.LoadModel):  # the operator chose the model: answer with it
                    reply = self.service.model_info(request.request_id) if self.service.model is not None else \
                        p.Failure(request.request_id, "EngineStateError", "the server has no model loaded", True)
                elif isinstance(request, p.FineTune):  # outside the engine lock: others keep decoding
                    reply = self._finetune(request)
                else:
                    with self.server.engine_lock:
                        reply = self.service.handle(request, self._send)
                self._send(reply)
            finally:
                self._busy.clear()

    def _finetune(self, request: p.FineTune):
        from unsamv2_engine.service import failure_reply

        log.info("fine-tuning requested: %s -> %s", request.images, request.output)
        try:
            return self.server.finetuner.run(request, self._send, self.cancel_event)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reply; the session goes on
            return failure_reply(request.request_id, exc)
        finally:
            release_memory()

    def _send(self, message) -> None:
        try:
            frame = wire.encode(message)
            with self._send_lock:
                self.connection.send(frame)
        except Exception:  # noqa: BLE001 - the client is gone; run() notices and ends the session
            log.debug("could not send %s", p.describe(message))

    def close(self, code: int, reason: str) -> None:
        self.cancel_event.set()
        try:
            self.connection.close(code, reason)
        except Exception:  # noqa: BLE001
            pass

    def release(self) -> None:
        """Stop the worker (a long job at its next batch) and free the session's memory."""
        self._closed = True
        self._requests.put(None)
        deadline = time.monotonic() + 120
        while self._worker.is_alive() and time.monotonic() < deadline:
            self.cancel_event.set()  # again and again: a job that was just starting clears the flag once
            self._worker.join(0.1)
        self.service = None
        release_memory()


_REQUESTS = (p.LoadModel, p.SetImage, p.Predict, p.SweepRequest, p.SegmentAll, p.BuildHierarchy, p.Propagate,
             p.FineTune)


def _request_id(frame) -> int:
    """The request id of a frame that could not be decoded (so the client can match the Failure), else -1."""
    import json
    import struct

    try:
        (length,) = struct.unpack(">I", bytes(frame[:4]))
        header = json.loads(bytes(frame[4:4 + min(length, 1 << 20)]))
        rid = header["fields"]["request_id"]
        return rid if isinstance(rid, int) else -1
    except Exception:  # noqa: BLE001
        return -1


def release_memory() -> None:
    """Give freed memory back: Python garbage, the CUDA caching allocator, glibc's heap (Linux)."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc malloc arenas for the threads created once the server runs (one per connection, each with its own
#: session); see :func:`limit_malloc_arenas`.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number (glibc malloc.h)


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` (Linux; unless ``MALLOC_ARENA_MAX`` is set): with an arena per
    connection thread, memory freed when a client leaves stayed in that thread's arena, and the server's RSS
    stayed 30-100 MiB above its warm baseline after 8 clients left; with 2 arenas it returns to it
    (docs/benchmarks.md). Returns whether the cap was set.
    """
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (tests, benchmarks)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
