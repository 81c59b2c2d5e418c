"""Remote engine on 127.0.0.1: dial-move-to-mask latency and bytes per decode (issue 16 benchmark).

    .venv/bin/python benchmarks/bench_remote.py [--size tiny] [--image-size 1024] [--moves 60] \
        [--clients 8] [--seconds 30] [--rounds 2] [--settle 20] [--device cpu] [--threads N] [--json out.json]

Builds a RANDOM-weight model (hiera-tiny by default; timings are the architecture's) and a
1024x1024 synthetic fluorescence image. Then:

1. latency: the same model behind the local process transport (the widget's default engine) and
   behind ``unsamv2 serve`` in its own process, reached through :class:`RemoteTransport` on
   127.0.0.1. One click, then ``--moves`` dial moves (granularity 0.10, 0.15, ... cycling), each a
   ``Predict`` as the widget sends it (``want_logits=False``), timed from submit to the decoded mask
   in this process. The two transports alternate in rounds of 10 moves, so a busy machine slows
   both alike. Bytes per decode: the request and reply frames as sent (compressed).
2. load: ``--clients`` clients (threads of this process, one WebSocket each) embed their own
   image and decode in a loop for ``--seconds``; failures are counted. The server's resident memory
   (and GPU memory where nvidia-smi exists) is read at a cold start, after one client has come and
   gone (the baseline: what a process keeps after its first use), at the end of the load, 3 s
   after the clients disconnect (the server has closed their sessions), and ``--settle`` s later.
   ``--rounds`` load rounds run on the same server: memory that grows from round to round would be
   a leak of the sessions; memory that stays level is what the allocator keeps.

Targets (issue 16): remote p50 <= 1.3x local p50; < 64 KiB per decode; no failures under load;
memory back to baseline after the clients leave.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gpu_mib(pid: int) -> float | None:
    """GPU memory held by ``pid`` (nvidia-smi), None without an NVIDIA GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return float(parts[1])
    return 0.0


