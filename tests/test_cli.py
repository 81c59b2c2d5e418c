"""The ``unsamv2`` command line: real checkpoint files, real images, real outputs.

Checkpoints are tiny random-weight models at a reduced input size saved as real files (full
resolution is not what these tests are about; it keeps every real load and embedding cheap). CLI
calls run in-process (``main([...])``), each loading its model and embedding its image for real.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import make_cells_image
from unsamv2_engine.cli import build_parser, main
from unsamv2_engine.cli.options import parse_device, parse_granularities, parse_point
from unsamv2_engine.io import read_labels

REPO = Path(__file__).resolve().parents[1]
POINT = "40,40"  # inside the left blob of the cells image (x = column, y = row)
NEG_POINT = "95,55,neg"  # the right blob


# ============================================================================ fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_checkpoint, tiny_sam2_model) -> dict[str, Path]:
    """Real checkpoint files (the shared tiny models): an UnSAMv2 one, a plain SAM 2.1 one and a truncated copy."""
    from unsamv2_engine.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("ckpts")
    paths = {"unsamv2": tiny_checkpoint,
             "sam2": save_checkpoint(tiny_sam2_model, folder / "sam2_tiny.pt", kind="sam2")}
    data = paths["unsamv2"].read_bytes()
    paths["truncated"] = folder / "truncated.pt"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The conftest cells image (96x128 RGB) as PNG, TIFF and JPEG files."""
    rgb = make_cells_image()
    folder = tmp_path_factory.mktemp("images")
    paths = {"png": folder / "cells.png", "tif": folder / "cells.tif", "jpg": folder / "cells.jpg"}
    Image.fromarray(rgb).save(paths["png"])
    tifffile.imwrite(paths["tif"], rgb, photometric="rgb")
    Image.fromarray(rgb).save(paths["jpg"], quality=95)
    return paths


@pytest.fixture(scope="module")
def reference_session(ckpts):
    """An ImageSession on the UnSAMv2 file and the cells image, embedded here (not through the CLI)."""
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.session import ImageSession

    session = ImageSession(load_checkpoint(ckpts["unsamv2"], source=str(ckpts["unsamv2"])))
    session.set_image(make_cells_image())
    return session


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ============================================================================ value parsing
@pytest.mark.parametrize("text,expected", [
    ("3,4", (3.0, 4.0, 1)), ("3,4,pos", (3.0, 4.0, 1)), ("3,4,neg", (3.0, 4.0, 0)), ("3.5, 4 ,1", (3.5, 4.0, 1)),
    ("3,4,0", (3.0, 4.0, 0)), ("3,4,+", (3.0, 4.0, 1)), ("3,4,-", (3.0, 4.0, 0)), ("3,4,Negative", (3.0, 4.0, 0)),
    ("3,4,positive", (3.0, 4.0, 1)),
])
def test_parse_point(text, expected):
    assert parse_point(text) == expected


@pytest.mark.parametrize("text", ["3", "3,4,5,6", "a,4", "3,4,maybe"])
def test_parse_point_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_point(text)


def test_parse_granularities_list_and_range():
    assert parse_granularities("0.7,0.1,0.4") == [0.7, 0.1, 0.4]  # order kept
    assert parse_granularities("0.1:1.0:10") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert parse_granularities("1:0.1:4") == [1.0, 0.7, 0.4, 0.1]
    assert parse_granularities("0.5:0.9:1") == [0.5]
    np.testing.assert_allclose(parse_granularities("0.2:0.8:7"), np.linspace(0.2, 0.8, 7), atol=1e-12)


@pytest.mark.parametrize("text", ["0.1:1.0", "0.1:1.0:x", "0.1:1.0:0", "a,b", ""])
def test_parse_granularities_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_granularities(text)


def test_negative_values_after_options():
    args = build_parser().parse_args(["segment", "x.png", "--point", "-0.4,3", "--contrast-limits", "-100,2000",
                                          "-g", "0.5", "-o", "o.tif"])
    assert args.point == [(-0.4, 3.0, 1)] and args.contrast_limits == (-100.0, 2000.0)
    assert args.model is None and args.checkpoint is None and args.device == "auto"


