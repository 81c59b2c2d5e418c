"""The engine process: serve protocol requests arriving on a connection until Shutdown.

Started by :class:`unsamv2_engine.client.ProcessTransport` (multiprocessing ``spawn``). Progress
messages and replies go back over the same connection.
"""

from __future__ import annotations

from unsamv2_engine import protocol as p


def serve_connection(conn, torch_threads: int | None = None, cancel_event=None) -> None:
    """Receive requests on ``conn`` and send back replies, until a Shutdown or a closed pipe."""
    import torch

    from unsamv2_engine.service import EngineService

    if torch_threads:
        torch.set_num_threads(torch_threads)
    service = EngineService(cancel_event=cancel_event)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        reply = service.handle(request, conn.send)
        conn.send(reply)
        if isinstance(request, p.Shutdown):
            break
    conn.close()
