"""Batch throughput on Dask (issue 17): images per minute of ``pseudo-label`` and ``auto`` with 1 and 2 workers.

    .venv/bin/python benchmarks/bench_batch.py [--images 32] [--shape 256] [--image-size 256] \
        [--workers 1,2] [--device cpu] [--json out.json]

Makes ``--images`` synthetic fluorescence images (``unsamv2_engine.synth``, ``--shape`` px square,
written as PNGs into one folder) and a RANDOM-weight hiera-tiny UnSAMv2 checkpoint with a
``--image-size`` model input (timings are the architecture's; masks are meaningless). Then runs,
each in its own ``unsamv2`` process, exactly as a user would::

    unsamv2 pseudo-label "IMAGES/*.png" -o OUT --checkpoint CKPT --max-side SHAPE --no-overlays --workers N
    unsamv2 auto "IMAGES/*.png" -g 0.5 -o OUT --checkpoint CKPT --points-per-side 8 --workers N

``--workers 1`` is the in-process path (no Dask); more starts a LocalCluster of N processes with
cores // N torch threads each. Reported per run: wall time of the whole command (start-up, cluster,
model loads included), images per minute from it, and the median seconds per image on a worker
(from the manifest). Every output folder is fresh, so nothing is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_inputs(root: Path, n: int, shape: int, image_size: int) -> tuple[Path, Path]:
    """``n`` synthetic fluorescence PNGs in ``root/images`` and a random-weight checkpoint ``root/tiny.pt``."""
    import numpy as np
    from PIL import Image

    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint
    from unsamv2_engine.synth import generate_sample

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sample = generate_sample(1000 + i, modality="fluorescence", shape=(shape, shape))
        Image.fromarray(np.ascontiguousarray(to_uint8_rgb(sample.image))).save(images / f"synth_{i:03d}.png")
    ckpt = save_checkpoint(build_model("tiny", seed=0, image_size=image_size), root / "tiny.pt", kind="unsamv2")
    return images, ckpt


def run(command: list[str], out: Path) -> dict:
    """Run one ``unsamv2`` command; wall time and the manifest's per-item seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "unsamv2_engine", *command], capture_output=True, text=True,
                            cwd=REPO)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    items = json.loads((out / "manifest.json").read_text())["items"]
    done = [i for i in items if i["status"] == "done"]
    return {"wall_s": round(wall, 2), "images": len(done), "images_per_min": round(len(done) / wall * 60, 2),
            "median_item_s": round(statistics.median(i["seconds"] for i in done), 3),
            "workers_used": len({i["worker"] for i in done}), "summary": result.stdout.strip().splitlines()[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32, help="synthetic images (default 32)")
    p.add_argument("--shape", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--image-size", type=int, default=256, help="model input side (default 256; 1024 = real SAM 2.1)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--device", default="cpu", help="--device of the commands (default cpu)")
    p.add_argument("--points-per-side", type=int, default=8, help="auto's point grid (default 8)")
    p.add_argument("--commands", default="pseudo-label,auto", help="which commands (default pseudo-label,auto)")
    p.add_argument("--json", help="also write the results as JSON")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        images, ckpt = make_inputs(root, args.images, args.shape, args.image_size)
        rows = []
        for command in args.commands.split(","):
            for n in workers:
                out = root / f"{command}-{n}"
                common = ["--checkpoint", str(ckpt), "--device", args.device, "-q", "--workers", str(n)]
                if command == "pseudo-label":
                    argv_ = ["pseudo-label", str(images / "*.png"), "-o", str(out), "--max-side", str(args.shape),
                             "--no-overlays", *common]
                else:
                    argv_ = ["auto", str(images / "*.png"), "-g", "0.5", "-o", str(out), "--points-per-side",
                             str(args.points_per_side), *common]
                row = {"command": command, "workers": n, **run(argv_, out)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nmachine: {platform.platform()}, {cores} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{args.images} images of {args.shape} px, hiera-tiny at {args.image_size} px, device {args.device}\n")
    print("| command | workers | wall s | images/min | median s per image on a worker | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        base = next(r for r in rows if r["command"] == row["command"] and r["workers"] == workers[0])
        print(f"| {row['command']} | {row['workers']} | {row['wall_s']} | {row['images_per_min']} | "
              f"{row['median_item_s']} | {row['images_per_min'] / base['images_per_min']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