def test_parse_device():
    import argparse

    assert [parse_device(d) for d in ("auto", "CPU", "cuda", "cuda:1", "mps")] == ["auto", "cpu", "cuda", "cuda:1",
                                                                                    "mps"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_device("tpu")


# ============================================================================ segment
@pytest.mark.parametrize("fmt", ["png", "tif"])  # JPEG: test_segment_jpeg_with_plain_sam2_model
def test_segment_writes_labels_and_json(capsys, tmp_path, ckpts, images, fmt):
    out, meta_path = tmp_path / "mask.tif", tmp_path / "meta.json"
    code, stdout, stderr = _run(capsys, "segment", images[fmt], "--point", POINT, "--point", NEG_POINT,
                                "--granularity", 0.4, "--checkpoint", ckpts["unsamv2"], "--device", "cpu",
                                "-o", out, "--json", meta_path)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out}") and len(stdout.splitlines()) == 1  # stdout: the summary only
    assert "embedding" in stderr
    labels, metadata = read_labels(out)
    assert labels.shape == (96, 128) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1} and labels.any()
    assert {"granularity", "score", "model", "points"} <= set(metadata)
    assert metadata["granularity"] == pytest.approx(0.4)

    meta = json.loads(meta_path.read_text())
    for key in ("score", "object_score", "granularity", "area", "model", "model_family", "model_size", "checkpoint",
                "adapter", "image", "image_shape", "points", "labels", "mask_threshold", "m2m", "device", "timings"):
        assert key in meta, key
    assert meta["area"] == int(labels.sum()) and meta["image_shape"] == [96, 128, 3]
    assert meta["points"] == [[40.0, 40.0], [95.0, 55.0]] and meta["labels"] == [1, 0]
    assert meta["model_family"] == "unsamv2" and meta["model_size"] == "tiny" and meta["device"] == "cpu"
    assert meta["checkpoint"] == str(ckpts["unsamv2"]) and meta["adapter"] is None and meta["m2m"] is False
    assert set(meta["timings"]) >= {"embed_s", "decode_s"} and meta["score"] == pytest.approx(metadata["score"])


def test_segment_matches_session_predict(capsys, tmp_path, ckpts, images, reference_session):
    out = tmp_path / "m2m.tif"
    code, _, err = _run(capsys, "segment", images["png"], "--point", POINT, "-g", 0.8, "--m2m", "--mask-threshold",
                        -0.5, "--checkpoint", ckpts["unsamv2"], "-o", out, "-q")
    assert code == 0 and err == ""  # --quiet: nothing on stderr
    pred = reference_session.predict([[40, 40]], [1], 0.8, m2m=True, mask_threshold=-0.5)
    np.testing.assert_array_equal(read_labels(out)[0].astype(bool), pred.mask)


def test_segment_json_to_stdout(capsys, tmp_path, ckpts, images):
    code, out, err = _run(capsys, "segment", images["png"], "--point", POINT, "-g", 0.3, "--checkpoint",
                          ckpts["unsamv2"], "-o", tmp_path / "m.tif", "--json", "-")
    assert code == 0
    assert json.loads(out)["granularity"] == pytest.approx(0.3)  # stdout is pure JSON
    assert "wrote" in err


def test_segment_jpeg_with_plain_sam2_model(capsys, tmp_path, ckpts, images):
    out = tmp_path / "sam.tif"
    code, stdout, err = _run(capsys, "segment", images["jpg"], "--point", POINT, "-g", 0.9, "--checkpoint",
                             ckpts["sam2"], "-o", out, "--json", tmp_path / "sam.json")
    assert code == 0 and "no granularity module" in err and stdout.startswith("wrote")
    meta = json.loads((tmp_path / "sam.json").read_text())
    assert meta["model_family"] == "sam2.1" and meta["image"] == str(images["jpg"])
    labels, metadata = read_labels(out)
    assert labels.shape == (96, 128) and labels.dtype == np.uint8 and labels.any()
    assert metadata["area"] == meta["area"] == int(labels.sum())


