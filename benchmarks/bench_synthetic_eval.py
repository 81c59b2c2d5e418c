r"""Evaluate a checkpoint on the fixed synthetic benchmark and print the table (issue 3).

    .venv/bin/python benchmarks/bench_synthetic_eval.py                      # random weights: harness check
    .venv/bin/python benchmarks/bench_synthetic_eval.py --checkpoint unsamv2_plus_ckpt.pt \
        --baseline-checkpoint sam2.1_hiera_small.pt --full                   # real numbers

The split is fixed: `unsamv2 synth --seed 2026 --modality fluorescence` (generator version pinned in
its manifest), ``--n`` images, objects subsampled with seed 0. The modes are the granularity
oracle, fixed g = 0.5, level-mapped g (non-oracle), and the plain-SAM baselines (single mask,
best of 3). Without --checkpoint it uses RANDOM-weight hiera-tiny models, and the numbers are
then only a check that the harness runs end to end: the output says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SPLIT_SEED = 2026


def _random_checkpoints(folder: Path) -> tuple[str, str]:
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint

    unsamv2 = save_checkpoint(build_model("tiny", seed=0), folder / "random_unsamv2_tiny.pt", kind="unsamv2")
    sam2 = save_checkpoint(build_model("tiny", granularity=False, seed=0), folder / "random_sam2_tiny.pt", kind="sam2")
    return str(unsamv2), str(sam2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="UnSAMv2 (or SAM 2.1 + --adapter) checkpoint; default: random weights")
    parser.add_argument("--adapter")
    parser.add_argument("--baseline-checkpoint", help="plain SAM 2.1 checkpoint for the sam-* baselines")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=4, help="images in the split (default 4; --full: 20)")
    parser.add_argument("--shape", default="256,256")
    parser.add_argument("--objects", type=int, default=3, help="objects per image (seeded subsample)")
    parser.add_argument("--max-clicks", type=int, default=5, help="default 5 for a quick CPU check; --full: 20")
    parser.add_argument("--full", action="store_true", help="20 images, 20 clicks, 10 objects per image")
    parser.add_argument("-o", "--output", default=None, help="report folder (default: a temporary folder)")
    args = parser.parse_args()
    if args.full:
        args.n, args.max_clicks, args.objects = 20, 20, 10

    from unsamv2_engine.cli import main as unsamv2

    work = Path(tempfile.mkdtemp(prefix="unsamv2-bench-"))
    random_weights = args.checkpoint is None
    checkpoint, baseline = args.checkpoint, args.baseline_checkpoint
    if random_weights:
        checkpoint, random_baseline = _random_checkpoints(work)
        baseline = baseline or random_baseline
    data = work / "fluo2d"
    unsamv2(["synth", "-o", str(data), "--n", str(args.n), "--seed", str(SPLIT_SEED), "--modality", "fluorescence",
             "--ndim", "2", "--shape", args.shape, "--quiet"])
    out = Path(args.output) if args.output else work / "report"
    command = ["evaluate", str(data), "-o", str(out), "--checkpoint", checkpoint, "--device", args.device,
               "--modes", "oracle,fixed:0.5,level,sam-single,sam-oracle3", "--max-clicks", str(args.max_clicks),
               "--max-objects-per-image", str(args.objects), "--seed", "0", "--quiet"]
    if args.adapter:
        command += ["--adapter", args.adapter]
    if baseline:
        command += ["--baseline-checkpoint", baseline]
    start = time.perf_counter()
    rc = unsamv2(command)
    seconds = time.perf_counter() - start
    if rc:
        return rc
    if random_weights:
        print("RANDOM WEIGHTS: these numbers only show that the harness runs end to end; they say nothing "
              "about UnSAMv2. Pass --checkpoint for real numbers.\n")
    print(f"split: synth fluorescence 2D, seed {SPLIT_SEED}, {args.n} images of {args.shape}, {args.objects} "
          f"objects/image, {args.max_clicks} clicks max; evaluation took {seconds:.0f} s\n")
    print((out / "summary.md").read_text())
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
