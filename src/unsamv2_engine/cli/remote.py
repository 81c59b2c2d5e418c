"""``--server URL`` of the CLI's image commands (``segment``, ``sweep``, ``auto``, ``hierarchy``, ``propagate``):
the same command, computed by an ``unsamv2 serve`` engine.

The image (or stack) is read and checked here (the same checks as the local path, before any network traffic),
sent once, compressed, and the outputs are written here in the same formats. The token comes from the
``UNSAMV2_TOKEN`` variable (never from the command line, where other users could read it). The
model is the server's: ``--model/--checkpoint/--adapter/--device`` are refused with ``--server``. Long jobs
show the server's progress; Ctrl-C cancels them on the server. Standard library + numpy: works on a machine
without torch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from unsamv2_engine.cli.loading import prompt_arrays, read_image
from unsamv2_engine.cli.output import (
    EXIT_OK,
    CliError,
    emit_json,
    engine_version,
    say,
    summarise_hierarchy,
    summary,
    warn,
)
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
    # tiled=False: this path writes whole-image masks; large images are tiled by the local CLI only
    call(client, p.SetImage("cli", rgb8, tiled=False), args, "embedding")
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


# ============================================================================ whole-image commands
def check_whole_image_options(args: argparse.Namespace) -> None:
    """Refuse what ``auto`` / ``hierarchy`` cannot do with ``--server``: batches, tiles, cached embeddings."""
    from unsamv2_engine.batch.inputs import is_batch_input

    if is_batch_input(args.image):
        raise CliError(f"{args.image} is a folder or glob of images: with --server give one image per command "
                       "(or run the batch on the server machine itself)")
    given = [option for option, dest in (("--tile-size", "tile_size"), ("--embeddings", "embeddings"),
                                          ("--scheduler", "scheduler")) if getattr(args, dest, None)]
    if getattr(args, "workers", 1) != 1:
        given.append("--workers")
    if str(args.output).rstrip("/").endswith(".ome.zarr"):
        given.append("an .ome.zarr output")
    if given:
        raise CliError(f"{', '.join(given)} cannot be used with --server: large images are tiled on the machine "
                       "that holds them; run the command there, or send a smaller image")


class _RemoteWholeImage:
    """The ``--server`` counterpart of :class:`unsamv2_engine.cli.auto._Job`: the image read and checked here,
    the settings chosen for the server's device, the segmentation on the server.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from types import SimpleNamespace

        from unsamv2_engine.cli.auto import settings_from_args

        self.args = args
        self.image, self.rgb8 = read_image(args)
        self.hw = tuple(int(s) for s in self.rgb8.shape[:2])
        if min(self.hw) < 2:
            raise CliError(f"{args.image} is {self.hw[1]}x{self.hw[0]} pixels: too small to segment")
        self.client, self.transport = connect(args)
        model = self.transport.welcome.model
        self.model = model
        device_type = str(model["device"]).split(":")[0]
        self.preset, self.settings = settings_from_args(args, SimpleNamespace(type=device_type))
        lo, hi = int(self.rgb8.min()), int(self.rgb8.max())
        self.uniform = lo == hi
        self.timings: dict[str, float] = {}
        if self.uniform:
            warn(f"{args.image} is uniform (every pixel is {lo} after intensity mapping): there is nothing to "
                 "segment; writing an empty result")

    def request_settings(self) -> dict[str, Any]:
        """The settings as sent: every AutoSettings field, and the decoder batch the local command would use."""
        from dataclasses import asdict

        return {**asdict(self.settings), "decode_batch": self.args.points_per_batch}

    def embed(self) -> None:
        from unsamv2_engine import protocol as p

        args = self.args
        say(args, f"sending {args.image} ({self.hw[1]}x{self.hw[0]}) ...")
        start = time.perf_counter()
        call(self.client, p.SetImage("cli", self.rgb8, tiled=False), args, "embedding")  # as _prepare
        self.timings["embed_s"] = time.perf_counter() - start

    def run(self, request, stage: str):
        """Send ``request`` (SegmentAll / BuildHierarchy) with a progress bar on stderr; returns its reply."""
        import sys
        import threading

        from tqdm import tqdm

        from unsamv2_engine import protocol as p
        from unsamv2_engine.client import EngineRequestError

        args = self.args
        side = self.settings.points_per_side
        say(args, f"settings: preset {self.preset}, {side}x{side} points, m2m "
                  f"{'on' if self.settings.use_m2m else 'off'}")
        bars: list[Any] = []
        done = threading.Event()
        box: list[Any] = []

        def on_reply(reply) -> None:
            if isinstance(reply, p.Progress):
                if not bars:
                    bars.append(tqdm(total=reply.total, disable=args.quiet, file=sys.stderr, unit="pt",
                                     desc="decoding", dynamic_ncols=True))
                bars[0].update(reply.done - bars[0].n)
            else:
                box.append(reply)
                done.set()

        start = time.perf_counter()
        try:
            self.client.submit(request, on_reply)
            while not done.wait(0.2):  # short waits: Ctrl-C stays responsive and cancels the server's job
                pass
        except KeyboardInterrupt:
            self.client.cancel()
            raise
        finally:
            for bar in bars:
                bar.close()
        self.timings["segment_s"] = time.perf_counter() - start
        if isinstance(box[0], p.Failure):
            raise CliError(f"{stage} failed on the server: {EngineRequestError(box[0])}")
        return box[0]

    def metadata(self) -> dict[str, Any]:
        from dataclasses import asdict

        args, model = self.args, self.model
        return {"engine_version": engine_version(), "image": str(args.image), "image_shape": list(self.image.shape),
                "frame": args.frame, "contrast_limits": list(args.contrast_limits) if args.contrast_limits else None,
                "model": model["label"], "model_family": model["family"], "checkpoint": None, "adapter": None,
                "device": model["device"], "preset": self.preset, "settings": asdict(self.settings),
                "timings": dict(self.timings), "server": args.server,
                "server_version": self.transport.welcome.server_version}

    def close(self) -> None:
        self.client.close()


