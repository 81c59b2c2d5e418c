"""A short fine-tuning run with the default settings: wall time, time per step and peak memory (issue 13).

The command a user types, in its own process (so that its peak resident memory, ``ru_maxrss`` of the
child, is its own)::

    unsamv2 finetune --images DIR --base CKPT -o adapter.pt --max-steps 3 --device cpu

on ``--images`` synthetic fluorescence images of ``--shape`` pixels (default 3 of 384x384). The base is
a seeded random-weight SAM 2.1 hiera-``--size`` (timings and memory are those of the architecture; the
masks are meaningless), unless ``--base`` gives a file. Extra finetune options after ``--``, e.g.
``-- --mask-chunk 0`` for the behaviour before issue 13 (all masks at once)::

    .venv/bin/python benchmarks/bench_finetune_cpu.py --markdown
    .venv/bin/python benchmarks/bench_finetune_cpu.py --markdown -- --mask-chunk 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import load_average, machine_info  # noqa: E402

SEED = 4400


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--shape", type=int, default=384)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--base", help="a checkpoint file (default: a random-weight plain SAM 2.1 of --size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("extra", nargs="*", help="more finetune options (after --)")
    args = parser.parse_args()

    import tifffile

    from unsamv2_engine.synth import generate_sample

    work = Path(tempfile.mkdtemp(prefix="unsamv2-ftcpu-"))
    images = work / "images"
    images.mkdir()
    for i in range(args.images):
        tifffile.imwrite(images / f"img{i}.tif",
                         generate_sample(SEED + i, modality="fluorescence", shape=(args.shape, args.shape)).image)
    base = args.base
    if base is None:
        from unsamv2_engine.model import build_model
        from unsamv2_engine.model.checkpoint import save_checkpoint

        base = str(save_checkpoint(build_model(args.size, granularity=False, seed=0), work / "base.pt", kind="sam2"))
    cmd = [sys.executable, "-m", "unsamv2_engine", "finetune", "--images", str(images), "--base", base,
           "-o", str(work / "adapter.pt"), "--max-steps", str(args.steps), "--device", args.device,
           "--json-progress", *args.extra]
    load_before = load_average()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stages: dict[str, float] = {}
    steps, vals = [], []
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        now = time.perf_counter() - start
        if event.get("event") == "stage":
            stages.setdefault(event.get("stage", "?"), now)
        elif event.get("event") == "step":
            steps.append(event["seconds"])
        elif event.get("event") == "val":
            vals.append(event["seconds"])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    peak_mib = usage.ru_maxrss / 1024
    rows = [("wall time of the command", f"{wall:.0f} s"),
            ("time to the first training step (load, pseudo-labels, embeddings)",
             f"{stages.get('train', float('nan')):.0f} s"),
            ("seconds per training step", ", ".join(f"{s:.1f}" for s in steps)),
            ("validation passes (s)", ", ".join(f"{v:.1f}" for v in vals) or "none"),
            ("peak RSS of the command", f"{peak_mib:.0f} MiB ({peak_mib / 1024:.2f} GiB)"),
            ("exit code", str(os.waitstatus_to_exitcode(status)))]
    import torch

    info = machine_info(torch.device(args.device))
    header = (f"{args.images} images of {args.shape}x{args.shape}, --max-steps {args.steps}, base "
              f"{'random ' + args.size if args.base is None else args.base}, extra options: "
              f"{' '.join(args.extra) or 'none'}; load average before {load_before}, after {load_average()}")
    if args.markdown:
        print(f"{header}\n\n| | |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        print(f"\nMachine: {info}")
    else:
        print(header)
        for name, value in rows:
            print(f"{name:70s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
