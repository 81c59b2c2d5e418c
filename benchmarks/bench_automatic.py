"""Whole-image segmentation: our AutomaticSegmenter against upstream SAM2AutomaticMaskGenerator.

Both run on the same random-weight plain SAM 2.1 model, the same uint8 RGB image (a synthetic
fluorescence sample), the same point grid and the same thresholds (predicted-IoU and stability
filters off, so both keep every candidate that survives box NMS). Each side runs in its own
subprocess, so that its peak memory (``ru_maxrss``) is its own. A third subprocess measures the
cost of a 5-level hierarchy against one granularity on the UnSAMv2 model.

Random weights: the timings are those of the real architecture; the masks are meaningless.
See ``benchmarks/README.md`` for what each row means.

    python benchmarks/bench_automatic.py --markdown
    python benchmarks/bench_automatic.py --nms 1.0 --markdown    # keep every candidate
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from _report import Report, load_average, machine_info, peak_rss_mib, print_report, synchronize, verdict

SPEEDUP_TARGET = 2.0  # ours at least 2x faster than upstream, embedding included
HIERARCHY_TARGET = 5.0  # 5 levels at most 5x the cost of one granularity
HIERARCHY_LEVELS = [0.2, 0.4, 0.6, 0.8, 1.0]
HIERARCHY_SINGLE = 0.6
WARMUP_POINTS_PER_SIDE = 2  # the untimed warm-up run: same image, a 2x2 grid
IOU_PIXEL_CHUNK = 1 << 16  # pixels per block of the intersection matrix product
SIDES = ("ours", "upstream", "hierarchy")


# ---------------------------------------------------------------- setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from unsamv2_engine.model.specs import SIZES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="SAM 2.1 backbone size")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--image-size", type=int, default=1024, help="side of the square test image (pixels)")
    p.add_argument("--points-per-side", type=int, default=16, help="point grid of both generators")
    p.add_argument("--points-per-batch", type=int, default=64, help="upstream's points per decoder call")
    p.add_argument("--decode-batch", type=int, default=None,
                   help="our prompts per decoder call (default: the segmenter's, 8 on CPU)")
    p.add_argument("--nms", type=float, default=0.7, help="box NMS IoU threshold (1.0 keeps every candidate)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of our side and of the hierarchy")
    p.add_argument("--upstream-repeats", type=int, default=None,
                   help="timed runs of upstream (default: --repeats; upstream is the slow side)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in each side (default: torch's)")
    p.add_argument("--skip-hierarchy", action="store_true", help="leave out the hierarchy cost rows")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    # internal: run one side in this (sub)process
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.upstream_repeats is None:
        args.upstream_repeats = args.repeats
    if not 0.0 < args.nms <= 1.0:
        p.error("--nms must be in (0, 1]")
    return args


def test_image(size: int) -> np.ndarray:
    """The synthetic fluorescence sample 0 at ``size x size``, as the uint8 RGB image the model sees."""
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.synth import generate_sample

    sample = generate_sample(0, modality="fluorescence", ndim="2", shape=(size, size))
    return to_uint8_rgb(sample.image)


# ---------------------------------------------------------------- one side (in its own process)
def timed(fn, device: torch.device, cpu: list[float]) -> tuple[float, object]:
    """Wall seconds of one call; its CPU seconds (all threads of this process) go to ``cpu``.

    CPU time is much less affected than wall time when other processes compete for the cores.
    """
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, out


def upstream_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The shared settings, in SAM2AutomaticMaskGenerator's names."""
    return dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                pred_iou_thresh=0.0, stability_score_thresh=0.0, stability_score_offset=1.0,
                mask_threshold=0.0, box_nms_thresh=args.nms, crop_n_layers=0, min_mask_region_area=0,
                use_m2m=False, multimask_output=True, output_mode="binary_mask")


def our_settings(args: argparse.Namespace):
    from unsamv2_engine.automatic import AutoSettings

    kw = upstream_kwargs(args)
    kw.pop("output_mode")
    return AutoSettings(**kw)


