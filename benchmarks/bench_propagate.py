"""Propagation through a stack: seconds per slice and peak memory (``unsamv2_engine.video``).

A synthetic fluorescence z-stack (``synth``, uint16, 64 slices of 512x512 by default), one object
(or ``--objects`` objects) prompted on the middle slice with one positive point, propagated in both
directions so that every slice is embedded and tracked once. Reported: total time, seconds per slice
(embedding + memory attention + decoder + memory encoder, all objects), slices embedded, peak resident
memory of the process (``ru_maxrss``) and, on CUDA, the peak allocated GPU memory.

Random weights by default (hiera-tiny): the timings are those of the architecture; the masks are
meaningless. ``--checkpoint`` loads a real one.

    python benchmarks/bench_propagate.py --markdown
    python benchmarks/bench_propagate.py --slices 16 --device cpu --markdown
    python benchmarks/bench_propagate.py --size small --device cuda --objects 3 --json prop_cuda.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from _report import Report, load_average, machine_info, peak_rss_mib, print_report, synchronize

from unsamv2_engine.devices import resolve_device
from unsamv2_engine.model.specs import SIZES
from unsamv2_engine.video import DEFAULT_MAX_CACHED_FRAMES, ObjectPrompt, VideoSession


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="SAM 2.1 backbone size (random weights)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file instead of random weights")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--slices", type=int, default=64, help="slices in the stack")
    p.add_argument("--side", type=int, default=512, help="side of each square slice (pixels)")
    p.add_argument("--objects", type=int, default=1, help="objects prompted on the middle slice")
    p.add_argument("--granularity", type=float, default=0.6)
    p.add_argument("--max-cached-frames", type=int, default=DEFAULT_MAX_CACHED_FRAMES)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace, device: torch.device):
    if args.checkpoint:
        from unsamv2_engine.model.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint, device=device)
    from unsamv2_engine.model import build_model

    return build_model(args.size, seed=0, device=device)


def prompts_on_middle_slice(sample, n_objects: int, granularity: float) -> list[ObjectPrompt]:
    """One positive point at the centre of each of the largest cells of the middle slice."""
    z = sample.image.shape[0] // 2
    cells = sample.labels["cell"][z]
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    if len(ids) < n_objects:
        raise SystemExit(f"the middle slice holds {len(ids)} cells; ask for at most that many --objects")
    prompts = []
    for k, cell in enumerate(ids[np.argsort(-counts)][:n_objects]):
        yy, xx = np.nonzero(cells == cell)
        i = np.argmin(np.hypot(yy - yy.mean(), xx - xx.mean()))
        prompts.append(ObjectPrompt(k + 1, z, np.array([[xx[i], yy[i]]], float), np.array([1]), granularity))
    return prompts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    from unsamv2_engine.synth import generate_sample

    sample = generate_sample(0, modality="fluorescence", ndim="3", shape=(args.slices, args.side, args.side))
    model = load_model(args, device)
    report = Report(machine_info(device), {
        "model": model.info.label, "stack": f"{args.slices}x{args.side}x{args.side} {sample.image.dtype}",
        "objects": args.objects, "direction": "both", "max_cached_frames": args.max_cached_frames})
    rss_before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session = VideoSession(model, sample.image, max_cached_frames=args.max_cached_frames)
    session.add_prompts(prompts_on_middle_slice(sample, args.objects, args.granularity))
    synchronize(device)
    start = time.perf_counter()
    result = session.propagate("both")
    synchronize(device)
    seconds = time.perf_counter() - start
    report.add("propagation, total", seconds * 1000, "ms", f"{args.slices} slices, {args.objects} object(s)")
    report.add("seconds per slice", seconds / args.slices, "", "embedding + tracking of every object")
    report.add("slices embedded", result.frames_embedded, "",
               "= slices + prompted slices re-embedded (0 when the cache holds them)")
    report.add("peak RSS (process)", peak_rss_mib(), "MiB", f"{rss_before:.0f} MiB before the session")
    if device.type == "cuda":
        report.add("peak CUDA allocated", torch.cuda.max_memory_allocated(device) / 2**20, "MiB")
    voxels = [int(np.count_nonzero(result.labels == i)) for i in result.object_ids]
    report.add("labelled voxels", sum(voxels), "", "random weights: meaningless, shows the output is filled")
    report.machine["load_at_end"] = load_average()
    print_report(report, args.markdown)
    if args.json:
        args.json.write_text(json.dumps({"machine": report.machine, "settings": report.settings,
                                         "rows": [asdict(r) for r in report.rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
