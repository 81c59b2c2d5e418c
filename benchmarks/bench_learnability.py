r"""Learnability check (issue 13, item 2): training the granularity module on nested truth teaches the dial.

Train only the granularity module (``unsamv2 finetune --trainable granularity``, embeddings cached, the
encoder frozen) of a base model on labels made from the synthetic generator's truth (every cell, its
nuclei and nucleoli, g by the sqrt-area rule in the pseudo-label JSON layout), then click once inside
each nucleus of held-out images and compare:

* matched: IoU with the nucleus at the nucleus's g, with the cell at the cell's g;
* swapped: the same two masks scored against the other object (nucleus at the cell's g, ...);
* base: the base model's own answer to the click (no dial), against the nucleus and the cell.

A granularity module that learned its job gives matched >> swapped, and matched above the base::

    unsamv2 pretrain-mini -o mini.pt --image-size 128 --synth-shape 128 --max-minutes 65 --device cpu
    .venv/bin/python benchmarks/bench_learnability.py --base mini.pt --train 32 --eval 8 --steps 400 \\
        -o docs/learnability --markdown

On a random-weight base (no ``--base``) the check cannot pass: the encoder's features carry no
objects (the output says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_info  # noqa: E402

# far from the pretraining stream of pretrain-mini (generator seeds seed * 1_000_003 + 0, 1, 2, ...)
TRAIN_SEED, EVAL_SEED = 51_000_000, 61_000_000
ROWS = (("matched", "nucleus at g_nucleus", "matched_nucleus"), ("matched", "cell at g_cell", "matched_cell"),
        ("swapped", "nucleus at g_cell", "swapped_nucleus"), ("swapped", "cell at g_nucleus", "swapped_cell"),
        ("base, no dial", "nucleus", "base_nucleus"), ("base, no dial", "cell", "base_cell"))


def _run(argv: list[str], log: Path) -> float:
    from unsamv2_engine.cli import main as unsamv2

    start = time.perf_counter()
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        code = unsamv2(argv)
    if code:
        raise SystemExit(f"unsamv2 {argv[0]} failed with exit code {code}; see {log}")
    return time.perf_counter() - start


def write_truth_labels_for_synth(synth_dir: Path, out_dir: Path) -> Path:
    """``out_dir/<sample name>.json``: the truth of each sample of an ``unsamv2 synth`` folder in the
    pseudo-label layout, named like the ``<sample name>.tif`` images of that folder. Each sample is
    regenerated from its recorded seed and settings (and checked to give the same image).
    """
    import numpy as np
    import tifffile

    from unsamv2_engine.pseudo.pipeline import image_id_for, pseudo_label_document
    from unsamv2_engine.synth import generate_sample
    from unsamv2_engine.synth.config import SynthConfig
    from unsamv2_engine.synth.truth_labels import truth_annotations

    out_dir.mkdir(parents=True, exist_ok=True)
    for meta_file in sorted(synth_dir.glob("*/sample.json")):
        meta = json.loads(meta_file.read_text())
        sample = generate_sample(meta["seed"], modality=meta["modality"], ndim=meta["ndim"],
                                 shape=tuple(meta["shape"][:2]), config=SynthConfig.from_dict(meta["config"]))
        if not np.array_equal(sample.image, tifffile.imread(meta_file.parent / "image.tif")):
            raise SystemExit(f"{meta_file.parent}: regenerating the sample did not give its image")
        name = f"{meta['name']}.tif"
        h, w = sample.image.shape[:2]
        doc = pseudo_label_document(truth_annotations(sample, image_id=image_id_for(name)), file_name=name,
                                    width=w, height=h, image_id=image_id_for(name),
                                    info={"description": "ground truth of the synthetic generator (upper bound)"})
        (out_dir / f"{meta['name']}.json").write_text(json.dumps(doc))
    return out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base checkpoint (e.g. a pretrain-mini file); default: random hiera-tiny")
    parser.add_argument("--train", type=int, default=32, help="training images (default 32)")
    parser.add_argument("--eval", type=int, default=8, help="held-out images (default 8)")
    parser.add_argument("--shape", default="128,128", help="image shape H,W (default 128,128)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-masks", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", help="folder for table.md, result.json and the adapter")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="unsamv2-learn-"))
    out = Path(args.output) if args.output else work / "out"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    base = args.base
    if base is None:
        from unsamv2_engine.model import build_model
        from unsamv2_engine.model.checkpoint import save_checkpoint

        base = str(save_checkpoint(build_model("tiny", granularity=False, seed=0, image_size=shape[0]),
                                   work / "random_tiny.pt", kind="sam2"))
    from unsamv2_engine.evaluate.learnability import evaluate_checkpoint
    from unsamv2_engine.synth.truth_labels import write_truth_dataset

    start = time.perf_counter()
    images, labels, n_masks = write_truth_dataset(work / "train", [TRAIN_SEED + i for i in range(args.train)], shape)
    adapter = out / "adapter.pt"
    seconds = _run(["finetune", "--images", str(images), "--pseudo-labels", str(labels), "--base", base,
                    "-o", str(adapter), "--workdir", str(work / "finetune"), "--max-steps", str(args.steps),
                    "--trainable", "granularity", "--lr", str(args.lr), "--max-masks", str(args.max_masks),
                    "--batch-size", "1", "--val-fraction", "0", "--cache-embeddings", "--device", args.device,
                    "--seed", "0", "-q"], log)
    log_text = (work / "finetune" / "log.jsonl").read_text()
    log_lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    losses = [r["loss"] for r in log_lines if "loss" in r]
    result = evaluate_checkpoint(base, adapter, [EVAL_SEED + i for i in range(args.eval)], shape, args.device)
    import torch

    machine = ", ".join(f"{k}: {v}" for k, v in machine_info(torch.device(args.device)).items())
    header = [f"machine: {machine}",
              f"base: {base if args.base else 'RANDOM-weight hiera-tiny'}; trainable granularity (embeddings cached); "
              f"{args.steps} steps at lr {args.lr:g}, {args.max_masks} masks per step, batch 1; "
              f"training {seconds:.0f} s",
              f"data: synthetic fluorescence {shape[0]}x{shape[1]}, {args.train} training images (seed {TRAIN_SEED}+) "
              f"with {n_masks} truth masks (cells, nuclei, nucleoli; sqrt-area g); {args.eval} held-out images "
              f"(seed {EVAL_SEED}+), {result.n} nuclei clicked once each",
              f"loss: first 10 mean {sum(losses[:10]) / max(len(losses[:10]), 1):.3f}, last 10 mean "
              f"{sum(losses[-10:]) / max(len(losses[-10:]), 1):.3f}", ""]
    rows = [(what, target, f"{100 * result.mean(key):.1f}") for what, target, key in ROWS]
    rows += [("matched (mean of the two)", "", f"{100 * result.matched:.1f}"),
             ("swapped (mean of the two)", "", f"{100 * result.swapped:.1f}"),
             ("base (mean of the two)", "", f"{100 * result.base:.1f}")]
    if args.markdown:
        table = "\n".join(["| decode | scored against | IoU (%) |", "|---|---|---:|",
                           *(f"| {a} | {b} | {c} |" for a, b, c in rows)])
    else:
        table = "\n".join(f"{a:28s} {b:22s} {c:>6s}" for a, b, c in rows)
    verdict = ("PASS: matched beats swapped and the base" if result.matched > result.swapped + 0.15
               and result.matched > result.base else "FAIL: the dial does not select the scale")
    text = "\n".join(header) + table + f"\n\n{verdict}\n"
    if args.base is None:
        text += "RANDOM BASE: the encoder's features carry no objects; this run cannot show learnability.\n"
    print(text)
    (out / "table.md").write_text(text)
    (out / "result.json").write_text(json.dumps({"summary": result.summary(), "steps": args.steps, "lr": args.lr,
                                                 "train_seconds": seconds, "losses": losses,
                                                 "total_seconds": time.perf_counter() - start}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