def auto(args: argparse.Namespace, granularity: float) -> int:
    """``unsamv2 auto ... --server URL``: the same label TIFF (and COCO JSON) as the local command."""
    import numpy as np

    from unsamv2_engine import protocol as p
    from unsamv2_engine.cli.auto import _thresholds
    from unsamv2_engine.io import write_labels
    from unsamv2_engine.outputs import staged_outputs

    check_whole_image_options(args)
    job = _RemoteWholeImage(args)
    try:
        if job.uniform:
            labels, scores, stability, areas = (np.zeros(job.hw, np.uint8), np.zeros(0, np.float32),
                                                np.zeros(0, np.float32), np.zeros(0, np.int64))
            reply = None
        else:
            job.embed()
            say(args, f"segmenting {args.image} ({job.hw[1]}x{job.hw[0]}) at g = {granularity:g} on the server ...")
            reply = job.run(p.SegmentAll("cli", granularity, job.request_settings(), want_masks=bool(args.json)),
                            "segmenting")
            labels, scores, areas = reply.labels, reply.scores, reply.areas
            stability = reply.stability if reply.stability is not None else np.full(len(scores), np.nan, np.float32)
            if len(scores) == 0:
                labels = np.zeros(job.hw, np.uint8)
    finally:
        job.close()
    n_visible = int(len(np.unique(labels[labels > 0])))
    counts = {"masks": len(scores), "visible": n_visible, "empty": int(np.count_nonzero(np.asarray(areas) == 0))}
    meta = {**job.metadata(), "granularity": granularity, "thresholds": _thresholds(job.settings, granularity),
            "counts": counts, "scores": scores, "stability": stability, "areas": areas}
    with staged_outputs() as out:
        write_labels(out.path(args.output), labels, metadata=meta)
        if args.json:
            masks = reply.masks if reply is not None else np.zeros((0, *job.hw), bool)
            points = reply.points if reply is not None else np.zeros((0, 2), np.float32)
            _emit_masks_coco(out.path(args.json), masks, scores, stability, points, granularity, str(args.image),
                             {**job.metadata(), "granularity": granularity, "output": str(args.output)})
    if counts["masks"] == 0 and not job.uniform:
        warn("no mask passed the filters: try lower --pred-iou-thresh / --stability-thresh, another "
             "granularity or --preset authors")
    summary(args, f"wrote {args.output} ({counts['masks']} objects, {n_visible} visible, granularity "
                  f"{granularity:g})" + (f" and {args.json}" if args.json and args.json != "-" else ""))
    return EXIT_OK


