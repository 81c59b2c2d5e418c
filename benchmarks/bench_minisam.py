"""Does the miniature SAM segment? First-click and NoC numbers on held-out synthetic images (issue 13).

    .venv/bin/python benchmarks/bench_minisam.py CKPT [--images 12] [--shape 128] [--markdown]
    # the last saved state of a running pretrain-mini:
    .venv/bin/python benchmarks/bench_minisam.py --from-work mini_work

Held-out images: ``unsamv2 synth`` with seed :data:`HELDOUT_SEED`, far from the seeds of the
pretraining stream (``seed * 1_000_003 + position``). Scored
with ``unsamv2 evaluate``: ``sam-oracle3`` (the best of the 3 outputs against the truth at every click;
its 1-click IoU is the issue's "best of 3 after one click") and ``sam-single`` (the single-mask output),
on cells and nuclei.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

HELDOUT_SEED = 9_000_000_777  # far from the pretraining stream (seed * 1_000_003 + position)


def _run(argv: list[str]) -> None:
    from unsamv2_engine.cli import main as unsamv2

    code = unsamv2(argv)
    if code:
        raise SystemExit(f"unsamv2 {argv[0]} failed with exit code {code}")


def checkpoint_from_work(work: Path, out: Path) -> Path:
    """A model file from ``work/last.pt`` of a (running) ``pretrain-mini``."""
    import torch

    from unsamv2_engine.minisam.pretrain import PretrainConfig, save_mini_checkpoint
    from unsamv2_engine.model import build_model

    state = torch.load(work / "last.pt", map_location="cpu", weights_only=True)
    config = PretrainConfig.from_dict(state["config"])
    model = build_model(config.size, granularity=False, image_size=config.image_size)
    model.sam.load_state_dict(state["model"])
    return save_mini_checkpoint(model, out, config=config, steps=int(state["step"]), seconds=float(state["elapsed"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--from-work", type=Path, help="use DIR/last.pt of a pretrain-mini work folder")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--shape", type=int, default=128)
    parser.add_argument("--objects", type=int, default=8, help="objects per image and level")
    parser.add_argument("--max-clicks", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", type=Path, help="report folder (default: temporary)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unsamv2-minisam-"))
    ckpt = args.checkpoint
    if args.from_work is not None:
        ckpt = str(checkpoint_from_work(args.from_work, work / "mini.pt"))
    if ckpt is None:
        parser.error("give a checkpoint or --from-work DIR")
    _run(["synth", "-o", str(work / "heldout"), "--n", str(args.images), "--seed", str(HELDOUT_SEED),
          "--modality", "fluorescence", "--ndim", "2", "--shape", f"{args.shape},{args.shape}", "--quiet"])
    out = args.output or work / "report"
    _run(["evaluate", str(work / "heldout"), "--checkpoint", ckpt, "--device", args.device,
          "--modes", "sam-oracle3,sam-single", "--levels", "cell,nucleus", "--max-clicks", str(args.max_clicks),
          "--max-objects-per-image", str(args.objects), "--no-sweep", "--seed", "0", "-o", str(out), "--quiet"])
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = ("iou_1", "noc_85", "noc_90")
    print(f"checkpoint {ckpt}; {args.images} held-out images of {args.shape}x{args.shape}; report {out}")
    print("| mode | level | objects | 1-click IoU | NoC@85 | NoC@90 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['level']} | {r.get('objects', r.get('n', ''))} | "
              + " | ".join(f"{float(r[k]):.3f}" if k == "iou_1" else f"{float(r[k]):.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
