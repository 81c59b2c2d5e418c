"""``unsamv2 sweep``: one prompt at several granularities -> multi-page label TIFF (+ CSV, JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from unsamv2_engine.cli.loading import TIFF_SUFFIXES, check_command_outputs, check_output_suffix, timed
from unsamv2_engine.cli.options import finish, parse_granularities, subparser
from unsamv2_engine.cli.output import EXIT_OK, emit_json, say, summary
from unsamv2_engine.cli.segment import INFERENCE_OPTIONS, base_metadata, prepare


def register(sub: Any) -> None:
    """Add ``sweep`` to the ``unsamv2`` subparsers."""
    from unsamv2_engine.cli.embed import add_tiling_options

    parser = subparser(
        sub, "sweep", "segment one prompt at several granularities",
        "Decode the same prompt at every granularity and write a multi-page label TIFF, one page per "
        "granularity in the order given.",
        "examples:\n  unsamv2 sweep cells.png --point 40,40 --granularities 0.1:1.0:10 -o sweep.tif --table sweep.csv\n"
        "  unsamv2 sweep cells.png --point 40,40 --granularities 0.2,0.5,0.9 -o sweep.tif")
    parser.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG or JPEG")
    parser.add_argument("--granularities", type=parse_granularities, required=True, metavar="G1,G2,...|START:STOP:N",
                        help="a list (0.1,0.5,1.0) or N values from START to STOP inclusive (0.1:1.0:10)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="multi-page label TIFF to write")
    parser.add_argument("--table", metavar="SWEEP.csv", help="also write one CSV row per granularity")
    parser.add_argument("--json", metavar="META.json", help="also write the sweep's metadata as JSON ('-': stdout)")
    add_tiling_options(parser)
    finish(parser, INFERENCE_OPTIONS, run)


def run(args: argparse.Namespace) -> int:
    """``unsamv2 sweep``: one prompt at several granularities -> multi-page label TIFF (+ CSV, JSON)."""
    from unsamv2_engine.outputs import staged_outputs
    from unsamv2_engine.prompts import check_granularities, check_mask_threshold

    check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    granularities = check_granularities(args.granularities)
    check_mask_threshold(args.mask_threshold)
    check_command_outputs(args, {"-o": args.output, "--table": args.table, "--json": args.json})
    if args.server:
        from unsamv2_engine.cli import remote

        return remote.sweep(args, granularities)
    from unsamv2_engine.cli.embed import run_tiled_sweep, wants_tiles  # large images: each level on its own view

    if wants_tiles(args):
        return run_tiled_sweep(args, granularities)
    job = prepare(args)
    say(args, f"decoding {len(granularities)} granularities ...")
    sweep, decode_s = timed(lambda: job.session.sweep(job.points, job.labels, granularities, m2m=args.m2m),
                            job.device)
    rows = sweep_rows(granularities, sweep)
    base = base_metadata(args, job)
    from unsamv2_engine.io import write_labels, write_table_csv

    meta = {**base, "granularities": granularities, "pages": rows, "output": str(args.output),
            "table": args.table, "timings": {"load_s": job.load_s, "embed_s": job.embed_s,
                                             "decode_s": decode_s}}
    with staged_outputs() as out:
        write_labels(out.path(args.output), sweep.masks, metadata={
            "granularities": granularities, "areas": [r["area"] for r in rows],
            "scores": [r["score"] for r in rows], "object_scores": [r["object_score"] for r in rows],
            **{k: base[k] for k in ("model", "points", "labels", "mask_threshold", "m2m")}})
        if args.table:
            write_table_csv(out.path(args.table), rows, columns=["page", "granularity", "area", "score",
                                                                 "object_score"])
        emit_json(out.path(args.json), meta)
    print_pages(args, rows, args.table)
    return EXIT_OK


def sweep_rows(granularities: list[float], sweep: Any) -> list[dict[str, Any]]:
    """Return one table row per granularity, in page order."""
    areas = sweep.areas
    return [{"page": i, "granularity": g, "area": int(areas[i]), "score": float(sweep.scores[i]),
             "object_score": float(sweep.object_scores[i])} for i, g in enumerate(granularities)]


def print_pages(args: argparse.Namespace, rows: list[dict[str, Any]], table: str | None) -> None:
    """Print the summary of a sweep: the files written, then one line per page."""
    summary(args, f"wrote {args.output} ({len(rows)} pages)" + (f" and {table}" if table else ""))
    for row in rows:
        summary(args, f"  page {row['page']:>3}  g {row['granularity']:<6g} area {row['area']:>9} px  "
                      f"score {row['score']:.3f}")