def start_server(checkpoint: Path, device: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "UNSAMV2_TOKEN"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, as ProcessTransport(torch_threads=...)
    proc = subprocess.Popen([sys.executable, "-m", "unsamv2_engine", "serve", "--checkpoint", str(checkpoint),
                             "--port", "0", "--device", device, "--idle-timeout", "600"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    line = ""
    while "listening on" not in line:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("unsamv2 serve ended before listening")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
    return proc, line.split("listening on ")[1].split()[0]


def decode_times(client, key: str, point: np.ndarray, moves: int, start: int) -> list[float]:
    from unsamv2_engine import protocol as p

    times = []
    for i in range(start, start + moves):
        g = 0.1 + 0.05 * (i % 19)
        t0 = time.perf_counter()
        reply = client.call(p.Predict(key, point, np.array([1]), round(g, 2), want_logits=False), timeout=300)
        times.append(time.perf_counter() - t0)
        assert reply.mask.shape[0] > 0
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_round(args: argparse.Namespace, url: str, image: np.ndarray, pid: int) -> dict:
    """One load round: ``--clients`` clients embed, decode for ``--seconds`` and leave; the server's memory
    under load, 3 s after the clients left, and ``--settle`` s later.
    """
    from unsamv2_engine import protocol as p
    from unsamv2_engine.client import EngineClient, RemoteTransport

    counts, failures, errors = [0] * args.clients, [0] * args.clients, []
    ready = threading.Barrier(args.clients + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        try:
            client = EngineClient(RemoteTransport(url))
            rng = np.random.default_rng(i)
            client.call(p.SetImage(f"img{i}", np.roll(image, 37 * i, axis=1)), timeout=900)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures[i] += 1
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            ready.wait()
            return
        ready.wait()
        while not stop.is_set():
            xy = np.array([[rng.uniform(0, args.image_size), rng.uniform(0, args.image_size)]])
            try:
                client.call(p.Predict(f"img{i}", xy, np.array([1]), float(rng.uniform(0.1, 1.0)),
                                      want_logits=False), timeout=300)
                counts[i] += 1
            except Exception as exc:  # noqa: BLE001
                failures[i] += 1
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    t_embed = time.perf_counter()
    for t in threads:
        t.start()
    ready.wait()
    t_embed = time.perf_counter() - t_embed
    time.sleep(args.seconds)
    loaded = {"rss_mib": rss_mib(pid), "gpu_mib": gpu_mib(pid)}
    stop.set()
    for t in threads:
        t.join(600)
    time.sleep(3.0)  # the server notices the closed connections and frees the sessions
    after = {"rss_mib": rss_mib(pid), "gpu_mib": gpu_mib(pid)}
    time.sleep(args.settle)
    settled = {"rss_mib": rss_mib(pid), "gpu_mib": gpu_mib(pid)}
    return {"embed_all_s": t_embed, "decodes": sum(counts), "decodes_per_s": sum(counts) / args.seconds,
            "failures": sum(failures), "errors": errors[:5], "under_load": loaded, "after": after,
            "settled": settled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="load rounds on the same server (default: 2; memory "
                        "that grows round after round is a leak, memory that stays is the allocator's)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds more before the settled reading")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads of both engines (default: torch's); on a "
                        "shared, oversubscribed CPU use 1, or OpenMP's spinning makes either side 10x slower at random")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from unsamv2_engine import protocol as p
    from unsamv2_engine.client import EngineClient, ProcessTransport, RemoteTransport
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint
    from unsamv2_engine.synth import generate_sample

    tmp = Path(tempfile.mkdtemp())
    checkpoint = save_checkpoint(build_model(args.size, seed=0), tmp / "random.pt")
    image = generate_sample(0, modality="fluorescence", ndim="2", shape=(args.image_size, args.image_size)).image
    point = np.array([[args.image_size * 0.4, args.image_size * 0.45]])

    # ---------------------------------------------------------------- 1. latency, local process vs remote
    server, url = start_server(checkpoint, args.device, args.threads)
    local = EngineClient(ProcessTransport(torch_threads=args.threads))
    transport = RemoteTransport(url)
    remote = EngineClient(transport)
    for client in (local, remote):
        client.call(p.LoadModel(checkpoint=str(checkpoint), device=args.device), timeout=600)
        client.call(p.SetImage("img", image), timeout=600)
        decode_times(client, "img", point, 3, 0)  # warm-up
    sent0, received0 = transport.bytes_sent, transport.bytes_received
    times = {"local process": [], "remote (127.0.0.1)": []}
    done = 0
    while done < args.moves:
        n = min(10, args.moves - done)
        times["local process"] += decode_times(local, "img", point, n, done)
        times["remote (127.0.0.1)"] += decode_times(remote, "img", point, n, done)
        done += n
    sent = (transport.bytes_sent - sent0) / args.moves
    received = (transport.bytes_received - received0) / args.moves
    local.close()
    remote.close()
    server.terminate()
    server.wait(60)

    # ---------------------------------------------------------------- 2. load: N clients for S seconds
    server, url = start_server(checkpoint, args.device, args.threads)
    time.sleep(1.0)
    cold = {"rss_mib": rss_mib(server.pid), "gpu_mib": gpu_mib(server.pid)}
    # one client comes and goes first: what the process keeps after a first use (allocator pools, kernel
    # and primitive caches, thread pools) is the baseline the sessions' memory must return to
    first = EngineClient(RemoteTransport(url))
    first.call(p.SetImage("warm", image), timeout=900)
    decode_times(first, "warm", point, 3, 0)
    first.close()
    time.sleep(3.0)
    baseline = {"rss_mib": rss_mib(server.pid), "gpu_mib": gpu_mib(server.pid)}
    rounds = [load_round(args, url, image, server.pid) for _ in range(args.rounds)]
    server.terminate()
    server.wait(60)

    # ---------------------------------------------------------------- report
    lat = {name: {"p50_ms": 1000 * percentile(v, 50), "p95_ms": 1000 * percentile(v, 95), "n": len(v)}
           for name, v in times.items()}
    ratio = lat["remote (127.0.0.1)"]["p50_ms"] / lat["local process"]["p50_ms"]
    per_decode_kib = (sent + received) / 1024
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, "
                   f"torch threads {args.threads or 'default'}",
        "model": f"hiera-{args.size} (random weights)", "image": f"{args.image_size}x{args.image_size}",
        "latency": lat, "p50_ratio": ratio,
        "bytes_per_decode": {"request": sent, "reply": received, "total_kib": per_decode_kib},
        "load": {"clients": args.clients, "seconds": args.seconds, "memory": {"cold": cold, "baseline": baseline},
                 "rounds": rounds},
    }
    print(f"\n{results['model']}, image {results['image']}, {results['machine']}")
    print("| transport | p50 | p95 | decodes |\n|---|---|---|---|")
    for name, v in lat.items():
        print(f"| {name} | {v['p50_ms']:.1f} ms | {v['p95_ms']:.1f} ms | {v['n']} |")
    print(f"\nremote p50 / local p50 = {ratio:.2f}x (target <= 1.3x: {'PASS' if ratio <= 1.3 else 'MISSED'})")
    print(f"bytes per decode: request {sent:.0f} B + reply {received:.0f} B = {per_decode_kib:.1f} KiB "
          f"(target < 64 KiB: {'PASS' if per_decode_kib < 64 else 'MISSED'})")
    mem = results["load"]["memory"]
    print(f"server RSS: cold start {mem['cold']['rss_mib']:.0f} MiB, after one client came and went (baseline) "
          f"{mem['baseline']['rss_mib']:.0f} MiB; GPU baseline {mem['baseline']['gpu_mib']} MiB")
    errors = []
    for k, r in enumerate(rounds, 1):
        errors += r["errors"]
        print(f"round {k}: {args.clients} clients x {args.seconds:g} s: {r['decodes']} decodes "
              f"({r['decodes_per_s']:.1f}/s), {r['failures']} failures; embedding took {r['embed_all_s']:.1f} s; "
              f"RSS under load {r['under_load']['rss_mib']:.0f} MiB, 3 s after the clients left "
              f"{r['after']['rss_mib']:.0f} MiB, {args.settle:g} s later {r['settled']['rss_mib']:.0f} MiB "
              f"(baseline {mem['baseline']['rss_mib']:.0f}); GPU {r['under_load']['gpu_mib']} / "
              f"{r['settled']['gpu_mib']} MiB")
    for e in errors[:5]:
        print("  ", e)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
