r"""A miniature reproduction of UnSAMv2's claim on the synthetic benchmark (issue 6).

Train on pseudo-labels only (no ground truth), then score against the generator's ground truth::

    synth train split ──pseudo-label──▶ JSONs ──finetune──▶ adapter
    synth eval split  ──evaluate (before / after, modes oracle, level, fixed:G)──▶ table + plots

    .venv/bin/python benchmarks/bench_finetune_repro.py --markdown -o docs/finetune_repro   # CPU, reduced
    .venv/bin/python benchmarks/bench_finetune_repro.py --base sam2.1_hiera_small.pt --device cuda \
        --train 200 --eval 20 --steps 3000 --trainable granularity --backbone sam2 --max-clicks 20

Everything runs through the ``unsamv2`` commands a user would type. The claim under test: after
training on its own pseudo mask/granularity pairs, the model follows the dial, so choosing g per
object (oracle, an upper bound; or level-mapped g from the generator's hierarchy, no oracle) beats
the same model at one fixed g, and beats the model before training. Without ``--base`` the base is a
RANDOM-weight hiera-tiny (no weights can be downloaded here); then the image encoder's features are
random too, the trainable set defaults to ``decoder`` and the numbers show what a decoder can learn
on frozen random features in a few CPU minutes, not UnSAMv2's accuracy. The output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_info  # noqa: E402

TRAIN_SEED, EVAL_SEED = 3100, 2026
LOG = Path(tempfile.gettempdir()) / "unsamv2-repro.log"
METRICS = (("iou_1", "1-click IoU (%)", 100.0), ("noc_85", "NoC@85", 1.0), ("noc_90", "NoC@90", 1.0))


def _run(argv: list[str]) -> float:
    """Run one ``unsamv2`` command (stdout to the log); its wall time in seconds (a failure stops the benchmark)."""
    from unsamv2_engine.cli import main as unsamv2

    start = time.perf_counter()
    with open(LOG, "a") as log, contextlib.redirect_stdout(log):  # the commands' own summaries go to the log
        code = unsamv2(argv)
    if code:
        raise SystemExit(f"unsamv2 {argv[0]} failed with exit code {code}")
    return time.perf_counter() - start


def _summary(report: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``(mode, level) -> metrics`` from an ``unsamv2 evaluate`` report's summary.csv."""
    with open(report / "summary.csv", newline="") as fh:
        return {(r["mode"], r["level"]): {k: float(r[k]) for k, _, _ in METRICS} for r in csv.DictReader(fh)}


def pseudo_label_recall(train: Path, labels: Path) -> dict[str, tuple[int, int]]:
    """Per level: (true masks matched at IoU >= 0.5 by some pseudo-label, true masks). The truth is
    read only here, to score the pseudo-labels; training never sees it.
    """
    import numpy as np
    import tifffile

    from unsamv2_engine.evaluate.metrics import best_iou_per_truth
    from unsamv2_engine.io.coco import decode_rle

    counts: dict[str, list[int]] = {}
    for doc in sorted(labels.glob("*.json")):
        proposals = [decode_rle(a["segmentation"]) for a in json.loads(doc.read_text())["annotations"]]
        for level_file in sorted((train / doc.stem).glob("labels_*.tif")):
            level = level_file.stem.removeprefix("labels_")
            truth = tifffile.imread(level_file)
            truths = [truth == i for i in np.unique(truth[truth > 0])]
            best = best_iou_per_truth(proposals, truths)
            hits = counts.setdefault(level, [0, 0])
            hits[0] += int(np.sum(best >= 0.5))
            hits[1] += len(truths)
    return {level: (h, t) for level, (h, t) in counts.items()}


