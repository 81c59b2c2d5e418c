"""The remote engine: wire format, ``unsamv2 serve``'s server, RemoteTransport, failure behaviour.

Every server here listens on 127.0.0.1 on a free port and is stopped by its test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_INPUT, make_cells_image
from unsamv2_engine import protocol as p
from unsamv2_engine import wire
from unsamv2_engine.client import EngineClient, EngineRequestError, RemoteEngineError, RemoteTransport
from unsamv2_engine.remote_server import EngineServer, ServerLimits, free_port
from unsamv2_engine.service import EngineService
from unsamv2_engine.video.data import ObjectPrompt

REPO = Path(__file__).resolve().parents[1]
POINTS = np.array([[40.0, 40.0]])
LABELS = np.array([1])
TOKEN = "test-token-0123"


def wait_until(condition, timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` s pass (False); no fixed sleeps."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def server(tiny_model):
    srv = EngineServer(tiny_model, host="127.0.0.1", port=0, token=TOKEN,
                       limits=ServerLimits(max_image_pixels=200 * 200, max_request_bytes=8 << 20,
                                           max_frame_bytes=4 << 20, idle_timeout_s=600))
    srv.start()
    yield srv
    srv.stop()


def connect(srv, token: str | None = TOKEN) -> EngineClient:
    return EngineClient(RemoteTransport(srv.url, token=token))


# ------------------------------------------------------------------------ wire format
def test_wire_round_trip_keeps_every_value():
    rng = np.random.default_rng(0)
    mask = rng.random((1024, 1024)) > 0.5
    decoded = p.Decoded(7, "img@0", mask, rng.standard_normal((256, 256)).astype(np.float32), 0.75, 0.4, 0.01)
    back = wire.decode(wire.encode(decoded))
    assert back.request_id == 7 and back.image_key == "img@0" and back.score == 0.75
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_array_equal(back.low_res_logits, decoded.low_res_logits)
    prompt = ObjectPrompt(2, 3, np.array([[1.5, 2.5]], np.float32), np.array([1], np.int64), 0.6)
    request = p.Propagate("stack", [prompt], np.arange(24, dtype=np.uint16).reshape(2, 3, 4),
                          contrast_limits=(0.0, 10.0))
    back = wire.decode(wire.encode(request))
    assert isinstance(back.prompts[0], ObjectPrompt) and back.prompts[0].granularity == 0.6
    assert back.contrast_limits == (0.0, 10.0) and back.stack.dtype == np.uint16
    np.testing.assert_array_equal(back.stack, request.stack)
    table = p.HierarchyBuilt(1, "k", [0.5], np.zeros((1, 4, 4), np.uint32), [{"label": 1, "parent": None}], 0.1)
    assert wire.decode(wire.encode(table)).table == [{"label": 1, "parent": None}]


def test_a_decode_of_a_1024_image_is_small_without_logits():
    """A realistic mask (one blob) of a 1024x1024 image: far under 64 KiB as sent."""
    yy, xx = np.mgrid[:1024, :1024]
    mask = np.hypot(yy - 500, xx - 400) < 180
    frame = wire.encode(p.Decoded(1, "img", mask, None, 0.9, 0.5, 0.01))
    assert len(frame) < 8 * 1024
    request = wire.encode(p.Predict("img", POINTS, LABELS, 0.5, want_logits=False))
    assert len(request) < 2048


def test_wire_refuses_before_decompressing():
    bomb = wire.encode(p.SetImage("big", np.zeros((4000, 4000, 3), np.uint8)))  # 48 MB of zeros, ~200 KB sent
    assert len(bomb) < 1 << 20  # 1/200 of what it decompresses to
    with pytest.raises(wire.WireError, match="request too large"):
        wire.decode(bomb, max_array_bytes=1 << 20)
    with pytest.raises(wire.WireError, match="too large"):
        wire.decode(bomb, max_image_pixels=1000 * 1000)
    with pytest.raises(wire.WireError, match="unknown message type"):
        wire.decode(wire.encode(p.Shutdown()).replace(b'"Shutdown"', b'"Shutdowx"'))
    with pytest.raises(wire.WireError):
        wire.decode(b"\x00\x00\x00\x05hello")
    with pytest.raises(wire.WireError, match="cannot be sent"):
        wire.encode(p.SetImage("x", np.zeros(2, object)))


def test_protocol_and_client_import_without_torch():
    """The light install: protocol, wire format and remote client work with torch and sam2 unimportable."""
    code = textwrap.dedent("""
        import sys
        for name in ("torch", "sam2", "torchvision"):
            sys.modules[name] = None  # import torch -> ImportError
        import numpy as np
        from unsamv2_engine import protocol as p, wire
        from unsamv2_engine.client import EngineClient, RemoteTransport
        import unsamv2_engine.cli.remote, unsamv2_engine.cli.serve, unsamv2_engine.cli
        import napari_unsamv2._widget, napari_unsamv2._reader, napari_unsamv2._writer  # the plugin side
        msg = wire.decode(wire.encode(p.Predict("k", np.zeros((1, 2)), np.ones(1, np.int64), 0.5)))
        assert msg.granularity == 0.5
        print("torch-free ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch-free ok" in out.stdout


def test_base_dependencies_are_light():
    """napari/Qt/torch/sam2 are extras: the base install of the package pulls none of them."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "sam2", "napari", "qt", "npe2", "magicgui"):
        assert heavy not in base, heavy
    extras = project["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["engine"]) and any(d.startswith("sam2") for d in extras["engine"])
    assert any(d.startswith("napari") for d in extras["napari"])
    assert "engine" in extras["all"][0] and "napari" in extras["all"][0] and "all" in extras["dev"][0]


# ------------------------------------------------------------------------ server and client
def test_remote_masks_equal_the_local_engine(server, tiny_model):
    image = make_cells_image()
    local = EngineService(tiny_model)
    local.handle(p.SetImage("img", image))
    client = connect(server)
    try:
        loaded = client.call(p.LoadModel(model_name="unsamv2-plus"), timeout=30)
        assert loaded.label == tiny_model.info.label and loaded.device == "cpu"
        assert client.call(p.SetImage("img", image), timeout=120).image_hw == (96, 128)
        for g in (0.2, 0.7):
            remote = client.call(p.Predict("img", POINTS, LABELS, g), timeout=60)
            here = local.handle(p.Predict("img", POINTS, LABELS, g))
            np.testing.assert_array_equal(remote.mask, here.mask)
            np.testing.assert_array_equal(remote.low_res_logits, here.low_res_logits)
            assert remote.score == here.score
        assert client.call(p.Predict("img", POINTS, LABELS, 0.5, want_logits=False), timeout=60).low_res_logits is None
        sweep = client.call(p.SweepRequest("img", POINTS, LABELS, [0.3, 1.0]), timeout=60)
        np.testing.assert_array_equal(sweep.masks,
                                      local.handle(p.SweepRequest("img", POINTS, LABELS, [0.3, 1.0])).masks)
        bad = client.submit  # a user error on the server comes back as a Failure, the session keeps serving
        with pytest.raises(EngineRequestError, match="granularity"):
            client.call(p.Predict("img", POINTS, LABELS, 3.0), timeout=60)
        assert bad is not None
        assert client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=60).mask.shape == (96, 128)
    finally:
        client.close()


def test_wrong_or_missing_token_is_refused(server):
    with pytest.raises(RemoteEngineError, match="refused the token .wrong token"):
        connect(server, token="nope")
    with pytest.raises(RemoteEngineError, match="none was given"):
        connect(server, token="")
    assert server.n_sessions == 0


def test_listening_beyond_loopback_needs_a_token(tiny_model):
    with pytest.raises(ValueError, match="without a token"):
        EngineServer(tiny_model, host="0.0.0.0", port=0)  # refused before anything listens


def test_oversized_requests_are_refused_and_the_session_goes_on(server):
    client = connect(server)
    try:
        with pytest.raises(EngineRequestError, match="too large"):  # 300x300 > 200x200 pixels
            client.call(p.SetImage("big", np.zeros((300, 300), np.uint8)), timeout=30)
        noise = np.random.default_rng(0).integers(0, 255, (150, 150, 200), np.uint8)  # 4.5 MB, incompressible
        with pytest.raises(EngineRequestError, match="request too large"):  # refused by this client: frame limit
            client.call(p.Propagate("s", [], noise), timeout=30)
        assert client.call(p.SetImage("ok", make_cells_image()), timeout=120).image_hw == (96, 128)
    finally:
        client.close()


def raw_connection(srv):
    """A bare WebSocket to the server (to send what RemoteTransport never would)."""
    import inspect

    from websockets.sync.client import connect as ws_connect

    legacy = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}
    return ws_connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, compression=None,
                      proxy=None, **legacy)


def test_a_frame_over_the_limit_closes_only_that_connection(server):
    raw = raw_connection(server)
    raw.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, "test")))
    assert isinstance(wire.decode(raw.recv(timeout=10)), wire.Welcome)
    raw.send(b"\0" * (5 << 20))  # over max_frame_bytes: the server closes with 1009 before reading it
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as closed:
        raw.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    client = connect(server)
    try:
        assert client.call(p.LoadModel(model_name="x"), timeout=30).size == "tiny"
    finally:
        client.close()


def test_version_mismatch_is_reported(server):
    raw = raw_connection(server)
    raw.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION + 1, "9.9")))
    answer = wire.decode(raw.recv(timeout=10))
    assert isinstance(answer, wire.Refused) and "version mismatch" in answer.message and "9.9" in answer.message
    raw.close()


def test_disconnect_frees_the_session_and_idle_sessions_are_reaped(tiny_model):
    srv = EngineServer(tiny_model, port=0, limits=ServerLimits(idle_timeout_s=2.0))
    srv.start()
    try:
        client = connect(srv, token=None)
        client.call(p.SetImage("img", make_cells_image()), timeout=120)
        assert srv.n_sessions == 1
        assert wait_until(lambda: srv.n_sessions == 0, 30), "the idle session was not reaped"
        with pytest.raises(EngineRequestError, match="idle"):
            client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=30)
        client.close()
        other = connect(srv, token=None)
        assert srv.n_sessions == 1
        other.close()
        assert wait_until(lambda: srv.n_sessions == 0, 30), "a closed client's session was kept"
    finally:
        srv.stop()


def test_progress_and_cancel_over_the_network(server):
    client = connect(server)
    try:
        client.call(p.SetImage("img", make_cells_image()), timeout=120)
        replies = []
        done = []
        client.submit(p.SegmentAll("img", 0.5, {"points_per_side": 32, "points_per_batch": 4}),
                      lambda r: (replies.append(r), isinstance(r, p.Progress) and len(replies) == 1 and client.cancel(),
                                 not isinstance(r, p.Progress) and done.append(r)))
        assert wait_until(lambda: bool(done), 300)
        assert isinstance(replies[0], p.Progress)
        assert isinstance(done[0], p.Failure) and done[0].kind == "Cancelled"
        assert client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=60).mask.shape == (96, 128)
    finally:
        client.close()


_CLIENT_SCRIPT = """
import sys, numpy as np
from unsamv2_engine import protocol as p
from unsamv2_engine.client import EngineClient, RemoteTransport
client = EngineClient(RemoteTransport(sys.argv[1], token=sys.argv[2]))
image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
client.call(p.SetImage("img", image), timeout=120)
client.submit(p.SegmentAll("img", 0.5, {"points_per_side": 32, "points_per_batch": 4}))
print("busy", flush=True)
sys.stdin.read()
"""


def test_a_client_killed_mid_request_leaves_the_server_serving_others(server):
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT_SCRIPT, server.url, TOKEN], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "busy"
        assert wait_until(lambda: server.n_sessions == 1, 30)
        proc.kill()
        proc.wait(30)
        client = connect(server)
        try:
            client.call(p.SetImage("img", make_cells_image()), timeout=300)
            assert client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=300).mask.shape == (96, 128)
        finally:
            client.close()
        assert wait_until(lambda: server.n_sessions == 0, 60), "the killed client's session was kept"
    finally:
        if proc.poll() is None:
            proc.kill()


_SERVER_SCRIPT = """
import sys
from unsamv2_engine.model import build_model
from unsamv2_engine.remote_server import EngineServer
server = EngineServer(build_model("tiny", seed=0, image_size=128), port=int(sys.argv[1]))
server.start()
print("listening", flush=True)
server.serve_forever()
"""


def test_a_server_killed_mid_request_gives_a_clear_client_error():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_SCRIPT, str(port)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "listening"
        client = connect_url(f"ws://127.0.0.1:{port}")
        client.call(p.SetImage("img", make_cells_image()), timeout=300)
        done = []
        client.submit(p.SegmentAll("img", 0.5, {"points_per_side": 32, "points_per_batch": 4}),
                      lambda r: not isinstance(r, p.Progress) and done.append(r))
        os.kill(proc.pid, signal.SIGKILL)
        assert wait_until(lambda: bool(done), 60), "the client waited forever"
        assert isinstance(done[0], p.Failure) and done[0].kind == "ConnectionLost"
        assert "lost the connection" in done[0].message and "reconnect" in done[0].message
        with pytest.raises(EngineRequestError, match="lost the connection"):  # later requests fail at once
            client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=10)
        client.close()
        with pytest.raises(RemoteEngineError, match="no engine server answers"):
            connect_url(f"ws://127.0.0.1:{port}")
    finally:
        proc.kill()
        proc.wait(30)


def connect_url(url: str) -> EngineClient:
    return EngineClient(RemoteTransport(url, token=None, open_timeout=10))


# ------------------------------------------------------------------------ the commands
_TORCH_FREE_CLI = """
import sys
for name in ("torch", "sam2", "torchvision"):
    sys.modules[name] = None  # the laptop: no torch, no sam2
from unsamv2_engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_command_and_segment_with_server_on_a_torch_free_client(tmp_path, tiny_model):
    """`unsamv2 serve` in its own process; `unsamv2 segment/sweep --server` with torch unimportable gives the
    local engine's masks; a wrong token is a one-line error with exit code 2; SIGUSR1 prints the server's
    stacks and it goes on; Ctrl-C stops it with exit code 0.
    """
    import tifffile
    from PIL import Image

    from unsamv2_engine.model.checkpoint import save_checkpoint
    from unsamv2_engine.session import ImageSession

    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", kind="unsamv2")
    image = make_cells_image()
    Image.fromarray(image).save(tmp_path / "cells.png")
    env = {**os.environ, "UNSAMV2_TOKEN": TOKEN}
    # started with SIGINT ignored, as `unsamv2 serve &` in a script is (and as a test worker may leave it)
    server = subprocess.Popen([sys.executable, "-m", "unsamv2_engine", "serve", "--checkpoint", str(checkpoint),
                               "--port", "0", "--device", "cpu"], stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = ""
        while "listening on" not in line:
            line = server.stderr.readline()
            assert line, "unsamv2 serve ended before listening"
        url = line.split("listening on ")[1].split()[0]
        assert url.startswith("ws://127.0.0.1:") and "token required" in line

        def cli(*args, token=TOKEN):
            return subprocess.run([sys.executable, "-c", _TORCH_FREE_CLI, *args], capture_output=True, text=True,
                                  cwd=REPO, env={**env, "UNSAMV2_TOKEN": token}, timeout=300)

        out = cli("segment", str(tmp_path / "cells.png"), "--point", "40,40", "-g", "0.4", "-o",
                  str(tmp_path / "remote.tif"), "--server", url)
        assert out.returncode == 0, out.stderr
        session = ImageSession(tiny_model)
        session.set_image(image)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "remote.tif").astype(bool),
                                      session.predict(POINTS, LABELS, 0.4).mask)
        out = cli("sweep", str(tmp_path / "cells.png"), "--point", "40,40", "--granularities", "0.2,0.9", "-o",
                  str(tmp_path / "sweep.tif"), "--table", str(tmp_path / "sweep.csv"), "--server", url)
        assert out.returncode == 0, out.stderr
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "sweep.tif").astype(bool),
                                      session.sweep(POINTS, LABELS, [0.2, 0.9]).masks)
        out = cli("segment", str(tmp_path / "cells.png"), "--point", "40,40", "-g", "0.4", "-o",
                  str(tmp_path / "x.tif"), "--server", url, token="wrong")
        assert out.returncode == 2 and "refused the token" in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "x.tif").exists()
        server.send_signal(signal.SIGUSR1)  # an operator asks a running server what its threads are doing
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGUSR1)  # serve prints its threads' stacks
            time.sleep(2)
            server.kill()
            pytest.fail(f"unsamv2 serve did not stop within 60 s of Ctrl-C; its stderr:\n{server.stderr.read()}")
    assert server.returncode == 0
    after = server.stderr.read()
    # the stacks (written by whichever thread took the signal, so maybe after the next line) and the clean stop
    assert "most recent call first" in after and "serve_forever" in after and "unsamv2 serve: stopping" in after


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "UNSAMV2_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "unsamv2_engine", "serve", "--host", "0.0.0.0", "--checkpoint",
                          str(tmp_path / "none.pt")], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 2 and "without a token" in out.stderr


