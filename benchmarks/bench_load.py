"""How long does loading a checkpoint take? ``load_checkpoint`` now, against the way it loaded before.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_load.py [--sizes tiny small large] [--repeats 5] [--markdown]

For each SAM 2.1 size a random-weight UnSAMv2 checkpoint (1024 px, the published layout) is written to a
temporary folder, then loaded ``--repeats`` times in two ways:

* ``before``: what ``load_checkpoint`` did until this change: compose sam2's hydra config anew and fill
  every weight with random numbers, then overwrite them all from the file;
* ``now``: ``load_checkpoint`` as it is (config composed once per process, random fills skipped because
  every SAM 2.1 weight is loaded next).

Both give the same tensors (checked). Reported: the median wall time of a load, in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _load_before(path: Path):
    """``load_checkpoint`` as it was: a fresh config compose and a randomly initialised model, then the file."""
    from unsamv2_engine.model import build
    from unsamv2_engine.model.checkpoint import (
        checkpoint_image_size,
        detect_size,
        load_state_dict_strict,
        model_state,
        read_checkpoint,
    )

    obj = read_checkpoint(path)
    state = model_state(obj)
    build._upstream_config.cache_clear()
    model = build.build_model(detect_size(state), granularity=True, image_size=checkpoint_image_size(obj, path))
    load_state_dict_strict(model, state, source=str(path))
    if model.has_lora:
        model.merge_lora()
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "large"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import torch

    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import load_checkpoint, save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="unsamv2-bench-load-") as tmp:
        for size in args.sizes:
            path = save_checkpoint(build_model(size, seed=0), Path(tmp) / f"{size}.pt", kind="unsamv2")
            mib = path.stat().st_size / 2**20
            times = {"before": [], "now": []}
            loaded = {}
            for _ in range(args.repeats):
                for name, load in (("before", _load_before), ("now", load_checkpoint)):
                    t0 = time.perf_counter()
                    loaded[name] = load(path)
                    times[name].append(time.perf_counter() - t0)
            a, b = loaded["before"].sam.state_dict(), loaded["now"].sam.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), "the two loads differ"
            del loaded
            before, now = statistics.median(times["before"]), statistics.median(times["now"])
            rows.append((size, mib, before, now))
            print(f"{size}: {mib:.0f} MiB, before {before:.2f} s, now {now:.2f} s", file=sys.stderr)
    print(f"torch threads: {torch.get_num_threads()}; median of {args.repeats} loads")
    print("| size | file (MiB) | before (s) | now (s) | speed-up |\n|---|---:|---:|---:|---:|")
    for size, mib, before, now in rows:
        print(f"| {size} | {mib:.0f} | {before:.2f} | {now:.2f} | {before / now:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