def save_masks(path: Path, masks: np.ndarray, scores: np.ndarray, stability: np.ndarray) -> None:
    """Bool masks ``[N, H, W]`` bit-packed along W (a 1024x1024 mask is 128 KiB)."""
    np.savez(path, packed=np.packbits(masks, axis=-1), width=masks.shape[-1], shape=np.array(masks.shape),
             scores=scores.astype(np.float32), stability=stability.astype(np.float32))


def load_masks(path: Path) -> dict[str, np.ndarray]:
    data = np.load(path)
    shape = tuple(int(x) for x in data["shape"])
    masks = np.unpackbits(data["packed"], axis=-1, count=int(data["width"])).astype(bool).reshape(shape)
    return {"masks": masks, "scores": data["scores"], "stability": data["stability"]}


def run_ours(args: argparse.Namespace, device: torch.device, image: np.ndarray) -> dict[str, object]:
    from unsamv2_engine.automatic import AutomaticSegmenter
    from unsamv2_engine.model import build_model

    model = build_model(args.size, granularity=False, seed=0, device=device)
    settings = our_settings(args)
    warm = AutomaticSegmenter(model, settings.with_(points_per_side=WARMUP_POINTS_PER_SIDE),
                              decode_batch=args.decode_batch)
    warm.generate(image, None)
    segmenter = AutomaticSegmenter(model, settings, decode_batch=args.decode_batch)
    times, cpu, result = [], [], None
    for _ in range(args.repeats):
        seconds, result = timed(lambda: segmenter.generate(image, None), device, cpu)
        times.append(seconds)
    save_masks(args.workdir / "ours.npz", result.masks, result.scores, result.stability)
    return {"times": times, "cpu": cpu, "n": len(result), "decode_batch": segmenter.decode_batch}


def run_upstream(args: argparse.Namespace, device: torch.device, image: np.ndarray) -> dict[str, object]:
    from unsamv2_engine.devices import inference_context
    from unsamv2_engine.model import build_model
    from unsamv2_engine.upstream import ensure_torchvision_importable

    ensure_torchvision_importable()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    model = build_model(args.size, granularity=False, seed=0, device=device)
    kw = upstream_kwargs(args)
    warm = SAM2AutomaticMaskGenerator(model.sam, **{**kw, "points_per_side": WARMUP_POINTS_PER_SIDE})
    with inference_context(device):  # same precision as ours (bf16 autocast on CUDA)
        warm.generate(image)
    generator = SAM2AutomaticMaskGenerator(model.sam, **kw)

    def run() -> list[dict]:
        with inference_context(device):
            return generator.generate(image)

    times, cpu, records = [], [], []
    for _ in range(args.upstream_repeats):
        seconds, records = timed(run, device, cpu)
        times.append(seconds)
    h, w = image.shape[:2]
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, h, w), bool)
    save_masks(args.workdir / "upstream.npz", masks, np.array([r["predicted_iou"] for r in records]),
               np.array([r["stability_score"] for r in records]))
    return {"times": times, "cpu": cpu, "n": len(records)}


def run_hierarchy(args: argparse.Namespace, device: torch.device, image: np.ndarray) -> dict[str, object]:
    """5 levels in one call against one granularity, on the UnSAMv2 model, taking turns."""
    from unsamv2_engine.automatic import AutomaticSegmenter
    from unsamv2_engine.model import build_model

    model = build_model(args.size, seed=0, device=device)
    settings = our_settings(args)
    warm = AutomaticSegmenter(model, settings.with_(points_per_side=WARMUP_POINTS_PER_SIDE),
                              decode_batch=args.decode_batch)
    warm.generate_levels(image, HIERARCHY_LEVELS)
    segmenter = AutomaticSegmenter(model, settings, decode_batch=args.decode_batch)
    single, levels, counts, single_cpu, levels_cpu = [], [], [], [], []
    for _ in range(args.repeats):
        seconds, _ = timed(lambda: segmenter.generate(image, HIERARCHY_SINGLE), device, single_cpu)
        single.append(seconds)
        seconds, result = timed(lambda: segmenter.generate_levels(image, HIERARCHY_LEVELS), device, levels_cpu)
        levels.append(seconds)
        counts = [len(r) for r in result]
    return {"single": single, "levels": levels, "counts": counts, "single_cpu": single_cpu,
            "levels_cpu": levels_cpu}