def _emit_masks_coco(path: str, masks, scores, stability, points, granularity: float, file_name: str,
                     info: dict[str, Any]) -> None:
    """The COCO document of ``unsamv2 auto --json`` (as :func:`~unsamv2_engine.automatic.hierarchy.masks_to_coco`,
    without torch) written to ``path`` (``-``: stdout).
    """
    import json

    from unsamv2_engine.io import to_jsonable
    from unsamv2_engine.io.coco import coco_document, mask_to_annotation, write_coco

    h, w = masks.shape[1:]
    annotations = [mask_to_annotation(m, ann_id=i + 1, image_id=1, granularity=granularity, score=float(scores[i]),
                                      stability=float(stability[i]), point=[float(v) for v in points[i]])
                   for i, m in enumerate(masks)]
    document = coco_document([{"id": 1, "file_name": file_name, "height": int(h), "width": int(w)}], annotations,
                              info)
    if path == "-":
        print(json.dumps(to_jsonable(document), separators=(",", ":")))
    else:
        write_coco(path, to_jsonable(document))


def hierarchy(args: argparse.Namespace, granularities: list[float]) -> int:
    """``unsamv2 hierarchy ... --server URL``: the same hierarchy (and table, COCO JSON) as the local command."""
    import numpy as np

    from unsamv2_engine import protocol as p
    from unsamv2_engine.cli.auto import _thresholds
    from unsamv2_engine.hierarchy import Hierarchy
    from unsamv2_engine.io.hierarchy import write_hierarchy
    from unsamv2_engine.outputs import staged_outputs

    check_whole_image_options(args)
    job = _RemoteWholeImage(args)
    try:
        if job.uniform:
            labels = np.zeros((len(granularities), *job.hw), np.uint16)
            table: list[dict] = []
            per_level_masks = [0] * len(granularities)
        else:
            job.embed()
            gs = ", ".join(f"{g:g}" for g in granularities)
            say(args, f"segmenting {args.image} ({job.hw[1]}x{job.hw[0]}) at g = {gs} and nesting, on the server ...")
            reply = job.run(p.BuildHierarchy("cli", granularities, job.request_settings(),
                                             containment=args.containment), "the hierarchy")
            labels, table = reply.labels, reply.table
            per_level_masks = reply.masks_per_level or [sum(1 for r in table if r["level"] == i)
                                                        for i in range(len(granularities))]
    finally:
        job.close()
    result = Hierarchy(labels, list(granularities), table=table, metadata={
        **job.metadata(), "containment": args.containment,
        "thresholds": [_thresholds(job.settings, g) for g in granularities], "masks_per_level": per_level_masks})
    with staged_outputs() as out:
        write_hierarchy(out.path(args.output), result, table_csv=out.path(args.table) if args.table else None)
        if args.json:
            _emit_hierarchy_coco(out.path(args.json), result, str(args.image))
    summarise_hierarchy(args, result.table, list(granularities), per_level_masks)
    return EXIT_OK


