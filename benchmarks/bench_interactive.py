"""Interactive-use timings of the UnSAMv2 engine, and of upstream ``sam2`` on the same plain SAM model.

Random weights: the timings are those of the real architectures (they do not depend on the
weights), the masks are meaningless. See ``benchmarks/README.md`` for what each row means.

    python benchmarks/bench_interactive.py --size tiny --device cpu --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

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


@dataclass
class Row:
    """One line of the results table: a median time (ms), a ratio of medians or a memory size.

    best: the fastest repeat (ms), for timings only; a large gap to the median means the
    machine was busy with something else.
    """

    name: str
    value: float
    unit: str  # "ms", "x" or "MiB"
    note: str = ""
    verdict: str = ""
    best: float | None = None


@dataclass
class Report:
    """Everything the benchmark prints (and writes with ``--json``)."""

    machine: dict[str, str]
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, note: str = "", verdict: str = "") -> None:
        self.rows.append(Row(name, value, unit, note, verdict))

    def add_timing(self, name: str, timing: Timing, note: str = "") -> None:
        self.rows.append(Row(name, timing.median, "ms", note, best=timing.best))


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


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average: above the thread count, other processes competed for the CPU."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info(device: torch.device) -> dict[str, str]:
    info = {"cpu": cpu_model(), "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["load_at_start"] = load_average()
    return info


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
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------- memory
def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB); ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
    report.add_timing("image embedding (set_image)", embed, f"{args.embed_repeats} repeats after 1 warm-up")

    times = measure_interleaved({
        "sweep": lambda: session.sweep(point, [1], SWEEP_GRANULARITIES),
        "loop": lambda: [session.predict(point, [1], g) for g in SWEEP_GRANULARITIES],
    }, device, args.warmup, args.repeats)
    report.add_timing("sweep of 10 g, batched (session.sweep)", times["sweep"],
                      f"decode batch size {session.decode_batch_size}")
    report.add_timing("10 separate decodes (session.predict)", times["loop"])
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
    report.add_timing("UnSAMv2 decode, 1 point, g=0.5", times["unsamv2"], "incl. full-resolution mask")
    report.add_timing("upstream SAM2ImagePredictor.predict, multimask", times["upstream"],
                      "plain SAM 2.1; 3 full-resolution masks")
    report.add_timing("our plain-SAM decode (session.predict)", times["plain"], "same plain model; 1 mask")
    for name, key in (("UnSAMv2 decode / upstream decode", "unsamv2"),
                      ("our plain-SAM decode / upstream decode", "plain")):
        ratio = times[key].median / times["upstream"].median
        report.add(name, ratio, "x", f"target <= {UPSTREAM_TARGET:g}", verdict(ratio <= UPSTREAM_TARGET))
    add_memory_rows(report, device, "end")


# ---------------------------------------------------------------- output
def format_value(row: Row) -> str:
    if row.unit == "x":
        return f"{row.value:.2f}x"
    return f"{row.value:.1f} {row.unit}"


def table_lines(report: Report, markdown: bool) -> list[str]:
    header = ("measurement", "median", "fastest", "verdict", "note")
    cells = [(r.name, format_value(r), "" if r.best is None else f"{r.best:.1f} ms", r.verdict, r.note)
             for r in report.rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:", "---:", ":---:", "---"]) + "|"]
        return lines + ["| " + " | ".join(c) + " |" for c in cells]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:{'>' if i in (1, 2) else '<'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells]


def print_report(report: Report, markdown: bool) -> None:
    machine = ", ".join(f"{k}: {v}" for k, v in report.machine.items())
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    print(f"\nMachine: {machine}")
    print(f"Settings: {settings}")
    print("RANDOM WEIGHTS: timings are those of the architecture; the masks are meaningless.\n")
    print("\n".join(table_lines(report, markdown)))


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
    print_report(report, args.markdown)
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
