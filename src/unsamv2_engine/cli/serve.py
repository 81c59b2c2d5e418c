"""The ``unsamv2 serve`` command: the engine behind a WebSocket endpoint for remote clients.

::

    unsamv2 serve [--host 127.0.0.1] [--port 8765] [--token TOKEN] [--device ...] [--model ... | --checkpoint ...]

Standard library only at import time (``--help`` stays torch-free); the server is
:mod:`unsamv2_engine.remote_server`. Guide: ``docs/remote.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from unsamv2_engine.cli.loading import load_model_from_args
from unsamv2_engine.cli.options import add_common_options, add_model_options, positive_float, positive_int, subparser
from unsamv2_engine.cli.output import CliError
from unsamv2_engine.cli.signals import on_stop_signals

_EPILOG = """\
The model is chosen here, by the server's operator: clients (the napari widget, 'unsamv2 segment
--server URL') use it as it is. Non-loopback addresses need a token; clients send it from the
UNSAMV2_TOKEN variable or the widget's token field. For TLS put a reverse proxy in front (docs/remote.md).

examples:
  unsamv2 serve --model unsamv2-plus --device cuda
  UNSAMV2_TOKEN=$(openssl rand -hex 16) unsamv2 serve --host 0.0.0.0 --port 8765 --checkpoint ckpt.pt
  unsamv2 serve --model unsamv2-plus --data-root /data/lab   # clients may fine-tune on /data/lab/...
"""


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``unsamv2`` subparsers."""
    parser = subparser(subparsers, "serve", "serve the engine to remote clients (napari on a laptop)",
                       "Load the model once and serve it over a WebSocket to the napari widget and to the "
                       "CLI's --server option: clients send an image once, then tiny decode requests; the "
                       "embeddings stay here.", _EPILOG)
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1, this machine only; any other needs a token)")
    net.add_argument("--port", type=int, default=8765, help="TCP port (default: 8765; 0 picks a free one)")
    net.add_argument("--token", metavar="TOKEN",
                     help="secret every client must send (default: the UNSAMV2_TOKEN variable; required unless "
                          "--host is a loopback address)")
    net.add_argument("--data-root", metavar="DIR",
                     help="let clients fine-tune on image folders inside DIR and write adapters there (the "
                          "widget's fine-tune panel; paths outside DIR are refused); default: fine-tuning "
                          "from clients is off")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-image-pixels", type=positive_int, default=8192 * 8192, metavar="N",
                        help="largest 2D image (or stack slice) accepted, in pixels (default: 67108864 = 8192^2)")
    limits.add_argument("--max-request-mb", type=positive_float, default=2048.0, metavar="MB",
                        help="largest request, counting its arrays uncompressed, in MiB (default: 2048)")
    limits.add_argument("--max-frame-mb", type=positive_float, default=1024.0, metavar="MB",
                        help="largest message as sent (compressed), in MiB; refused before it is read "
                             "(default: 1024)")
    limits.add_argument("--idle-timeout", type=positive_float, default=900.0, metavar="S",
                        help="close a client's session after S seconds without requests, freeing its memory "
                             "(default: 900)")
    add_model_options(parser)
    add_common_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, listen, serve until Ctrl-C."""
    from unsamv2_engine.remote_server import EngineServer, ServerLimits, is_loopback

    token = args.token or os.environ.get("UNSAMV2_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise CliError(f"refusing to listen on {args.host} without a token: give --token TOKEN or set "
                       "UNSAMV2_TOKEN (clients then need the same), or keep the default --host 127.0.0.1")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    data_root = None
    if args.data_root:
        from pathlib import Path

        data_root = Path(args.data_root).expanduser()
        if not data_root.is_dir():
            raise CliError(f"--data-root {args.data_root}: no such folder")
    loaded = load_model_from_args(args)
    model = loaded.model
    limits = ServerLimits(max_image_pixels=args.max_image_pixels,
                          max_request_bytes=int(args.max_request_mb * 2**20),
                          max_frame_bytes=int(args.max_frame_mb * 2**20), idle_timeout_s=args.idle_timeout)
    server = EngineServer(model, host=args.host, port=args.port, token=token, limits=limits, data_root=data_root,
                          checkpoint=loaded.checkpoint)
    try:
        server.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (is another "
                       "server using the port? try --port 0 for a free one)") from None
    # one line, always printed (scripts and tests wait for it): where, what, whether a token is needed
    print(f"unsamv2 serve: listening on {server.url} (model {model.info.label} on {model.device}; token "
          f"{'required' if token else 'not required'}; fine-tuning "
          f"{f'in {data_root.resolve()}' if data_root else 'off'}); Ctrl-C stops", file=sys.stderr, flush=True)
    with _stacks_on_sigusr1(), on_stop_signals(_stop):  # Ctrl-C and `kill PID` stop it cleanly
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("unsamv2 serve: stopping", file=sys.stderr, flush=True)
        finally:
            server.stop()
    return 0


@contextmanager
def _stacks_on_sigusr1() -> Iterator[None]:
    """While serving, ``kill -USR1 PID`` prints every thread's stack to stderr: what a server that does not
    answer is doing.
    """
    import faulthandler
    import signal

    registered = False
    if hasattr(signal, "SIGUSR1"):  # not on Windows
        # the process's stderr: sys.stderr may have no file descriptor (a notebook, captured output)
        for stream in (sys.stderr, sys.__stderr__):
            try:
                faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
            except (AttributeError, ValueError, OSError):
                continue
            registered = True
            break
    try:
        yield
    finally:
        if registered:
            faulthandler.unregister(signal.SIGUSR1)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # serve_forever ends; the server closes every session