# ============================================================================ sweep
def test_sweep_pages_table_json_equal_session(capsys, tmp_path, ckpts, images, reference_session):
    out, table, meta_path = tmp_path / "sweep.tif", tmp_path / "sweep.csv", tmp_path / "sweep.json"
    code, stdout, err = _run(capsys, "sweep", images["tif"], "--point", POINT, "--granularities", "0.1:1.0:4",
                             "--checkpoint", ckpts["unsamv2"], "-o", out, "--table", table, "--json", meta_path)
    assert code == 0, err
    gs = [0.1, 0.4, 0.7, 1.0]
    labels, metadata = read_labels(out)
    assert labels.shape == (4, 96, 128) and labels.dtype == np.uint8
    assert metadata["granularities"] == pytest.approx(gs)
    ref = reference_session.sweep([[40, 40]], [1], gs)
    np.testing.assert_array_equal(labels.astype(bool), ref.masks)

    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["page", "granularity", "area", "score", "object_score"]
    assert [int(r["page"]) for r in rows] == list(range(4))
    assert [float(r["granularity"]) for r in rows] == pytest.approx(gs)
    assert [int(r["area"]) for r in rows] == ref.areas.tolist()
    assert [float(r["score"]) for r in rows] == pytest.approx(ref.scores.tolist(), abs=1e-6)
    assert [float(r["object_score"]) for r in rows] == pytest.approx(ref.object_scores.tolist(), abs=1e-6)

    meta = json.loads(meta_path.read_text())
    assert meta["granularities"] == pytest.approx(gs) and len(meta["pages"]) == 4
    assert meta["model_size"] == "tiny" and {"embed_s", "decode_s"} <= set(meta["timings"])
    assert stdout.splitlines()[0].startswith(f"wrote {out}")


def test_sweep_keeps_the_given_order(capsys, tmp_path, ckpts, images, reference_session):
    out = tmp_path / "order.tif"
    gs = [0.9, 0.1, 0.55]
    code, _, err = _run(capsys, "sweep", images["png"], "--point", POINT, "--point", NEG_POINT, "--granularities",
                        "0.9,0.1,0.55", "--checkpoint", ckpts["unsamv2"], "-o", out)
    assert code == 0, err
    labels, metadata = read_labels(out)
    assert metadata["granularities"] == pytest.approx(gs) and labels.shape == (3, 96, 128)
    ref = reference_session.sweep([[40, 40], [95, 55]], [1, 0], gs)
    np.testing.assert_array_equal(labels.astype(bool), ref.masks)


# ============================================================================ convert
def test_convert_round_trip(capsys, tmp_path, ckpts, images, reference_session):
    """unsamv2 -> (sam2 file, adapter) -> the same masks; sam2 + adapter -> the same unsamv2 file."""
    import torch

    sam2_file, adapter, rebuilt = tmp_path / "base_sam2.pt", tmp_path / "adapter.pt", tmp_path / "rebuilt.pt"
    assert _run(capsys, "convert", ckpts["unsamv2"], "-o", sam2_file, "--to", "sam2")[0] == 0
    assert _run(capsys, "convert", ckpts["unsamv2"], "-o", adapter, "--to", "adapter", "--base", sam2_file)[0] == 0
    code, out, _ = _run(capsys, "info", adapter, "--json")
    described = json.loads(out)["checkpoint"]
    assert code == 0 and described["kind"] == "adapter" and described["base"]["size"] == "tiny"

    out_tif, meta_path = tmp_path / "adapter.tif", tmp_path / "adapter.json"
    code, _, err = _run(capsys, "sweep", images["png"], "--point", POINT, "--granularities", "0.1,0.5,1.0",
                        "--checkpoint", sam2_file, "--adapter", adapter, "-o", out_tif, "--json", meta_path)
    assert code == 0, err
    original = reference_session.sweep([[40, 40]], [1], [0.1, 0.5, 1.0])  # the UnSAMv2 file itself
    np.testing.assert_array_equal(read_labels(out_tif)[0].astype(bool), original.masks)
    meta = json.loads(meta_path.read_text())
    assert meta["adapter"] == str(adapter) and meta["model_family"] == "unsamv2" and "adapter" in meta["model"]

    assert _run(capsys, "convert", sam2_file, "--adapter", adapter, "-o", rebuilt, "--to", "unsamv2")[0] == 0
    original = torch.load(ckpts["unsamv2"], weights_only=True)["model"]
    again = torch.load(rebuilt, weights_only=True)["model"]
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_convert_errors(capsys, tmp_path, ckpts):
    import torch

    code, _, err = _run(capsys, "convert", ckpts["sam2"], "-o", tmp_path / "a.pt", "--to", "adapter")
    assert code == 2 and "no granularity module" in err
    code, _, err = _run(capsys, "convert", ckpts["sam2"], "-o", ckpts["sam2"], "--to", "sam2")
    assert code == 2 and "overwrite" in err
    code, _, err = _run(capsys, "convert", ckpts["unsamv2"], "-o", tmp_path / "b.pt", "--to", "sam2", "--base", "x")
    assert code == 2 and "--base" in err
    other = torch.load(ckpts["sam2"], weights_only=True)
    other["model"]["sam_mask_decoder.iou_token.weight"] += 1.0  # another model's SAM weights
    torch.save(other, tmp_path / "other.pt")
    code, _, err = _run(capsys, "convert", ckpts["unsamv2"], "-o", tmp_path / "a.pt", "--to", "adapter",
                        "--base", tmp_path / "other.pt")
    assert code == 2 and "--allow-base-mismatch" in err and not (tmp_path / "a.pt").exists()
    code, _, err = _run(capsys, "convert", ckpts["unsamv2"], "-o", tmp_path / "a.pt", "--to", "adapter",
                        "--base", tmp_path / "other.pt", "--allow-base-mismatch")
    assert code == 0 and "warning" in err and (tmp_path / "a.pt").is_file()


