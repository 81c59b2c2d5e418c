"""``unsamv2 convert``: rewrite a checkpoint as an UnSAMv2, SAM 2.1 or adapter file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsamv2_engine.cli.loading import load_model, reading_checkpoints
from unsamv2_engine.cli.options import add_common_options, finish, subparser
from unsamv2_engine.cli.output import EXIT_OK, CliError, say, warn

if TYPE_CHECKING:  # only for annotations; never imported at run time here
    from unsamv2_engine.model.build import UnSAMv2Model

CONVERT_KINDS = ("unsamv2", "sam2", "adapter")


def register(sub: Any) -> None:
    """Add ``convert`` to the ``unsamv2`` subparsers."""
    parser = subparser(
        sub, "convert", "convert between UnSAMv2, SAM 2.1 and adapter files",
        "Load IN (optionally with --adapter applied) and write it as a full UnSAMv2 file, a plain SAM 2.1 "
        "file (the UnSAMv2 additions dropped), or an adapter file (granularity module + LoRA only).",
        "examples:\n  unsamv2 convert unsamv2.pt -o sam2.pt --to sam2\n"
        "  unsamv2 convert unsamv2.pt -o adapter.pt --to adapter --base sam2.pt\n"
        "  unsamv2 convert sam2.pt --adapter adapter.pt -o unsamv2.pt --to unsamv2")
    parser.add_argument("input", metavar="IN", help="a SAM 2.1 or UnSAMv2 checkpoint file (or cached model name)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    parser.add_argument("--to", required=True, choices=CONVERT_KINDS, help="kind of file to write")
    parser.add_argument("--adapter", metavar="PATH", help="an adapter file applied on IN before converting")
    parser.add_argument("--allow-base-mismatch", action="store_true",
                        help="apply --adapter (or accept --base) even if the base model differs")
    parser.add_argument("--base", metavar="PATH",
                        help="with --to adapter: the base checkpoint the adapter is meant for (its sha256 is "
                             "recorded; default: IN)")
    finish(parser, [add_common_options], run)


def run(args: argparse.Namespace) -> int:
    """``unsamv2 convert``: rewrite a checkpoint as an UnSAMv2, SAM 2.1 or adapter file."""
    from unsamv2_engine import weights
    from unsamv2_engine.model.checkpoint import save_adapter, save_checkpoint

    source = weights.resolve_checkpoint(args.input)
    if args.base and args.to != "adapter":
        raise CliError("--base is only used with --to adapter (it names the base model the adapter is for)")
    if args.adapter and not Path(args.adapter).is_file():
        raise CliError(f"adapter file not found: {args.adapter}")
    base = Path(args.base) if args.base else source
    if not base.is_file():
        raise CliError(f"base checkpoint not found: {args.base}")
    from unsamv2_engine.outputs import check_outputs

    check_outputs({"-o": args.output}, {"IN": source, "--adapter": args.adapter, "--base": base})
    say(args, f"loading {source}" + (f" + adapter {args.adapter}" if args.adapter else "") + " ...")
    # on the CPU with LoRA unmerged, as the files store it
    model = load_model(source, source=args.input, device="cpu", adapter=args.adapter,
                       allow_base_mismatch=args.allow_base_mismatch, merge_lora=False)
    if args.to == "adapter":
        if args.base:
            _check_base(model, base, args.allow_base_mismatch)
        say(args, f"hashing base {base} ...")
        save_adapter(model, args.output, base_sha256=weights.sha256_file(base),
                     base_source=str(args.base or args.input), metadata={"converted_from": str(args.input)})
    else:
        save_checkpoint(model, args.output, kind=args.to)
    print(f"wrote {args.output} ({args.to}, {model.info.size})")
    return EXIT_OK


def _check_base(model: UnSAMv2Model, base: Path, allow_mismatch: bool) -> None:
    """Refuse a ``--base`` whose SAM 2.1 weights differ from the converted model's own."""
    import torch

    from unsamv2_engine.model.build import is_added_parameter
    from unsamv2_engine.model.checkpoint import checkpoint_kind, model_state, read_checkpoint

    with reading_checkpoints(base):
        obj = read_checkpoint(base)
    if checkpoint_kind(obj) == "adapter":
        raise CliError(f"--base {base} is an adapter file; give the SAM 2.1 or UnSAMv2 checkpoint it applies to")

    def sam_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.replace(".original_layer.", "."): v for k, v in state.items() if not is_added_parameter(k)}

    ours, theirs = sam_weights(model.sam.state_dict()), sam_weights(model_state(obj))
    same = ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k].cpu(), theirs[k]) for k in ours)
    if not same:
        message = (f"--base {base} does not hold the same SAM 2.1 weights as {model.info.source}; the adapter "
                   "would not reproduce this model on it")
        if not allow_mismatch:
            raise CliError(message + " (pass --allow-base-mismatch to record it anyway)")
        warn(message)