def _emit_hierarchy_coco(path: str, result, file_name: str) -> None:
    """As :func:`~unsamv2_engine.automatic.hierarchy.hierarchy_to_coco` (without torch), to ``path``."""
    import json

    import numpy as np

    from unsamv2_engine.io import to_jsonable
    from unsamv2_engine.io.coco import coco_document, mask_to_annotation, write_coco

    h, w = result.labels.shape[-2:]
    annotations = []
    for row in result.table:
        score = row.get("score")
        annotations.append(mask_to_annotation(
            result.labels[row["level"]] == row["label"], ann_id=len(annotations) + 1, image_id=1,
            granularity=row["granularity"], level=int(row["level"]), label=int(row["label"]),
            parent=int(row["parent"]), score=None if score is None or not np.isfinite(score) else float(score)))
    document = coco_document([{"id": 1, "file_name": file_name, "height": int(h), "width": int(w)}], annotations,
                             result.metadata)
    if path == "-":
        print(json.dumps(to_jsonable(document), separators=(",", ":")))
    else:
        write_coco(path, to_jsonable(document))


# ============================================================================ propagate
def propagate(args: argparse.Namespace, stack, layout, prompts: list[Any]) -> int:
    """``unsamv2 propagate ... --server URL``: the stack sent once, the same label volume (and scores, JSON)."""
    import sys
    import threading
    from types import SimpleNamespace

    from tqdm import tqdm

    from unsamv2_engine import protocol as p
    from unsamv2_engine.cli.propagate import write_outputs
    from unsamv2_engine.client import EngineRequestError

    if args.max_cached_frames != 8:
        warn("--max-cached-frames applies to a local run; the server keeps its own cache")
    client, transport = connect(args)
    model = transport.welcome.model
    request = p.Propagate("cli", prompts, stack, axis=args.axis, channel_axis=args.channel_axis,
                          direction=args.direction, mask_threshold=args.mask_threshold,
                          contrast_limits=tuple(args.contrast_limits) if args.contrast_limits else None)
    n_objects = len({prompt.object_id for prompt in prompts})
    say(args, f"sending {args.stack} and propagating {n_objects} object(s) {args.direction} through "
              f"{layout.n_frames} slices on the server ...")
    done = threading.Event()
    box: list[Any] = []
    with tqdm(total=None, disable=args.quiet, file=sys.stderr, unit="slice", desc="propagating",
              dynamic_ncols=True) as bar:
        def on_reply(reply) -> None:
            if isinstance(reply, p.Progress):
                bar.total = reply.total
                bar.update(reply.done - bar.n)
            else:
                box.append(reply)
                done.set()

        start = time.perf_counter()
        try:
            client.submit(request, on_reply)
            while not done.wait(0.2):
                pass
        except KeyboardInterrupt:
            client.cancel()
            raise
        finally:
            client.close()
    propagate_s = time.perf_counter() - start
    reply = box[0]
    if isinstance(reply, p.Failure):
        raise CliError(f"propagation failed on the server: {EngineRequestError(reply)}")
    object_ids = list(reply.object_ids)
    granularities = {prompt.object_id: prompt.granularity for prompt in prompts}
    prompted = {object_id: sorted({prompt.frame for prompt in prompts if prompt.object_id == object_id})
                for object_id in object_ids}
    result = SimpleNamespace(labels=reply.labels, scores=reply.scores, object_scores=reply.object_scores,
                             object_ids=object_ids, axis=reply.axis, direction=args.direction,
                             mask_threshold=args.mask_threshold, granularities=granularities,
                             prompted_frames=prompted, frames_embedded=None)
    info = SimpleNamespace(label=model["label"], family=model["family"])
    write_outputs(args, result, layout, args.server, None, SimpleNamespace(info=info), model["device"],
                  {"propagate_s": propagate_s}, extra={"server": args.server,
                                                        "server_version": transport.welcome.server_version})
    return EXIT_OK