# ============================================================================ errors
def _segment_args(image: object, *extra: object) -> list[object]:
    return ["segment", image, "--point", POINT, "-g", 0.5, "-o", "never.tif", *extra]


@pytest.mark.parametrize("case", ["outside", "granularity", "missing_image", "truncated", "unknown_model",
                                  "not_cached", "not_an_image", "bad_suffix", "not_a_checkpoint",
                                  "missing_adapter", "stack_without_frame"])
def test_user_errors_exit_2_with_message(capsys, tmp_path, monkeypatch, ckpts, images, case):
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    png, unsamv2 = images["png"], ckpts["unsamv2"]
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 16, 16), np.uint16), photometric="minisblack")
    argv, expected = {
        "outside": (["segment", png, "--point", "500,10", "-g", 0.5, "--checkpoint", unsamv2, "-o", "m.tif"],
                    "outside the 128x96"),
        "granularity": (_segment_args(png, "--checkpoint", unsamv2)[:4] + ["-g", 1.5, "-o", "m.tif"], "granularity"),
        "missing_image": (_segment_args(tmp_path / "nope.png", "--checkpoint", unsamv2), "nope.png"),
        "truncated": (_segment_args(png, "--checkpoint", ckpts["truncated"]), "truncated"),
        "unknown_model": (_segment_args(png, "--model", "unsamv3"), "unknown model 'unsamv3'"),
        "not_cached": (_segment_args(png, "--model", "unsamv2"), "unsamv2 models --download unsamv2"),
        "not_an_image": (_segment_args(tmp_path / "broken.png", "--checkpoint", unsamv2), "broken.png"),
        "bad_suffix": (["segment", png, "--point", POINT, "-g", 0.5, "-o", "m.png"], ".tif"),
        "not_a_checkpoint": (_segment_args(png, "--checkpoint", png), "PyTorch checkpoint"),
        "missing_adapter": (_segment_args(png, "--checkpoint", unsamv2, "--adapter", "gone.pt"), "gone.pt"),
        "stack_without_frame": (_segment_args(tmp_path / "stack.tif", "--checkpoint", unsamv2), "--frame"),
    }[case]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("unsamv2: error: ") or "\nunsamv2: error: " in err, err
    assert expected in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "never.tif").exists()


def test_unavailable_device_exits_2(capsys, ckpts, images):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, out, err = _run(capsys, *_segment_args(images["png"], "--checkpoint", ckpts["unsamv2"], "--device", "cuda"))
    assert code == 2 and "CUDA is not available" in err and out == ""


def test_usage_errors_exit_2(capsys, images):
    code, _, err = _run(capsys, "segment", images["png"], "--point", "1,2,maybe", "-g", 0.5, "-o", "m.tif")
    assert code == 2 and "pos or neg" in err
    code, _, err = _run(capsys, "segment", images["png"], "--point", POINT, "-o", "m.tif")
    assert code == 2 and "--granularity" in err  # required
    code, _, err = _run(capsys, "segment", images["png"], "-g", 0.5, "-o", "m.tif")
    assert code == 2 and "--point" in err  # required
    code, _, err = _run(capsys, "segment", images["png"], "--point", POINT, "-g", 0.5, "-o", "m.tif",
                        "--model", "unsamv2", "--checkpoint", "x.pt")
    assert code == 2 and "not allowed with" in err
    code, _, err = _run(capsys, "sweep", images["png"], "--point", POINT, "--granularities", "0.1:1:x", "-o", "s.tif")
    assert code == 2 and "START:STOP:N" in err


