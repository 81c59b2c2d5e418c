"""Batch inputs, manifest and worker helpers: no model, no cluster (fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unsamv2_engine.batch import worker
from unsamv2_engine.batch.inputs import image_stem, is_batch_input, list_inputs, plan_items
from unsamv2_engine.batch.manifest import Manifest
from unsamv2_engine.errors import InputError, OutputError


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_folder_glob_and_zarr_inputs(tmp_path):
    _touch(tmp_path / "cells", "b.png", "a.TIF", ".a.partial.tif", "notes.txt")
    (tmp_path / "cells" / "slide.ome.zarr").mkdir()
    (tmp_path / "cells" / "sub").mkdir()
    cells = tmp_path / "cells"
    assert is_batch_input(cells) and is_batch_input(f"{cells}/*.png")
    assert not is_batch_input(cells / "slide.ome.zarr")  # one zarr image, not a batch
    assert not is_batch_input(cells / "b.png") and not is_batch_input(tmp_path / "missing.png")
    assert [p.name for p in list_inputs(cells)] == ["a.TIF", "b.png", "slide.ome.zarr"]
    assert [p.name for p in list_inputs(cells, zarr=False)] == ["a.TIF", "b.png"]
    assert [p.name for p in list_inputs(f"{cells}/*.png")] == ["b.png"]
    assert [image_stem(p) for p in ("a.ome.tif", "x/slide.ome.zarr", "b.png", "c.d.tiff")] == ["a", "slide", "b", "c.d"]


def test_empty_inputs_say_what_to_do(tmp_path):
    _touch(tmp_path / "top" / "plate1", "a.tif")
    with pytest.raises(InputError, match="subfolders are not searched.*plate1"):
        list_inputs(tmp_path / "top")
    with pytest.raises(InputError, match="quote it"):
        list_inputs(f"{tmp_path}/*.png")


def test_plan_names_outputs_and_refuses_collisions(tmp_path):
    _touch(tmp_path / "in", "a.png", "b.tif")
    inputs = list_inputs(tmp_path / "in")
    items = plan_items(inputs, {"output": (tmp_path / "out", ".tif"), "json": (tmp_path / "meta", ".json")})
    assert [(Path(i.input).name, Path(i.outputs["output"]).name, Path(i.outputs["json"]).name) for i in items] == [
        ("a.png", "a.tif", "a.json"), ("b.tif", "b.tif", "b.json")]
    _touch(tmp_path / "in", "a.tif")
    with pytest.raises(InputError, match="both write a"):
        plan_items(list_inputs(tmp_path / "in"), {"output": (tmp_path / "out", ".tif")})
    with pytest.raises(OutputError, match="lies in the output folder"):  # outputs beside the inputs
        plan_items(inputs, {"output": (tmp_path / "in", ".tif")})
    _touch(tmp_path / "m", "manifest.png")
    with pytest.raises(OutputError, match="manifest"):
        plan_items(list_inputs(tmp_path / "m"), {"output": (tmp_path / "o2", ".json")})


def test_manifest_skip_rules(tmp_path):
    out = tmp_path / "a.tif"
    out.write_bytes(b"x")
    settings = {"options": {"granularity": 0.5, "thetas": (0.9, 0.8)}}
    manifest = Manifest(tmp_path / "manifest.json", "auto")
    manifest.record({"input": "in/a.png", "outputs": {"output": str(out)}, "status": "done", "reason": "",
                     "settings": settings, "seconds": 1.0})
    manifest.record({"input": "in/b.png", "outputs": {"output": str(tmp_path / "b.tif")}, "status": "failed",
                     "reason": "corrupt", "settings": settings, "seconds": 0.1})
    manifest.save()
    again = Manifest.load(tmp_path / "manifest.json", "auto")
    assert again.counts() == {"done": 1, "failed": 1, "skipped": 0}
    assert again.finished("in/a.png", {"output": str(out)}, settings)  # tuples compare as their JSON lists
    assert not again.finished("in/b.png", {"output": str(tmp_path / "b.tif")}, settings)  # failed: redone
    assert not again.finished("in/a.png", {"output": str(out)}, {"options": {"granularity": 0.6}})
    out.unlink()
    assert not again.finished("in/a.png", {"output": str(out)}, settings)  # output gone: redone
    assert Manifest.load(tmp_path / "manifest.json", "hierarchy").note  # another command's manifest is not used
    (tmp_path / "manifest.json").write_text("{trunc")
    assert "unreadable" in Manifest.load(tmp_path / "manifest.json", "auto").note
    with pytest.raises(ValueError, match="status"):
        manifest.record({"input": "x", "status": "maybe"})


def test_model_cache_and_device_rules(monkeypatch):
    calls = []

    def load():
        calls.append(1)
        return object()

    assert worker.reuse("k", load) is not worker.reuse("k", load)  # inactive: loads every time
    worker.activate("cuda:1")
    try:
        first = worker.reuse("k", load)
        assert worker.reuse("k", load) is first and worker.stats()["loads"] == 1
        assert worker.device_for("auto") == "cuda:1" and worker.device_for("cuda") == "cuda:1"
        assert worker.device_for("cpu") == "cpu" and worker.device_for("cuda:0") == "cuda:0"
        for i in range(worker.CAPACITY + 1):
            worker.reuse(("other", i), load)
        assert worker.stats()["cached"] == worker.CAPACITY
    finally:
        worker.deactivate()
    assert worker.device_for("auto") == "auto" and worker.stats()["cached"] == 0
    assert [worker.local_rank(n) for n in (0, 3, "SLURMCluster-4-1", "gpu-box")] == [0, 3, 1, 0]


def test_captured_output_is_per_thread(capsys):
    import threading

    with worker.captured_output() as (out, err):
        print("item line")
        seen = []
        thread = threading.Thread(target=lambda: print("other thread"))
        thread.start()
        thread.join()
        seen.append(out.getvalue())
    assert seen == ["item line\n"]
    assert capsys.readouterr().out == "other thread\n"


def test_batch_help_is_light():
    """`unsamv2 CMD --help` lists the batch options and imports neither torch nor dask."""
    code = ("import sys\nfrom unsamv2_engine.cli import main\n"
            "for cmd in ('auto', 'hierarchy', 'embed', 'pseudo-label', 'finetune'):\n"
            "    main([cmd, '--help'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'dask', 'distributed'))\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert result.stdout.count("--workers N") >= 5 and result.stdout.count("--scheduler ADDRESS") >= 5


def test_batch_option_errors(tmp_path, capsys):
    from unsamv2_engine.cli import main

    _touch(tmp_path / "in", "a.png")
    code = main(["auto", str(tmp_path / "in"), "-g", "0.5", "-o", str(tmp_path / "x.tif"), "--checkpoint", "x.pt"])
    assert code == 2 and "-o names a folder" in capsys.readouterr().err
    code = main(["auto", str(tmp_path / "in"), "-g", "0.5", "-o", str(tmp_path / "o"), "--json", "-"])
    assert code == 2 and "is for one image" in capsys.readouterr().err
    code = main(["auto", str(tmp_path / "in"), "-g", "0.5", "-o", str(tmp_path / "o"), "--workers", "2",
                 "--scheduler", "tcp://127.0.0.1:1"])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = main(["pseudo-label", f"{tmp_path}/in/*.jpg", "-o", str(tmp_path / "p")])
    assert code == 2 and "no images match" in capsys.readouterr().err
