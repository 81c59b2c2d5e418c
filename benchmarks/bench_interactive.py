"""Interactive-use timings of the UnSAMv2 engine, and of upstream ``sam2`` on the same plain SAM model.

Random weights: the timings are those of the real architectures (they do not depend on the
weights), the masks are meaningless. See ``benchmarks/README.md`` for what each row means.

    python benchmarks/bench_interactive.py --size tiny --device cpu --markdown
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _report import Report, load_average, machine_info, peak_rss_mib, print_report, synchronize, verdict

from unsamv2_engine.devices import inference_context, resolve_device
from unsamv2_engine.model import build_model
from unsamv2_engine.model.build import UnSAMv2Model
from unsamv2_engine.model.specs import SIZES
from unsamv2_engine.session import ImageSession
from unsamv2_engine.upstream import upstream_image_predictor

SWEEP_GRANULARITIES = [round(0.1 * k, 1) for k in range(1, 11)]
SWEEP_TARGET = 3.0  # batched sweep at least 3x faster than 10 separate decodes
UPSTREAM_TARGET = 1.1  # one UnSAMv2 decode at most 10% slower than upstream's SAM decode
GRANULARITY = 0.5


@dataclass
class Timing:
    """Median and fastest of the timed repeats, in milliseconds."""

    median: float
    best: float


# ---------------------------------------------------------------- setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="SAM 2.1 backbone size")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--image-size", type=int, default=1024, help="side of the square test image (pixels)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats of each decode measurement")
    p.add_argument("--embed-repeats", type=int, default=3, help="timed repeats of the image embedding")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each decode measurement")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--decode-batch-size", type=int, default=None,
                   help="prompts per decoder call in a sweep (default: the session's per-device default)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    return p.parse_args(argv)


def textured_image(size: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB ``size x size`` image: blobs on a smooth background, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 90 + 40 * np.sin(9 * xx) * np.cos(7 * yy)
    for cy, cx, r in rng.uniform([0.1, 0.1, 0.03], [0.9, 0.9, 0.12], (12, 3)):
        img = np.where(np.hypot(yy - cy, xx - cx) < r, 200.0, img)
    rgb = np.stack([img, 0.8 * img, 0.6 * img], -1) + rng.normal(0, 12, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- timing
def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def add_timing(report: Report, name: str, timing: Timing, note: str = "") -> None:
    report.add(name, timing.median, "ms", note, best=timing.best)


def summarise(seconds: list[float]) -> Timing:
    return Timing(1e3 * statistics.median(seconds), 1e3 * min(seconds))


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return summarise([time_once(fn, device) for _ in range(repeats)])


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                        repeats: int) -> dict[str, Timing]:
    """Time several functions taking turns, so that load from elsewhere affects them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return {name: summarise(t) for name, t in times.items()}


# ---------------------------------------------------------------- memory
def add_memory_rows(report: Report, device: torch.device, phase: str) -> None:
    report.add(f"peak RSS ({phase})", peak_rss_mib(), "MiB", "process high-water mark so far")
    if device.type == "cuda":
        report.add(f"peak CUDA allocated ({phase})", torch.cuda.max_memory_allocated(device) / 2**20, "MiB",
                   "torch.cuda.max_memory_allocated")
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------- measurements
def bench_unsamv2(report: Report, args: argparse.Namespace, device: torch.device, image: np.ndarray,
                  point: list[list[float]]) -> ImageSession:
    """Embedding, and the 10-g sweep against 10 decodes, on the UnSAMv2 model; returns its session."""
    model = build_model(args.size, seed=0, device=device)
    session = ImageSession(model, decode_batch_size=args.decode_batch_size)
    embed = measure(lambda: session.set_image(image), device, 1, args.embed_repeats)
    add_timing(report, "image embedding (set_image)", embed, f"{args.embed_repeats} repeats after 1 warm-up")

    times = measure_interleaved({
        "sweep": lambda: session.sweep(point, [1], SWEEP_GRANULARITIES),
        "loop": lambda: [session.predict(point, [1], g) for g in SWEEP_GRANULARITIES],
    }, device, args.warmup, args.repeats)
    add_timing(report, "sweep of 10 g, batched (session.sweep)", times["sweep"],
                      f"decode batch size {session.decode_batch_size}")
    add_timing(report, "10 separate decodes (session.predict)", times["loop"])
    speedup = times["loop"].median / times["sweep"].median
    report.add("sweep speed-up (10 decodes / sweep)", speedup, "x", f"target >= {SWEEP_TARGET:g}x",
               verdict(speedup >= SWEEP_TARGET))
    add_memory_rows(report, device, "UnSAMv2 model")
    return session


def upstream_decode(predictor: object, coords: np.ndarray, device: torch.device) -> Callable[[], object]:
    """Upstream multimask point decode with its postprocessing (3 full-resolution masks, numpy)."""
    labels = np.ones(len(coords), np.int64)

    def run() -> object:
        with inference_context(device):
            return predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True)

    return run


def bench_decodes(report: Report, args: argparse.Namespace, device: torch.device, image: np.ndarray,
                  point: list[list[float]], unsamv2: ImageSession) -> None:
    """One UnSAMv2 decode, and upstream SAM2ImagePredictor vs ours on the same plain SAM 2.1 model."""
    model: UnSAMv2Model = build_model(args.size, granularity=False, seed=0, device=device)
    plain = ImageSession(model, decode_batch_size=args.decode_batch_size)
    plain.set_image(image)
    predictor = upstream_image_predictor(model)
    with inference_context(device):  # same precision as ours (bf16 autocast on CUDA)
        predictor.set_image(image)

    times = measure_interleaved({
        "unsamv2": lambda: unsamv2.predict(point, [1], GRANULARITY),
        "upstream": upstream_decode(predictor, np.asarray(point, np.float32), device),
        "plain": lambda: plain.predict(point, [1], GRANULARITY),
    }, device, args.warmup, args.repeats)
    add_timing(report, "UnSAMv2 decode, 1 point, g=0.5", times["unsamv2"], "incl. full-resolution mask")
    add_timing(report, "upstream SAM2ImagePredictor.predict, multimask", times["upstream"],
                      "plain SAM 2.1; 3 full-resolution masks")
    add_timing(report, "our plain-SAM decode (session.predict)", times["plain"], "same plain model; 1 mask")
    for name, key in (("UnSAMv2 decode / upstream decode", "unsamv2"),
                      ("our plain-SAM decode / upstream decode", "plain")):
        ratio = times[key].median / times["upstream"].median
        report.add(name, ratio, "x", f"target <= {UPSTREAM_TARGET:g}", verdict(ratio <= UPSTREAM_TARGET))
    add_memory_rows(report, device, "end")


# ---------------------------------------------------------------- output
def write_json(report: Report, path: Path) -> None:
    data = {"machine": report.machine, "settings": report.settings, "random_weights": True,
            "rows": [asdict(r) for r in report.rows]}
    path.write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    image = textured_image(args.image_size)
    point = [[args.image_size * 0.5, args.image_size * 0.5]]
    report = Report(machine_info(device), {
        "size": args.size, "image": f"{args.image_size}x{args.image_size}", "repeats": args.repeats,
        "embed_repeats": args.embed_repeats, "warmup": args.warmup, "decode_batch_size": args.decode_batch_size})
    session = bench_unsamv2(report, args, device, image, point)
    bench_decodes(report, args, device, image, point, session)
    report.machine["load_at_end"] = load_average()
    print_report(report, args.markdown, value_header="median")
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