def run_side(args: argparse.Namespace) -> int:
    from unsamv2_engine.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    image = np.load(args.workdir / "image.npy")
    load_before = load_average()
    out = {"ours": run_ours, "upstream": run_upstream, "hierarchy": run_hierarchy}[args.side](args, device, image)
    out["peak_rss_mib"] = peak_rss_mib()
    out["load"] = f"{load_before} -> {load_average()}"
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    (args.workdir / f"{args.side}.json").write_text(json.dumps(out))
    return 0


def child_argv(args: argparse.Namespace, side: str, workdir: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--workdir", str(workdir),
            "--size", args.size, "--device", args.device, "--image-size", str(args.image_size),
            "--points-per-side", str(args.points_per_side), "--points-per-batch", str(args.points_per_batch),
            "--nms", repr(args.nms), "--repeats", str(args.repeats),
            "--upstream-repeats", str(args.upstream_repeats)]
    if args.decode_batch:
        argv += ["--decode-batch", str(args.decode_batch)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def spawn(args: argparse.Namespace, side: str, workdir: Path) -> dict[str, object]:
    print(f"[{time.strftime('%H:%M:%S')}] running the {side!r} side ...", file=sys.stderr, flush=True)
    subprocess.run(child_argv(args, side, workdir), check=True)
    return json.loads((workdir / f"{side}.json").read_text())


# ---------------------------------------------------------------- agreement
def best_ious(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """For each of our masks, its best IoU with any upstream mask.

    Intersections come from a matrix product of the flattened masks, accumulated over blocks of
    pixels (float32 is exact: every partial count is below 2**24).
    """
    n, m = len(ours), len(theirs)
    if n == 0 or m == 0:
        return np.zeros(n)
    a = torch.from_numpy(ours.reshape(n, -1))
    b = torch.from_numpy(theirs.reshape(m, -1))
    inter = torch.zeros(n, m, dtype=torch.float64)
    for start in range(0, a.shape[1], IOU_PIXEL_CHUNK):
        sl = slice(start, start + IOU_PIXEL_CHUNK)
        inter += (a[:, sl].float() @ b[:, sl].float().T).double()
    area_a = a.sum(1, dtype=torch.float64)[:, None]
    area_b = b.sum(1, dtype=torch.float64)[None, :]
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two empty masks: equal
    return iou.max(1).values.numpy()


def agreement(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, float]:
    ious = best_ious(ours["masks"], theirs["masks"])
    n = min(len(ours["scores"]), len(theirs["scores"]))
    score_diff = np.abs(np.sort(ours["scores"])[::-1][:n] - np.sort(theirs["scores"])[::-1][:n])
    stab_diff = np.abs(np.sort(ours["stability"])[::-1][:n] - np.sort(theirs["stability"])[::-1][:n])
    theirs_set = {m.tobytes() for m in np.packbits(theirs["masks"], axis=-1)}
    equal = sum(m.tobytes() in theirs_set for m in np.packbits(ours["masks"], axis=-1))
    return {"mean_iou": float(ious.mean()) if len(ious) else float("nan"),
            "min_iou": float(ious.min()) if len(ious) else float("nan"),
            "equal_fraction": equal / len(ious) if len(ious) else float("nan"),
            "max_score_diff": float(score_diff.max()) if n else float("nan"),
            "max_stability_diff": float(stab_diff.max()) if n else float("nan")}


# ---------------------------------------------------------------- output
def timing_row(report: Report, name: str, seconds: list[float], note: str) -> float:
    median = 1e3 * statistics.median(seconds)
    report.add(name, median, "ms", f"{note}; {len(seconds)} run(s)", best=1e3 * min(seconds))
    return median


def write_json(report: Report, extra: dict[str, object], path: Path) -> None:
    data = {"machine": report.machine, "settings": report.settings, "random_weights": True,
            "rows": [asdict(r) for r in report.rows], **extra}
    path.write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        return run_side(args)
    from unsamv2_engine.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    report = Report(machine_info(device), {
        "size": args.size, "image": f"{args.image_size}x{args.image_size} synthetic fluorescence",
        "grid": f"{args.points_per_side}x{args.points_per_side}", "points_per_batch": args.points_per_batch,
        "decode_batch": args.decode_batch or "default", "box_nms_thresh": args.nms,
        "thresholds": "pred_iou 0, stability 0, mask 0, offset 1.0, no M2M, no crops",
        "repeats": args.repeats, "upstream_repeats": args.upstream_repeats})
    with tempfile.TemporaryDirectory(prefix="bench_automatic_") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "image.npy", test_image(args.image_size))
        ours = spawn(args, "ours", workdir)
        upstream = spawn(args, "upstream", workdir)
        hierarchy = None if args.skip_hierarchy else spawn(args, "hierarchy", workdir)
        agree = agreement(load_masks(workdir / "ours.npz"), load_masks(workdir / "upstream.npz"))
    report.settings["decode_batch"] = ours["decode_batch"]

    t_ours = timing_row(report, "ours: AutomaticSegmenter.generate(image, None)", ours["times"],
                        f"plain SAM 2.1; incl. embedding; load {ours['load']}")
    t_up = timing_row(report, "upstream: SAM2AutomaticMaskGenerator.generate", upstream["times"],
                      f"same model; incl. embedding; load {upstream['load']}")
    speedup = t_up / t_ours
    report.add("speed-up (upstream / ours), wall", speedup, "x", f"target >= {SPEEDUP_TARGET:g}x",
               verdict(speedup >= SPEEDUP_TARGET))
    c_ours, c_up = statistics.median(ours["cpu"]), statistics.median(upstream["cpu"])
    report.add("CPU time, ours", 1e3 * c_ours, "ms", "user + sys, all threads; median")
    report.add("CPU time, upstream", 1e3 * c_up, "ms", "user + sys, all threads; median")
    report.add("speed-up (upstream / ours), CPU time", c_up / c_ours, "x", "cross-check when the machine is busy")
    report.add("peak RSS, ours", ours["peak_rss_mib"], "MiB", "own process: model, warm-up, runs")
    report.add("peak RSS, upstream", upstream["peak_rss_mib"], "MiB", "own process: model, warm-up, runs")
    if "peak_cuda_mib" in ours:
        report.add("peak CUDA allocated, ours", ours["peak_cuda_mib"], "MiB", "torch.cuda.max_memory_allocated")
        report.add("peak CUDA allocated, upstream", upstream["peak_cuda_mib"], "MiB", "")
    report.add("masks, ours", ours["n"], "", "after box NMS")
    report.add("masks, upstream", upstream["n"], "", "after box NMS")
    report.add("best IoU with an upstream mask, mean", agree["mean_iou"], "", "over our masks")
    report.add("best IoU with an upstream mask, min", agree["min_iou"], "", "")
    report.add("our masks equal to an upstream mask", agree["equal_fraction"], "", "fraction, pixel for pixel")
    report.add("max abs score difference, sorted", agree["max_score_diff"], "", "predicted IoU, both sorted")
    report.add("max abs stability difference, sorted", agree["max_stability_diff"], "", "both sorted")
    if hierarchy is not None:
        t_single = timing_row(report, f"UnSAMv2: generate(image, {HIERARCHY_SINGLE})", hierarchy["single"],
                              f"incl. embedding; load {hierarchy['load']}")
        t_levels = timing_row(report, "UnSAMv2: generate_levels(image, 5 levels)", hierarchy["levels"],
                              f"g = {', '.join(f'{g:g}' for g in HIERARCHY_LEVELS)}; masks "
                              f"{'/'.join(str(c) for c in hierarchy['counts'])}")
        ratio = t_levels / t_single
        report.add("hierarchy cost (5 levels / 1 level), wall", ratio, "x", f"target <= {HIERARCHY_TARGET:g}x",
                   verdict(ratio <= HIERARCHY_TARGET))
        cpu_ratio = statistics.median(hierarchy["levels_cpu"]) / statistics.median(hierarchy["single_cpu"])
        report.add("hierarchy cost (5 levels / 1 level), CPU time", cpu_ratio, "x",
                   "cross-check when the machine is busy")
        report.add("peak RSS, hierarchy", hierarchy["peak_rss_mib"], "MiB", "own process")
    report.machine["load_at_end"] = load_average()
    print_report(report, args.markdown)
    if args.json:
        write_json(report, {"ours": ours, "upstream": upstream, "hierarchy": hierarchy, "agreement": agree},
                   args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
