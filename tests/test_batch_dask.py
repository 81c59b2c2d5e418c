"""Batch commands on Dask: a LocalCluster of 2 worker processes on CPU with a tiny random-weight model.

One cluster started here (module fixture) serves the ``--scheduler ADDRESS`` tests; the
``--workers 2`` test starts the command's own cluster and kills one of its workers mid-batch.
Every cluster closes by itself (fixtures with timeouts; a watchdog ends a hung run). The reference
is the sequential path: the same batch in this process (``--workers 1``), itself checked against
a plain single-image run.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_cells_image

distributed = pytest.importorskip("distributed")

AUTO_ARGS = ["--points-per-side", "4", "--points-per-batch", "16", "--pred-iou-thresh", "0", "--stability-thresh", "0",
             "--stability-offset", "0.05", "--mask-threshold", "0.15", "--device", "cpu", "-q"]
N_IMAGES = 4
WATCHDOG_S = float(os.environ.get("UNSAMV2_TEST_WATCHDOG_S", 600))


@pytest.fixture(scope="module", autouse=True)
def _watchdog():
    """A hung cluster must not hang CI: dump every thread's stack and exit after WATCHDOG_S."""
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """A tiny 128-px UnSAMv2 checkpoint, N_IMAGES cell images and one corrupt file."""
    root = tmp_path_factory.mktemp("batch")
    ckpt = tiny_checkpoint
    images = root / "images"
    images.mkdir()
    base = make_cells_image()
    for i in range(N_IMAGES):
        Image.fromarray(np.roll(base, 9 * i, axis=1)).save(images / f"cell{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {"root": root, "ckpt": ckpt, "images": images}


def _main(*argv: object) -> int:
    from unsamv2_engine.cli import main

    return main([str(a) for a in argv])


def _auto(data, out: Path, *extra: object, source: object = None, g: float = 0.5) -> int:
    return _main("auto", source or data["images"], "-g", g, "-o", out, "--checkpoint", data["ckpt"], *AUTO_ARGS, *extra)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {p.stem: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _by_status(folder: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"done": [], "failed": [], "skipped": []}
    for item in _manifest(folder)["items"]:
        out[item["status"]].append(Path(item["input"]).name)
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def sequential(data) -> Path:
    """The batch in this process (--workers 1): the reference every cluster run must equal."""
    out = data["root"] / "sequential"
    assert _auto(data, out) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """An existing 'cluster' for --scheduler: 2 worker processes, 1 thread each, on 127.0.0.1, no dashboard."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, memory_limit=0, silence_logs=40) as local:
        yield local


# ============================================================================ in-process (the sequential path)
def test_sequential_batch_equals_single_image_runs_and_records_failures(data, sequential, tmp_path):
    single = tmp_path / "cell3.tif"
    assert _auto(data, single, source=data["images"] / "cell3.png") == 0
    import tifffile

    assert np.array_equal(tifffile.imread(single), _labels(sequential)["cell3"])
    assert sorted(_labels(sequential)) == [f"cell{i}" for i in range(N_IMAGES)]
    status = _by_status(sequential)
    assert status["failed"] == ["broken.png"] and len(status["done"]) == N_IMAGES
    broken = next(i for i in _manifest(sequential)["items"] if i["status"] == "failed")
    assert "broken.png" in broken["reason"] and broken["settings"]["options"]["granularity"] == 0.5


def test_hierarchy_and_embed_batches_name_outputs_per_image(data, tmp_path):
    source = f"{data['images']}/cell[01].png"
    out = tmp_path / "tree"
    assert _main("hierarchy", source, "--granularities", "0.3,1.0", "-o", out, "--table", out, "--json", out,
                 "--checkpoint", data["ckpt"], *AUTO_ARGS) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cell0.csv", "cell0.json", "cell0.tif", "cell1.csv",
                                                     "cell1.json", "cell1.tif", "manifest.json"]
    caches = tmp_path / "caches"
    assert _main("embed", f"{data['images']}/cell0.p?g", "-o", caches, "--overlap", 64, "--checkpoint", data["ckpt"],
                 "--device", "cpu", "-q") == 0
    assert (caches / "cell0.embeddings.zarr").is_dir() and _by_status(caches)["done"] == ["cell0.png"]


# ============================================================================ on a given scheduler
def test_scheduler_outputs_equal_sequential_and_resume(data, sequential, cluster, capsys):
    out = data["root"] / "on-scheduler"
    assert _auto(data, out, "--scheduler", cluster.scheduler_address) == 0
    reference = _labels(sequential)
    got = _labels(out)
    assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in reference)
    status = _by_status(out)
    assert status["failed"] == ["broken.png"] and len(status["done"]) == N_IMAGES  # the rest went on
    workers = {i["worker"] for i in _manifest(out)["items"] if i["status"] == "done"}
    assert workers <= set(cluster.scheduler_info["workers"]) and len(workers) == 2
    with distributed.Client(cluster.scheduler_address, timeout="30s") as client:  # the plugin left with the batch
        from unsamv2_engine.batch.worker import stats

        assert all(not s["cached"] for s in client.run(stats).values())
    capsys.readouterr()

    # a re-run skips what is done (and redoes the failed image); new settings redo everything
    assert _auto(data, out, "--scheduler", cluster.scheduler_address) == 0
    assert f"{N_IMAGES} skipped" in capsys.readouterr().out
    status = _by_status(out)
    assert len(status["skipped"]) == N_IMAGES and status["failed"] == ["broken.png"]
    assert _auto(data, out, "--scheduler", cluster.scheduler_address, g=0.9) == 0
    status = _by_status(out)
    assert len(status["done"]) == N_IMAGES and not status["skipped"]
    assert all(i["settings"]["options"]["granularity"] == 0.9 for i in _manifest(out)["items"])


def test_each_worker_loads_the_model_once(data, cluster):
    """The worker plugin keeps the model between items: one load per worker for a whole batch."""
    from unsamv2_engine.batch.worker import stats
    from unsamv2_engine.cli import build_parser
    from unsamv2_engine.cli.batch import run_cli_batch

    loads = {}

    def on_record(record: dict) -> None:
        loads.update({w: s["loads"] for w, s in distributed.default_client().run(stats).items()})

    args = build_parser().parse_args([str(a) for a in (
        "auto", f"{data['images']}/cell*.png", "-g", 0.5, "-o", data["root"] / "once", "--checkpoint", data["ckpt"],
        *AUTO_ARGS, "--scheduler", cluster.scheduler_address)])
    summary = run_cli_batch(args, "auto", on_record=on_record)
    assert len(summary.done) == N_IMAGES
    assert set(loads.values()) <= {0, 1} and 1 in loads.values()


def test_pseudo_label_on_scheduler_equals_folder_run(data, cluster, tmp_path):
    """pseudo-label (classical, no model) on the cluster writes the JSONs the in-process folder run writes."""
    from unsamv2_engine.pseudo.pipeline import PseudoLabelSettings, pseudo_label_folder

    plain = tmp_path / "plain"
    pseudo_label_folder(data["images"], plain, settings=PseudoLabelSettings(max_side=128), overlays=False)
    out = tmp_path / "dask"
    assert _main("pseudo-label", data["images"], "-o", out, "--max-side", 128, "--no-overlays", "-q",
                 "--scheduler", cluster.scheduler_address) == 0
    for path in sorted(plain.glob("cell*.json")):
        ours, theirs = json.loads((out / path.name).read_text()), json.loads(path.read_text())
        assert ours["annotations"] == theirs["annotations"] and ours["info"] == theirs["info"]
    assert _by_status(out)["failed"] == ["broken.png"]
    assert _main("pseudo-label", data["images"], "-o", out, "--max-side", 128, "--no-overlays", "-q",
                 "--scheduler", cluster.scheduler_address) == 0
    assert len(_by_status(out)["skipped"]) == N_IMAGES  # the JSONs' own settings say they are done
    assert _main("pseudo-label", data["images"], "-o", out, "--max-side", 160, "--no-overlays", "-q",
                 "--scheduler", cluster.scheduler_address) == 2  # other settings: refused without --overwrite


def test_finetune_pseudo_labels_on_scheduler(data, cluster, tmp_path, capsys):
    """Finetune --scheduler: the pseudo-labelling stage runs on the cluster, then one training step here."""
    from unsamv2_engine.model.checkpoint import read_adapter

    out = tmp_path / "lab.pt"
    code = _main("finetune", "--images", data["images"], "--base", data["ckpt"], "-o", out, "--backbone", "classical",
                 "--max-steps", 1, "--device", "cpu", "--cache-embeddings", "--max-masks", 2, "--val-fraction", 0,
                 "--batch-size", 1, "--correction-clicks", 1, "--json-progress", "--scheduler",
                 cluster.scheduler_address)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    labels = tmp_path / "lab_work" / "pseudo-labels"
    assert sorted(p.stem for p in labels.glob("cell*.json")) == [f"cell{i}" for i in range(N_IMAGES)]
    events = [json.loads(line) for line in captured.out.splitlines()]
    messages = [e.get("message", "") for e in events if e.get("stage") == "pseudo-labels"]
    assert any("Dask worker" in m for m in messages) and any("could not pseudo-label broken.png" in m for m in messages)
    assert read_adapter(out)["metadata"]["finetune"]["steps"] == 1


# ============================================================================ --workers 2, a worker killed
def test_local_cluster_survives_a_killed_worker(data, sequential):
    """--workers 2 starts its own LocalCluster; killing the worker that runs an item mid-batch: the item is retried
    elsewhere and the batch completes with the sequential outputs.
    """
    from unsamv2_engine.cli import build_parser
    from unsamv2_engine.cli.batch import run_cli_batch

    killed: dict[str, str] = {}

    def kill_a_busy_worker(record: dict) -> None:
        if killed:
            return
        client = distributed.default_client()
        busy = [address for address, keys in client.processing().items() if keys]
        victim = busy[0] if busy else next(iter(client.scheduler_info()["workers"]))
        pid = client.run(os.getpid, workers=[victim])[victim]
        killed["address"], killed["keys"] = victim, client.processing().get(victim, ())
        os.kill(pid, signal.SIGKILL)

    out = data["root"] / "killed"
    args = build_parser().parse_args([str(a) for a in (
        "auto", f"{data['images']}/cell*.png", "-g", 0.5, "-o", out, "--checkpoint", data["ckpt"], *AUTO_ARGS,
        "--workers", 2)])
    summary = run_cli_batch(args, "auto", on_record=kill_a_busy_worker)
    assert killed and len(summary.done) == N_IMAGES and not summary.failed
    assert any(r["worker"] != killed["address"] for r in summary.done)
    reference = _labels(sequential)
    assert all(np.array_equal(v, reference[k]) for k, v in _labels(out).items())
