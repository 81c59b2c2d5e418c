"""Cost of verifying a cached weights file (issue 11): first use (full SHA-256) vs later runs (the record).

    .venv/bin/python benchmarks/bench_weights_verify.py [--mb 184] [--repeats 3]

Writes a file of the size of SAM 2.1 small (184 MB by default) in a temporary cache, gives a test
registry entry its real digest, and times ``weights.verify_file``: (a) the first time (hashes the
whole file and writes ``<file>.sha256``), (b) in a new process-like state with the record present
(size + modification time compared, no hashing), (c) again in the same process (in-memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from unsamv2_engine import weights


def _seconds(func) -> float:
    """Wall-clock seconds of ``func()``."""
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=184)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sam2.1_hiera_small.pt"
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        with open(path, "wb") as fh:
            for _ in range(args.mb):
                fh.write(block)
                digest.update(block)
        entry = dataclasses.replace(weights.REGISTRY["sam2.1-small"], sha256=digest.hexdigest(),
                                    size_bytes=args.mb << 20)
        first, record, memory = [], [], []
        for _ in range(args.repeats):
            weights._VERIFIED.clear()
            weights.record_path(path).unlink(missing_ok=True)
            first.append(_seconds(lambda: weights.verify_file(path, entry)))
            weights._VERIFIED.clear()  # a new process: only the record beside the file is left
            record.append(_seconds(lambda: weights.verify_file(path, entry)))
            memory.append(_seconds(lambda: weights.verify_file(path, entry)))
    print(f"file: {args.mb} MiB, {args.repeats} repeats (median, best)")
    print("| check | median | best |\n|---|---:|---:|")
    for name, values in (("first use: size + full SHA-256, record written", first),
                         ("later process: size + record (no hashing)", record),
                         ("same process again (in memory)", memory)):
        print(f"| {name} | {statistics.median(values) * 1e3:.2f} ms | {min(values) * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
