"""Large images: seconds and peak memory of embed, first click (cold / cached) and tiled auto, per image size.

For each side N (default 2048 4096 8192 16384) a synthetic N x N uint16 fluorescence image with nuclei of
15-20 px diameter (about one per 48 x 48 px) is written as an uncompressed TIFF (read memory-mapped).
Each step runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``embed``: ``unsamv2 embed IMAGE -o IMAGE.embeddings.zarr`` (every tile);
* ``click cold``: a TiledSession click on one nucleus (embeds the tile(s) it needs; model load excluded);
* ``click cached``: the same click reading the tile embedding from the cache;
* ``auto``: ``unsamv2 auto IMAGE -g G -o OUT.ome.zarr`` tiled, cold (embeds every tile again);
* ``squashed``: the regular whole-image path (the image squashed to the 1024 px model input), sides <= 4096;

then how many nuclei each whole-image path finds (a truth nucleus is found when the label under its
centre has IoU >= 0.5 with it). Model: a random-weight hiera-tiny UnSAMv2 unless ``--checkpoint``:
timings are those of the architecture; with random weights the nuclei counts are MEANINGLESS.

    nice -n 10 python benchmarks/bench_large.py --sizes 2048 4096 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RSS_TARGET_GIB = 4.0  # unsamv2 auto on 16384^2 uint16 on CPU


def make_image(path: Path, side: int, seed: int = 0) -> np.ndarray:
    """Write the image block by block into a memory-mapped TIFF; returns the nuclei [K, 3] (y, x, r)."""
    import tifffile

    rng = np.random.default_rng(seed)
    out = tifffile.memmap(str(path), shape=(side, side), dtype=np.uint16)
    spacing = 48
    centres = [(y + rng.integers(-12, 13), x + rng.integers(-12, 13))
               for y in range(spacing // 2, side - spacing // 2, spacing)
               for x in range(spacing // 2, side - spacing // 2, spacing)]
    radii = rng.uniform(7.5, 10.0, len(centres))
    nuclei = np.array([(cy, cx, r) for (cy, cx), r in zip(centres, radii)], np.float64)
    block = 1024
    for by in range(0, side, block):
        for bx in range(0, side, block):
            bh, bw = min(by + block, side) - by, min(bx + block, side) - bx
            tile = rng.normal(300, 30, (bh, bw))
            near = nuclei[(np.abs(nuclei[:, 0] - (by + block / 2)) < block / 2 + 12)
                          & (np.abs(nuclei[:, 1] - (bx + block / 2)) < block / 2 + 12)]
            for cy, cx, r in near:  # each disc drawn inside its own box of the block
                y0, y1 = max(int(cy - r) - 1, by), min(int(cy + r) + 2, by + bh)
                x0, x1 = max(int(cx - r) - 1, bx), min(int(cx + r) + 2, bx + bw)
                if y0 >= y1 or x0 >= x1:
                    continue
                yy, xx = np.mgrid[y0:y1, x0:x1]
                tile[y0 - by:y1 - by, x0 - bx:x1 - bx][np.hypot(yy - cy, xx - cx) < r] += 2500
            out[by:by + bh, bx:bx + bw] = np.clip(tile, 0, 65535).astype(np.uint16)
    out.flush()
    del out
    return nuclei


# ---------------------------------------------------------------------------------------------- child steps
def _model(args):
    import torch

    from unsamv2_engine.model.checkpoint import load_checkpoint

    return load_checkpoint(Path(args.checkpoint), source=args.checkpoint, device=torch.device(args.device))


def child(args) -> dict:
    """One step in this process; prints {seconds, peak_rss_mib, ...} as JSON."""
    from unsamv2_engine import cli

    t0, c0 = time.perf_counter(), time.process_time()
    extra: dict = {}
    if args.step == "embed":
        code = cli.main(["embed", args.image, "-o", args.cache, "--checkpoint", args.checkpoint, "--device",
                         args.device, "-q"])
        assert code == 0
    elif args.step in ("click_cold", "click_cached"):
        from unsamv2_engine.io.omezarr import open_lazy_image
        from unsamv2_engine.tiling.cache import EmbeddingCache, cache_key
        from unsamv2_engine.tiling.interactive import TiledSession
        from unsamv2_engine.tiling.source import ImageSource

        model = _model(args)
        source = ImageSource(open_lazy_image(args.image))
        lookup = None
        if args.step == "click_cached":
            key = cache_key(source, model, model.image_size, 256)
            lookup = EmbeddingCache.open(args.cache, key, source.shape_hw).lookup_to(model.device)
        t0, c0 = time.perf_counter(), time.process_time()  # the click: intensity, view, embedding or cache, decode
        sess = TiledSession(model, source, features=lookup)
        pred = sess.predict([[args.x, args.y]], [1], args.g)
        extra = {"embedded": sess.embedded, "step": pred.step, "area": pred.area}
    elif args.step == "auto":
        points = ["--points-per-side", str(args.points_per_side)] if args.points_per_side else []
        code = cli.main(["auto", args.image, "-g", str(args.g), "-o", args.out, "--tile-size", "1024",
                         "--checkpoint", args.checkpoint, "--device", args.device, "-q", *points])
        assert code == 0
    elif args.step == "squashed":
        from unsamv2_engine.automatic.segmenter import AutomaticSegmenter
        from unsamv2_engine.automatic.settings import AutoSettings
        from unsamv2_engine.io import write_labels
        from unsamv2_engine.io.omezarr import open_lazy_image

        model = _model(args)
        t0, c0 = time.perf_counter(), time.process_time()
        settings = AutoSettings.cpu().with_(points_per_side=args.points_per_side)
        res = AutomaticSegmenter(model, settings).generate(np.asarray(open_lazy_image(args.image)), args.g)
        write_labels(args.out, res.label_image())
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mib": rss, **extra}


def run_child(args, step: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--checkpoint", args.checkpoint, "--device", args.device,
           "--g", str(args.g)] + (["--points-per-side", str(args.points_per_side)] if args.points_per_side else [])
    cmd += [x for k, v in kw.items() for x in (f"--{k}", str(v))]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    if out.returncode != 0:
        raise RuntimeError(f"step {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def nuclei_found(labels_reader, nuclei: np.ndarray, side: int) -> int:
    """Truth nuclei whose centre lies on a label of IoU >= 0.5 with the nucleus disc.

    Reads the labels in 2048-px blocks (twice: label areas, then the nuclei of each block with a margin),
    never the whole image and never one small read per nucleus.
    """
    areas: dict[int, int] = {}
    block, margin = 2048, 16
    for by in range(0, side, block):
        for bx in range(0, side, block):
            lab = np.asarray(labels_reader(by, min(by + block, side), bx, min(bx + block, side)))
            ids, counts = np.unique(lab, return_counts=True)
            for i, c in zip(ids, counts):
                areas[int(i)] = areas.get(int(i), 0) + int(c)
    found = 0
    for by in range(0, side, block):
        for bx in range(0, side, block):
            inside = nuclei[(nuclei[:, 0] >= by) & (nuclei[:, 0] < by + block)
                            & (nuclei[:, 1] >= bx) & (nuclei[:, 1] < bx + block)]
            if not len(inside):
                continue
            oy, ox = max(by - margin, 0), max(bx - margin, 0)
            lab = np.asarray(labels_reader(oy, min(by + block + margin, side), ox, min(bx + block + margin, side)))
            for cy, cx, r in inside:
                y0, y1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, side))
                x0, x1 = int(max(cx - r - 2, 0)), int(min(cx + r + 3, side))
                win = lab[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                yy, xx = np.mgrid[y0:y1, x0:x1]
                disc = np.hypot(yy - cy, xx - cx) < r
                under = int(lab[int(cy) - oy, int(cx) - ox])
                if under == 0:
                    continue
                inter = int((disc & (win == under)).sum())
                if inter / (areas[under] + disc.sum() - inter) >= 0.5:
                    found += 1
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--g", type=float, default=0.3, help="granularity of the click and of auto (default 0.3)")
    p.add_argument("--checkpoint", help="model file (default: a random-weight hiera-tiny UnSAMv2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--points-per-side", type=int,
                   help="auto's point grid per tile (default: the preset's, 16x16 on CPU). The decoder costs about "
                        "40 ms per point on one CPU core, so 16x16 points make a 16384^2 image (484 tiles) a "
                        "multi-hour run; a smaller grid changes the time per tile, not how memory is bounded")
    p.add_argument("--workdir", help="folder for the images and outputs (default: a temporary folder)")
    p.add_argument("--steps", nargs="+", default=["embed", "click_cold", "click_cached", "auto", "squashed"],
                   help="steps to run (default: all; click_cached needs embed's cache in --workdir)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("image", "cache", "out"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--x", type=float, help=argparse.SUPPRESS)
    p.add_argument("--y", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.step = args.child
        print(json.dumps(child(args)))
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_large_"))
    work.mkdir(parents=True, exist_ok=True)
    random_weights = args.checkpoint is None
    if random_weights:
        from unsamv2_engine.model import build_model
        from unsamv2_engine.model.checkpoint import save_checkpoint

        args.checkpoint = str(save_checkpoint(build_model("tiny", seed=0), work / "tiny_random.pt", kind="unsamv2"))
    rows = []
    for side in args.sizes:
        image = work / f"nuclei_{side}.tif"
        nuclei = make_image(image, side)
        cy, cx, _ = nuclei[len(nuclei) // 2]
        row = {"side": side, "nuclei": len(nuclei)}
        cache = work / f"nuclei_{side}.embeddings.zarr"
        for step, kw in [("embed", {"image": image, "cache": cache}),
                         ("click_cold", {"image": image, "x": cx, "y": cy}),
                         ("click_cached", {"image": image, "cache": cache, "x": cx, "y": cy}),
                         ("auto", {"image": image, "out": work / f"auto_{side}.ome.zarr"})]:
            if step not in args.steps:
                continue
            r = run_child(args, step, **kw)
            row[f"{step}_s"], row[f"{step}_rss_mib"] = r["seconds"], r["peak_rss_mib"]
            row[f"{step}_cpu_s"] = r["cpu_seconds"]
            print(f"[{side}] {step}: {r}", file=sys.stderr, flush=True)
        if "auto" in args.steps:
            from unsamv2_engine.io.omezarr import open_zarr_image

            z = open_zarr_image(work / f"auto_{side}.ome.zarr")
            row["auto_found"] = nuclei_found(lambda a, b, c, d, z=z: z[a:b, c:d], nuclei, side)
        if side <= 4096 and "squashed" in args.steps:
            out = work / f"squashed_{side}.tif"
            r = run_child(args, "squashed", image=image, out=out)
            row["squashed_s"], row["squashed_rss_mib"] = r["seconds"], r["peak_rss_mib"]
            import tifffile

            lab = tifffile.imread(str(out))
            row["squashed_found"] = nuclei_found(lambda a, b, c, d, lab=lab: lab[a:b, c:d], nuclei, side)
            print(f"[{side}] squashed: {r}", file=sys.stderr, flush=True)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["area_ratio"] = (row["side"] / base["side"]) ** 2
        for step in ("auto", "embed"):
            if f"{step}_cpu_s" in row and f"{step}_cpu_s" in base:
                row[f"{step}_time_ratio"] = row[f"{step}_cpu_s"] / base[f"{step}_cpu_s"]
    load = os.getloadavg()
    print_table(rows, random_weights, load, args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": load, "random_weights": random_weights}, indent=1))
    return 0


def print_table(rows, random_weights, load, markdown: bool) -> None:
    cols = [("side", "side px", "{:d}"), ("embed_s", "embed s", "{:.1f}"), ("embed_cpu_s", "embed CPU s", "{:.1f}"),
            ("embed_rss_mib", "embed RSS MiB", "{:.0f}"),
            ("click_cold_s", "click cold s", "{:.2f}"), ("click_cold_rss_mib", "click RSS MiB", "{:.0f}"),
            ("click_cached_s", "click cached s", "{:.2f}"), ("auto_s", "auto s", "{:.1f}"),
            ("auto_cpu_s", "auto CPU s", "{:.1f}"),
            ("auto_rss_mib", "auto RSS MiB", "{:.0f}"), ("area_ratio", "area ratio", "{:.0f}"),
            ("auto_time_ratio", "auto CPU-time ratio", "{:.2f}"), ("nuclei", "nuclei", "{:d}"),
            ("auto_found", "found tiled", "{:d}"), ("squashed_found", "found squashed", "{}"),
            ("squashed_s", "squashed s", "{}")]
    sep = " | " if markdown else "  "
    lines = [sep.join(h for _, h, _ in cols)]
    if markdown:
        lines = ["| " + lines[0] + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[k]) if k in r and r[k] is not None else "-" for k, _, fmt in cols]
        lines.append(("| " + sep.join(cells) + " |") if markdown else sep.join(cells))
    print("\n".join(lines))
    print(f"\nload average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          + ("RANDOM WEIGHTS: timings are the architecture's, the nuclei counts are meaningless." if random_weights
             else "model: the given checkpoint."))


if __name__ == "__main__":
    sys.exit(main())
