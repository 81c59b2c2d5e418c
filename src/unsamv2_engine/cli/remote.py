"""``--server URL`` of the CLI's image commands: the same command, computed by an ``unsamv2 serve`` engine.

The image is read and checked here (the same checks as the local path, before any network traffic),
sent once, compressed, and the outputs are written here in the same formats. The token comes from the
``UNSAMV2_TOKEN`` variable (never from the command line, where other users could read it). The
model is the server's: ``--model/--checkpoint/--adapter/--device`` are refused with ``--server``.
Standard library + numpy: works on a machine without torch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from unsamv2_engine.cli.loading import prompt_arrays, read_image
from unsamv2_engine.cli.output import EXIT_OK, CliError, emit_json, engine_version, say, summary, warn
from unsamv2_engine.cli.sweep import print_pages

_MODEL_OPTIONS = ("checkpoint", "model", "adapter")


def connect(args: argparse.Namespace):
    """An :class:`~unsamv2_engine.client.EngineClient` on ``args.server`` (token: UNSAMV2_TOKEN)."""
    from unsamv2_engine.client import EngineClient, RemoteEngineError, RemoteTransport

    given = [f"--{name}" for name in _MODEL_OPTIONS if getattr(args, name, None)]
    if getattr(args, "device", "auto") != "auto":
        given.append("--device")
    if given:
        raise CliError(f"{', '.join(given)} cannot be used with --server: the server's operator chose the "
                       "model and device ('unsamv2 serve --model ... --device ...')")
    try:
        transport = RemoteTransport(args.server)
        client = EngineClient(transport)
    except RemoteEngineError as exc:
        raise CliError(str(exc)) from None
    model = transport.welcome.model
    if model is None:
        client.close()
        raise CliError(f"the server at {args.server} has no model loaded")
    say(args, f"engine: {transport.where} ({model['label']})")
    return client, transport


def call(client, request, args: argparse.Namespace, stage: str) -> Any:
    """Send ``request`` and wait for its reply; a Failure becomes a one-line CLI error."""
    from unsamv2_engine.client import EngineRequestError

    try:
        return client.call(request)
    except EngineRequestError as exc:
        raise CliError(f"{stage} failed on the server: {exc}") from None


def _prepare(args: argparse.Namespace):
    """Read the image, check the points, connect, send the image (once, compressed)."""
    from unsamv2_engine import protocol as p

    image, rgb8 = read_image(args)
    points, labels = prompt_arrays(args, rgb8.shape[:2])
    client, transport = connect(args)
    say(args, f"sending {args.image} ({rgb8.shape[1]}x{rgb8.shape[0]}) ...")
    start = time.perf_counter()
    call(client, p.SetImage("cli", rgb8), args, "embedding")
    embed_s = time.perf_counter() - start
    return image, points, labels, client, transport, embed_s


def _metadata(args, image, points, labels, transport) -> dict[str, Any]:

    model = transport.welcome.model
    return {"engine_version": engine_version(), "image": str(args.image), "image_shape": list(image.shape),
            "image_dtype": str(image.dtype), "frame": args.frame,
            "contrast_limits": list(args.contrast_limits) if args.contrast_limits else None,
            "points": points.tolist(), "labels": labels.tolist(), "mask_threshold": args.mask_threshold,
            "m2m": bool(args.m2m), "model": model["label"], "model_family": model["family"],
            "model_size": model["size"], "checkpoint": None, "adapter": None, "device": model["device"],
            "server": args.server, "server_version": transport.welcome.server_version}


def _decode(args: argparse.Namespace, make_request):
    """Send the image once, then the request ``make_request(points, labels)``; close the connection.

    Returns ``(image, points, labels, transport, embed_s, reply, decode_s)``.
    """
    image, points, labels, client, transport, embed_s = _prepare(args)
    try:
        start = time.perf_counter()
        reply = call(client, make_request(points, labels), args, "decoding")
        decode_s = time.perf_counter() - start
    finally:
        client.close()
    return image, points, labels, transport, embed_s, reply, decode_s


def segment(args: argparse.Namespace, granularity: float) -> int:
    """``unsamv2 segment ... --server URL``."""
    from unsamv2_engine import protocol as p
    from unsamv2_engine.io import write_labels

    image, points, labels, transport, embed_s, reply, decode_s = _decode(
        args, lambda pts, lab: p.Predict("cli", pts, lab, granularity, mask_threshold=args.mask_threshold,
                                         m2m=args.m2m))
    area = int(reply.mask.sum())
    meta = {**_metadata(args, image, points, labels, transport), "granularity": granularity, "score": reply.score,
            "area": area}
    write_labels(args.output, reply.mask, metadata={k: meta[k] for k in (
        "granularity", "score", "area", "model", "points", "labels", "mask_threshold", "m2m")})
    if area == 0:
        warn("the mask is empty: try another point, granularity or a lower --mask-threshold")
    meta["output"] = str(args.output)
    meta["timings"] = {"embed_s": embed_s, "decode_s": decode_s}
    emit_json(args.json, meta)
    summary(args, f"wrote {args.output} (area {area} px, score {reply.score:.2f}, granularity "
                  f"{granularity:g})")
    return EXIT_OK


def sweep(args: argparse.Namespace, granularities: list[float]) -> int:
    """``unsamv2 sweep ... --server URL``."""
    from unsamv2_engine import protocol as p
    from unsamv2_engine.io import write_labels, write_table_csv

    image, points, labels, transport, embed_s, reply, decode_s = _decode(
        args, lambda pts, lab: p.SweepRequest("cli", pts, lab, granularities, mask_threshold=args.mask_threshold,
                                              m2m=args.m2m))
    rows = [{"page": i, "granularity": g, "area": int(reply.areas[i]), "score": float(reply.scores[i])}
            for i, g in enumerate(granularities)]
    base = _metadata(args, image, points, labels, transport)
    write_labels(args.output, reply.masks, metadata={
        "granularities": granularities, "areas": [r["area"] for r in rows], "scores": [r["score"] for r in rows],
        **{k: base[k] for k in ("model", "points", "labels", "mask_threshold", "m2m")}})
    if args.table:
        write_table_csv(args.table, rows, columns=["page", "granularity", "area", "score"])
    meta = {**base, "granularities": granularities, "pages": rows, "output": str(args.output), "table": args.table,
            "timings": {"embed_s": embed_s, "decode_s": decode_s}}
    emit_json(args.json, meta)
    print_pages(args, rows, args.table)
    return EXIT_OK