# ============================================================================ models, info, help
def test_models_table_and_json(capsys, tmp_path, monkeypatch):
    from unsamv2_engine import weights

    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path))
    (tmp_path / weights.REGISTRY["unsamv2-plus"].filename).write_bytes(b"PK")  # looks cached
    code, out, _ = _run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == set(weights.REGISTRY)
    assert rows["unsamv2-plus"]["cached"] is True and rows["sam2.1-tiny"]["cached"] is False
    assert rows["sam2.1-tiny"]["path"] == str(tmp_path / "sam2.1_hiera_tiny.pt")
    code, out, _ = _run(capsys, "models")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "FAMILY", "SIZE", "~MB", "CACHED", "SHA256", "PATH"]
    table = [line for line in lines[1:] if str(tmp_path) in line]
    assert len(table) == len(weights.REGISTRY)
    assert len({line.index(str(tmp_path)) for line in table}) == 1  # PATH column aligned


def test_models_download_from_mirror_and_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNSAMV2_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing listens on port 9
    code, out, err = _run(capsys, "models", "--download", "sam2.1-tiny", "-q")
    assert code == 2 and "no network" in err and out == ""
    code, _, err = _run(capsys, "models", "--download", "sam3")
    assert code == 2 and "unknown model" in err
    # a cached file that is not the published one is fetched again (issue 11: it used to be returned, exit 0)
    cached = tmp_path / "cache" / "sam2.1_hiera_tiny.pt"
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(b"PK")
    code, out, err = _run(capsys, "models", "--download", "sam2.1-tiny", "--json")
    assert code == 2 and "cached file is bad" in err and "no network" in err and out == ""
    # a cached file that verifies is returned without touching the network
    import dataclasses

    from unsamv2_engine import weights

    monkeypatch.setitem(weights.REGISTRY, "sam2.1-tiny", dataclasses.replace(
        weights.REGISTRY["sam2.1-tiny"], sha256=hashlib.sha256(b"PK").hexdigest(), size_bytes=2))
    code, out, _ = _run(capsys, "models", "--download", "sam2.1-tiny", "--json")
    assert code == 0 and json.loads(out) == {"name": "sam2.1-tiny", "path": str(cached)}


def test_info_json_and_text(capsys, ckpts):
    code, out, _ = _run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0
    assert set(info["versions"]) >= {"napari-unsamv2", "torch", "sam2", "numpy", "python"}
    assert "cuda" in info["devices"] and info["cache_dir"] and "8-bit" in info["intensity_rule"]
    code, out, _ = _run(capsys, "info", ckpts["unsamv2"], "--json")
    described = json.loads(out)["checkpoint"]
    assert code == 0 and described["kind"] == "unsamv2" and described["size"] == "tiny"
    code, out, _ = _run(capsys, "info", ckpts["sam2"])
    assert code == 0 and "intensity rule:" in out and "sam2" in out
    code, _, err = _run(capsys, "info", ckpts["truncated"])
    assert code == 2 and "truncated" in err


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from unsamv2_engine.cli import main\n"
        "for argv in (['--help'], ['segment', '--help'], ['sweep', '--help'], ['models', '--help'],\n"
        "             ['info', '--help'], ['convert', '--help'], ['synth', '--help'], ['evaluate', '--help'],\n"
        "             ['napari', '--help'], ['--version']):\n"
        "    try:\n"
        "        rc = main(argv)\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        "    assert rc in (0, None), (argv, rc)\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'sam2', 'hydra', 'napari', 'numpy', 'scipy', 'skimage'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "--granularities" in result.stdout and "--checkpoint" in result.stdout


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "unsamv2_engine", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: unsamv2")
    for command in ("segment", "sweep", "models", "info", "convert", "synth", "evaluate", "napari"):
        assert command in result.stdout


def test_every_option_is_documented():
    """Each long option of each command appears in docs/cli.md or the command's guide in docs/."""
    import argparse
    from pathlib import Path

    from unsamv2_engine.cli import build_parser

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = "".join(page.read_text() for page in docs.glob("*.md"))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = {name: sorted(o for a in parser._actions for o in a.option_strings
                            if o.startswith("--") and o != "--help" and o not in text)
               for name, parser in sub.choices.items()}
    assert not any(missing.values()), f"options missing from docs/*.md: { {k: v for k, v in missing.items() if v} }"