def test_serve_called_from_python_stops_on_sigterm_and_gives_the_handlers_back(tiny_checkpoint, capsys):
    """`main(["serve", ...])` in this process: SIGTERM stops it with exit code 0 and afterwards SIGINT and
    SIGTERM have the handlers they had before (a notebook or a test runner keeps its own Ctrl-C).
    """
    import threading

    from unsamv2_engine.cli import main

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def terminate_once_serving():
        deadline = time.monotonic() + 120
        while signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM] and time.monotonic() < deadline:
            time.sleep(0.02)  # serve installs its handlers once it listens
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_serving, daemon=True)
    killer.start()
    code = main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0", "--device", "cpu"])
    killer.join(5)
    assert code == 0 and "unsamv2 serve: stopping" in capsys.readouterr().err
    assert {sig: signal.getsignal(sig) for sig in before} == before


# ------------------------------------------------------------------------ a cut network
class PausableForwarder:
    """A TCP forwarder on 127.0.0.1 (a free port) to ``target``; :meth:`pause` stops forwarding in both
    directions without closing any socket (a cut cable, a suspended VPN), :meth:`close` ends it.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.stopped = threading.Event()
        self.sockets: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.stopped.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, src, dst) -> None:
        import select

        while not self.stopped.is_set():
            if not self.forwarding.is_set():
                time.sleep(0.05)  # nothing read, nothing sent, nothing closed
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    return
                while not self.forwarding.is_set() and not self.stopped.is_set():
                    time.sleep(0.05)  # bytes read while (or just before) pausing are held, never sent
                if self.stopped.is_set():
                    return
                dst.sendall(data)
            except OSError:
                return

    def pause(self) -> None:
        self.forwarding.clear()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(5)
        for sock in self.sockets:
            sock.close()


def test_a_cut_network_fails_the_request_within_the_ping_timeout(tiny_model):
    """Forwarding stops, the sockets stay open: keepalive pings (1 s here) notice it, the waiting request fails
    with the lost-connection message in bounded time, later requests fail at once, and the server frees the
    session on its own pings.
    """
    srv = EngineServer(tiny_model, port=0, limits=ServerLimits(ping_interval_s=0.5, ping_timeout_s=1.0))
    srv.start()
    forwarder = PausableForwarder(("127.0.0.1", srv.port))
    try:
        client = EngineClient(RemoteTransport(f"ws://127.0.0.1:{forwarder.port}", token=None, ping_interval=0.5,
                                              ping_timeout=1.0))
        client.call(p.SetImage("img", make_cells_image()), timeout=120)
        assert client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=60).mask.shape == (96, 128)
        forwarder.pause()
        done = []
        start = time.monotonic()
        client.submit(p.Predict("img", POINTS, LABELS, 0.3), lambda r: done.append((r, time.monotonic() - start)))
        assert wait_until(lambda: bool(done), 15), "the client waited on a cut network"
        reply, seconds = done[0]
        assert isinstance(reply, p.Failure) and reply.kind == "ConnectionLost", reply
        assert "lost the connection" in reply.message and seconds < 10
        with pytest.raises(EngineRequestError, match="lost the connection"):
            client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=5)
        closing = time.monotonic()
        client.close()
        assert time.monotonic() - closing < 10, "closing hung"
        assert wait_until(lambda: srv.n_sessions == 0, 30), "the server kept the cut client's session"
    finally:
        forwarder.close()
        srv.stop()


def test_sessions_leave_no_objects_or_tensors_behind():
    """Clients come, embed, decode and go, twice: afterwards no session object is alive and the tensors held
    by the process do not grow from one round to the next (what stays in RSS is the allocator's, see
    docs/benchmarks.md).
    """
    import gc
    import threading

    import torch

    from unsamv2_engine.model import build_model
    from unsamv2_engine.remote_server import _ClientSession

    srv = EngineServer(build_model("tiny", seed=0, image_size=TINY_INPUT), port=0)
    srv.start()
    image = make_cells_image()

    def client(i: int) -> None:
        c = connect_url(srv.url)
        c.call(p.SetImage(f"img{i}", np.roll(image, 5 * i, axis=1)), timeout=300)
        c.call(p.Predict(f"img{i}", POINTS, LABELS, 0.5, want_logits=False), timeout=300)
        c.close()

    def held() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        sessions = sum(type(o) in (_ClientSession, EngineService) for o in objects)
        return sessions, sum(o.numel() * o.element_size() for o in objects if type(o) is torch.Tensor)

    try:
        tensor_bytes = []
        for _ in range(2):
            threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert wait_until(lambda: srv.n_sessions == 0, 30)
            assert wait_until(lambda: held()[0] == 0, 30), "a session outlived its client"  # its thread is ending
            tensor_bytes.append(held()[1])
        assert tensor_bytes[1] <= tensor_bytes[0], tensor_bytes
    finally:
        srv.stop()
