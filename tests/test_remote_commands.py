"""``--server`` on ``auto``, ``hierarchy`` and ``propagate``: the same files as the local commands.

One in-process server on 127.0.0.1 (a free port) serving a tiny 128-px random-weight checkpoint; each
command runs once locally on that checkpoint and once through the server, and the outputs are compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from tests.conftest import make_cells_image
from unsamv2_engine.cli import main
from unsamv2_engine.remote_server import EngineServer

TOKEN = "commands-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_checkpoint):
    """(checkpoint path, server URL, a folder with cells.png and stack.tif)."""
    from PIL import Image

    from unsamv2_engine.model.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("remote_commands")
    checkpoint = tiny_checkpoint
    Image.fromarray(make_cells_image()).save(folder / "cells.png")
    grey = make_cells_image()[..., 0]
    tifffile.imwrite(folder / "stack.tif", np.stack([np.roll(grey, 2 * z, axis=1) for z in range(3)]),
                     photometric="minisblack")
    server = EngineServer(load_checkpoint(checkpoint, device="cpu"), port=0, token=TOKEN)
    server.start()
    yield checkpoint, server.url, folder
    server.stop()


def run_both(monkeypatch, served, tmp_path, argv: list[str], outputs: list[str]) -> tuple[dict, dict]:
    """Run ``argv`` (with ``{out}`` in place of each output) locally and with --server; the two folders."""
    checkpoint, url, folder = served
    monkeypatch.setenv("UNSAMV2_TOKEN", TOKEN)
    results = {}
    for where, extra in (("local", ["--checkpoint", str(checkpoint), "--device", "cpu"]),
                         ("remote", ["--server", url])):
        out = tmp_path / where
        out.mkdir()
        args = [a.format(folder=folder, out=out) for a in argv]
        assert main([*args, *extra, "-q"]) == 0, where
        results[where] = {name: out / name for name in outputs}
    return results["local"], results["remote"]


def test_auto_through_the_server_equals_the_local_command(monkeypatch, served, tmp_path):
    local, remote = run_both(monkeypatch, served, tmp_path,
                             ["auto", "{folder}/cells.png", "-g", "0.5", "--points-per-side", "8", "--pred-iou-thresh",
                              "0", "--stability-thresh", "0", "--box-nms-thresh", "1",
                              "-o", "{out}/labels.tif", "--json", "{out}/masks.json"], ["labels.tif", "masks.json"])
    here, there = tifffile.imread(local["labels.tif"]), tifffile.imread(remote["labels.tif"])
    assert here.dtype == there.dtype and here.shape == (96, 128) and here.max() > 1  # several objects
    np.testing.assert_array_equal(here, there)
    coco_here, coco_there = (json.loads(path.read_text()) for path in (local["masks.json"], remote["masks.json"]))
    assert [a["segmentation"] for a in coco_here["annotations"]] == \
        [a["segmentation"] for a in coco_there["annotations"]]
    assert [a["score"] for a in coco_here["annotations"]] == pytest.approx([a["score"] for a in
                                                                            coco_there["annotations"]])


def test_hierarchy_through_the_server_equals_the_local_command(monkeypatch, served, tmp_path):
    local, remote = run_both(monkeypatch, served, tmp_path,
                             ["hierarchy", "{folder}/cells.png", "--granularities", "0.3,1.0", "--points-per-side",
                              "8", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--containment", "0.6",
                              "-o", "{out}/tree.tif", "--table", "{out}/tree.csv"],
                             ["tree.tif", "tree.csv"])
    here, there = tifffile.imread(local["tree.tif"]), tifffile.imread(remote["tree.tif"])
    assert here.shape[0] == 2 and (here > 0).any()
    np.testing.assert_array_equal(here, there)
    assert local["tree.csv"].read_text() == remote["tree.csv"].read_text()


def test_propagate_through_the_server_equals_the_local_command(monkeypatch, served, tmp_path):
    local, remote = run_both(monkeypatch, served, tmp_path,
                             ["propagate", "{folder}/stack.tif", "--point", "1,40,40", "-g", "0.6", "-o",
                              "{out}/labels.tif", "--scores", "{out}/scores.csv", "--json", "{out}/meta.json"],
                             ["labels.tif", "scores.csv", "meta.json"])
    here, there = tifffile.imread(local["labels.tif"]), tifffile.imread(remote["labels.tif"])
    assert here.shape == (3, 96, 128) and (here == 1).any()
    np.testing.assert_array_equal(here, there)
    assert local["scores.csv"].read_text() == remote["scores.csv"].read_text()
    meta = json.loads(remote["meta.json"].read_text())
    assert meta["server"].startswith("ws://127.0.0.1:") and meta["objects"][0]["granularity"] == 0.6


def test_model_options_and_tiles_are_refused_with_server(monkeypatch, served, tmp_path, capsys):
    checkpoint, url, folder = served
    monkeypatch.setenv("UNSAMV2_TOKEN", TOKEN)
    assert main(["auto", str(folder / "cells.png"), "-g", "0.5", "-o", str(tmp_path / "a.tif"), "--server", url,
                 "--checkpoint", str(checkpoint)]) == 2
    assert "--checkpoint cannot be used with --server" in capsys.readouterr().err
    assert main(["hierarchy", str(folder / "cells.png"), "--granularities", "0.3,1.0", "-o",
                 str(tmp_path / "t.tif"), "--server", url, "--tile-size", "64"]) == 2
    assert "--tile-size cannot be used with --server" in capsys.readouterr().err
    assert main(["propagate", str(folder / "stack.tif"), "--point", "1,40,40", "-g", "0.6", "-o",
                 str(tmp_path / "p.tif"), "--server", url, "--device", "cpu"]) == 2
    assert "--device cannot be used with --server" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.tif"))


_TORCH_FREE_CLI = """
import sys
for name in ("torch", "sam2", "torchvision"):
    sys.modules[name] = None  # the laptop: no torch, no sam2
from unsamv2_engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_commands_run_through_the_server_without_torch(served, tmp_path):
    """The light install (torch and sam2 unimportable) runs auto, hierarchy and propagate with --server."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, url, folder = served
    env = {**os.environ, "UNSAMV2_TOKEN": TOKEN}
    for argv in (["auto", f"{folder}/cells.png", "-g", "0.5", "--points-per-side", "4", "-o", f"{tmp_path}/a.tif",
                  "--json", f"{tmp_path}/a.json"],
                 ["hierarchy", f"{folder}/cells.png", "--granularities", "0.3,1.0", "--points-per-side", "4", "-o",
                  f"{tmp_path}/h.tif", "--json", f"{tmp_path}/h.json"],
                 ["propagate", f"{folder}/stack.tif", "--point", "0,40,40", "-g", "0.6", "--direction", "forward",
                  "-o", f"{tmp_path}/p.tif"]):
        out = subprocess.run([sys.executable, "-c", _TORCH_FREE_CLI, *argv, "--server", url, "-q"],
                             capture_output=True, text=True, env=env, timeout=300,
                             cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, (argv[0], out.stderr)
    assert all((tmp_path / name).exists() for name in ("a.tif", "a.json", "h.tif", "h.json", "p.tif"))