def iou_curve(report: Path, mode: str, max_clicks: int) -> list[float]:
    """Mean IoU after 1..max_clicks clicks over a report's objects of ``mode`` (a run that stopped early
    keeps its last IoU).
    """
    curves = []
    with open(report / "objects.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["mode"] != mode:
                continue
            ious = json.loads(row["ious"]) or [0.0]
            curves.append((ious + [ious[-1]] * max_clicks)[:max_clicks])
    return [sum(c[k] for c in curves) / len(curves) for k in range(max_clicks)] if curves else []


def plot_curves(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base",
                        help="base checkpoint (a pretrain-mini file, SAM 2.1 or UnSAMv2); default: random hiera-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", type=int, default=8, help="training images (default 8)")
    parser.add_argument("--eval", type=int, default=4, help="evaluation images (default 4)")
    parser.add_argument("--shape", default="256,256")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--trainable", default=None, help="default: granularity with --base, else decoder")
    parser.add_argument("--backbone", default="classical", help="pseudo-label backbone (default classical)")
    parser.add_argument("--max-masks", type=int, default=8, help="masks per image per step (authors: 30)")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3")
    parser.add_argument("--fixed", default="0.5,1.0", help="fixed-g modes to compare against")
    parser.add_argument("--objects", type=int, default=6, help="evaluated objects per image")
    parser.add_argument("--max-clicks", type=int, default=5)
    parser.add_argument("--no-truth", action="store_true", help="skip the upper bound (training on the truth)")
    parser.add_argument("-o", "--output", help="folder for the reports, plots and table (default: temporary)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    random_base = args.base is None
    trainable = args.trainable or ("decoder" if random_base else "granularity")
    lr = args.lr if args.lr is not None else 1e-3

    work = Path(tempfile.mkdtemp(prefix="unsamv2-repro-"))
    out = Path(args.output) if args.output else work / "out"
    out.mkdir(parents=True, exist_ok=True)
    base = args.base
    if random_base:
        from unsamv2_engine.model import build_model
        from unsamv2_engine.model.checkpoint import save_checkpoint

        base = str(save_checkpoint(build_model("tiny", seed=0), work / "random_tiny.pt", kind="unsamv2"))
    from unsamv2_engine.model.checkpoint import checkpoint_kind, read_checkpoint

    base_is_sam = checkpoint_kind(read_checkpoint(base)) == "sam2"
    times: dict[str, float] = {}
    synth = ["--modality", "fluorescence", "--ndim", "2", "--shape", args.shape, "--quiet"]
    times["synth"] = _run(["synth", "-o", str(work / "train"), "--n", str(args.train), "--seed", str(TRAIN_SEED),
                           *synth])
    times["synth"] += _run(["synth", "-o", str(work / "eval"), "--n", str(args.eval), "--seed", str(EVAL_SEED), *synth])
    images = work / "train_images"
    images.mkdir()
    for sample in sorted(p for p in (work / "train").iterdir() if (p / "image.tif").exists()):
        (images / f"{sample.name}.tif").symlink_to(sample / "image.tif")  # the images only: no labels in sight

    labels = work / "pseudo-labels"
    label_cmd = ["pseudo-label", str(images), "-o", str(labels), "--backbone", args.backbone, "--no-overlays", "-q"]
    if args.backbone != "classical":
        label_cmd += ["--checkpoint", base, "--device", args.device]
    times["pseudo-label"] = _run(label_cmd)
    n_masks = sum(len(json.loads(p.read_text())["annotations"]) for p in labels.glob("*.json"))
    recall = pseudo_label_recall(work / "train", labels)

    def finetune(label_dir: Path, name: str) -> tuple[Path, list[float]]:
        adapter = out / f"adapter_{name}.pt"
        times[f"finetune ({name})"] = _run([
            "finetune", "--images", str(images), "--pseudo-labels", str(label_dir), "--base", base, "-o", str(adapter),
            "--workdir", str(work / f"finetune_{name}"), "--max-steps", str(args.steps), "--trainable", trainable,
            "--lr", str(lr), "--max-masks", str(args.max_masks), "--batch-size", "1", "--val-fraction", "0",
            "--device", args.device, "--seed", "0", "-q"])
        loss_png = work / f"finetune_{name}" / "loss.png"
        if loss_png.exists():
            (out / f"loss_{name}.png").write_bytes(loss_png.read_bytes())
        records = [json.loads(line) for line in (work / f"finetune_{name}" / "log.jsonl").read_text().splitlines()
                   if line.strip()]
        return adapter, [r["loss"] for r in records if "loss" in r]

    adapter, losses = finetune(labels, "pseudo")
    truth_adapter = None
    if not args.no_truth:  # the upper bound: the same training on the generator's truth of the same images
        from bench_learnability import write_truth_labels_for_synth

        truth_labels = write_truth_labels_for_synth(work / "train", work / "truth-labels")
        truth_adapter, truth_losses = finetune(truth_labels, "truth")

    fixed = [f"fixed:{float(g):g}" for g in args.fixed.split(",") if g.strip()]
    g_modes = ["oracle", "level", *fixed]
    evaluate = ["evaluate", str(work / "eval"), "--checkpoint", base, "--device", args.device,
                "--max-clicks", str(args.max_clicks), "--max-objects-per-image", str(args.objects), "--seed", "0",
                "--quiet"]
    runs: list[tuple[str, Path, list[str]]] = []  # (model name, report folder, modes)
    if base_is_sam:
        times["evaluate base"] = _run([*evaluate, "--modes", "sam-single,sam-oracle3", "-o", str(out / "base")])
        runs.append(("base", out / "base", ["sam-single", "sam-oracle3"]))
    else:
        times["evaluate base"] = _run([*evaluate, "--modes", ",".join(g_modes), "-o", str(out / "base")])
        runs.append(("base", out / "base", g_modes))
    times["evaluate pseudo"] = _run([*evaluate, "--modes", ",".join(g_modes), "--adapter", str(adapter),
                                     "-o", str(out / "after_pseudo")])
    runs.append(("trained on pseudo-labels", out / "after_pseudo", g_modes))
    if truth_adapter is not None:
        times["evaluate truth"] = _run([*evaluate, "--modes", ",".join(g_modes), "--adapter", str(truth_adapter),
                                        "-o", str(out / "after_truth")])
        runs.append(("trained on the truth (upper bound)", out / "after_truth", g_modes))

    rows, curves = [], {}
    for name, report, modes in runs:
        results = _summary(report)
        for mode in modes:
            values = results[(mode, "all")]
            rows.append([name, mode, *(f"{values[k] * scale:.2f}" if scale == 1.0 else f"{values[k] * scale:.1f}"
                                       for k, _, scale in METRICS)])
            curves[f"{name}: {mode}"] = iou_curve(report, mode, args.max_clicks)
    plot_curves(curves, out / "iou_vs_clicks.png")
    header = ["model", "g choice / output", *(label for _, label, _ in METRICS)]
    import torch

    machine = ", ".join(f"{k}: {v}" for k, v in machine_info(torch.device(args.device)).items())
    lines = [f"machine: {machine}",
             f"base: {'RANDOM-weight hiera-tiny (no weights can be downloaded here)' if random_base else base}; "
             f"trainable {trainable}; {args.steps} steps at lr {lr:g}, {args.max_masks} masks/step, batch 1",
             f"data: synth fluorescence {args.shape}: {args.train} training images (seed {TRAIN_SEED}) with "
             f"{n_masks} pseudo-masks from the {args.backbone} backbone; {args.eval} evaluation "
             f"images (seed {EVAL_SEED}), {args.objects} objects each, {args.max_clicks} clicks max",
             "pseudo-label recall at IoU 0.5 against the generator's truth (scoring only): "
             + ", ".join(f"{level} {h}/{t} ({h / max(t, 1):.0%})" for level, (h, t) in recall.items()),
             f"loss (pseudo-labels): first {losses[0]:.3f}, last 10 mean {sum(losses[-10:]) / len(losses[-10:]):.3f}",
             "time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), ""]
    if args.markdown:
        table = "\n".join(["| " + " | ".join(header) + " |",
                           "|" + "|".join(["---"] * 2 + ["---:"] * len(METRICS)) + "|",
                           *("| " + " | ".join(r) + " |" for r in rows)])
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])
    text = "\n".join(lines) + table + "\n"
    if random_base:
        text += ("\nRANDOM BASE: the image encoder is untrained, so these numbers measure what the decoder learns "
                 "from pseudo-labels on random features, not UnSAMv2's accuracy. Pass --base for real numbers.\n")
    print(text)
    (out / "table.md").write_text(text)
    (out / "curves.json").write_text(json.dumps(curves, indent=1))
    print(f"reports: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
