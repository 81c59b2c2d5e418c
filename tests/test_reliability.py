"""Issue 11: nothing lost, every mistake a clear error. One regression test (or more) per numbered item.

Everything runs as a user meets it: real files on disk, the real command through ``cli.main`` (and one
``unsamv2`` subprocess), the real engine service and engine process. Most refusals must happen *before
any work*: those tests give a text file as the checkpoint, so a command that loaded the model first would
fail with the checkpoint message instead of the expected one.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import make_cells_image
from unsamv2_engine.cli import main
from unsamv2_engine.cli.output import CliError
from unsamv2_engine.errors import CheckpointError, ImageError, OutputError, PromptError, UnSAMv2Error, is_user_error

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """A real image, a real tiny UnSAMv2 checkpoint, and the mistakes users make with checkpoints."""
    from PIL import Image

    from unsamv2_engine.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("reliability")
    paths = {"image": folder / "cells.tif", "ckpt": save_checkpoint(tiny_model, folder / "tiny.pt", kind="unsamv2")}
    tifffile.imwrite(paths["image"], make_cells_image(), photometric="rgb")
    paths["png"] = folder / "cells.png"
    Image.fromarray(make_cells_image()).save(paths["png"])
    paths["text"] = folder / "denied.pt"
    paths["text"].write_text("access denied\n")
    paths["text2"] = folder / "quote.pt"
    paths["text2"].write_text("'quoted text'\n")  # another first character: another torch error before the fix
    paths["html"] = folder / "page.pt"
    paths["html"].write_text("<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>")
    paths["lfs"] = folder / "lfs.pt"
    paths["lfs"].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4067a6\nsize 189000000\n")
    paths["random"] = folder / "random.pt"
    paths["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = paths["ckpt"].read_bytes()
    paths["truncated"] = folder / "truncated.pt"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


@pytest.fixture(scope="module")
def session(tiny_model):
    from unsamv2_engine.session import ImageSession

    s = ImageSession(tiny_model)
    s.set_image(make_cells_image())
    return s


# ============================================================ 1-3, 15: outputs never replace inputs
def _digest(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["segment", "sweep", "auto", "hierarchy"])
def test_output_naming_the_input_image_is_refused_before_work(capsys, files, tmp_path, how, command):
    image = tmp_path / "in.tif"
    image.write_bytes(files["image"].read_bytes())
    target = {"same": image, "symlink": tmp_path / "link.tif", "hardlink": tmp_path / "hard.tif"}[how]
    if how == "symlink":
        target.symlink_to(image)
    elif how == "hardlink":
        os.link(image, target)
    before = _digest(image)
    args = {"segment": ["--point", "40,40", "-g", "0.5"], "sweep": ["--point", "40,40", "--granularities", "0.2,0.8"],
            "auto": ["-g", "0.5"], "hierarchy": ["--granularities", "0.3,0.9"]}[command]
    code, _, err = _run(capsys, command, image, *args, "-o", target, "--checkpoint", files["text"])
    assert code == 2 and "would overwrite the input IMAGE" in err, err
    assert _digest(image) == before


@pytest.mark.parametrize("option", ["--json", "--table"])
def test_second_output_naming_the_input_is_refused(capsys, files, tmp_path, option):
    image = tmp_path / "in.tif"
    image.write_bytes(files["image"].read_bytes())
    code, _, err = _run(capsys, "sweep", image, "--point", "40,40", "--granularities", "0.5", "-o", tmp_path / "o.tif",
                        option, image, "--checkpoint", files["text"])
    assert code == 2 and f"{option} {image} would overwrite the input IMAGE" in err
    assert _digest(image) == files["image"].read_bytes() and not (tmp_path / "o.tif").exists()


def test_output_naming_the_checkpoint_or_adapter_is_refused(capsys, files, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x" * 10)
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", tmp_path / "m.tif",
                        "--json", ckpt, "--checkpoint", ckpt)
    assert code == 2 and "would overwrite the input --checkpoint" in err and ckpt.read_bytes() == b"x" * 10


def test_propagate_output_naming_the_stack_is_refused(capsys, files, tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    before = _digest(stack)
    code, _, err = _run(capsys, "propagate", stack, "--point", "0,10,10", "--granularity", "0.5", "-o", stack,
                        "--checkpoint", files["text"])
    assert code == 2 and "would overwrite the input STACK" in err and _digest(stack) == before


def test_segment_two_outputs_one_file(capsys, files, tmp_path):
    """Item 3: ``-o z.tif --json z.tif`` used to replace the TIFF with the JSON and report success."""
    z = tmp_path / "z.tif"
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", z, "--json", z,
                        "--checkpoint", files["text"])
    assert code == 2 and "-o and --json both name" in err and not z.exists()


def test_finetune_refuses_to_replace_its_base(capsys, files, tmp_path):
    """Item 2: ``finetune -o base.pt`` replaced the base checkpoint with an adapter."""
    base = tmp_path / "base.pt"
    base.write_bytes(files["ckpt"].read_bytes())
    images = tmp_path / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", make_cells_image(), photometric="rgb")
    code, _, err = _run(capsys, "finetune", "--images", images, "--base", base, "-o", base, "--max-steps", "1")
    assert code == 2 and "would overwrite the input --base" in err
    assert base.read_bytes() == files["ckpt"].read_bytes()


def test_finetune_output_folder_checked_before_training(capsys, files, tmp_path):
    """Item 6: an unusable ``-o`` location is reported before any work (here its folder is a file)."""
    images = tmp_path / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", make_cells_image(), photometric="rgb")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    code, _, err = _run(capsys, "finetune", "--images", images, "--base", files["text"], "-o", blocker / "a.pt",
                        "--workdir", tmp_path / "work", "--max-steps", "1")
    assert code == 2 and "is a file, not a folder" in err and "denied.pt" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder_is_refused_before_work(capsys, files, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", ro / "m.tif",
                            "--checkpoint", files["text"])
        assert code == 2 and "not writable" in err
    finally:
        ro.chmod(0o755)


def test_directory_as_output_is_refused_before_work(capsys, files, tmp_path):
    """Item 15: an existing folder as ``-o`` was found after the model ran, naming a .partial file."""
    folder = tmp_path / "out.tif"
    folder.mkdir()
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", folder,
                        "--checkpoint", files["text"])
    assert code == 2 and "is an existing folder" in err and ".partial" not in err


def test_failed_second_output_leaves_no_first_output(capsys, files, tmp_path, monkeypatch):
    """Item 15: when writing ``--json`` fails (here: the disk is full), the label TIFF is not left behind,
    and an older file under that name is kept as it was.
    """
    import errno

    out = tmp_path / "m.tif"
    out.write_bytes(b"older result")

    def full_disk(path, document):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr("unsamv2_engine.io.write_json", full_disk)
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", out,
                        "--json", tmp_path / "m.json", "--checkpoint", files["ckpt"], "-q")
    assert code == 2 and "No space left on device" in err and "m.json" in err and ".partial" not in err
    assert out.read_bytes() == b"older result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


def test_segment_writes_both_outputs_when_all_is_well(capsys, files, tmp_path):
    code, out, _ = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", tmp_path / "m.tif",
                        "--json", tmp_path / "m.json", "--checkpoint", files["ckpt"], "-q")
    assert code == 0 and "wrote" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.tif"]  # no temporary file left
    assert json.loads((tmp_path / "m.json").read_text())["output"] == str(tmp_path / "m.tif")


def test_convert_pseudo_label_evaluate_synth_check_outputs(capsys, files, tmp_path):
    """The sibling commands: convert (-o = --base), pseudo-label / evaluate / synth (-o is a file)."""
    code, _, err = _run(capsys, "convert", files["ckpt"], "--to", "adapter", "--base", files["truncated"], "-o",
                        files["truncated"])
    assert code == 2 and "would overwrite the input" in err
    images = tmp_path / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", make_cells_image(), photometric="rgb")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for argv in (["pseudo-label", images, "-o", a_file], ["evaluate", images, "-o", a_file],
                 ["synth", "-o", a_file, "--n", "1", "--seed", "0"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "is a file; give a folder" in err, (argv, err)
    assert a_file.read_text() == "x"


# ============================================================ 4: see tests/test_weights.py (pinned digests)
# ============================================================ 5, 7, 16: what the checkpoint file is
@pytest.mark.parametrize("kind,expected", [
    ("text", "a text file (it starts with 'access denied')"), ("text2", "a text file"),
    ("html", "a web page (HTML)"), ("lfs", "git-lfs pointer"), ("random", "data of an unknown format"),
    ("truncated", "truncated or damaged zip"), ("png", "an image file (PNG)"), ("image", "an image file (TIFF)")])
def test_not_a_checkpoint_is_named(capsys, files, tmp_path, kind, expected):
    code, _, err = _run(capsys, "info", files[kind])
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and "weights_only" not in err and "arbitrary code" not in err
    if kind in ("png", "image"):
        assert "delete" not in err  # never tell a user to delete their image
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", tmp_path / "o.tif",
                        "--checkpoint", files[kind])
    assert code == 2 and expected in err and "--checkpoint" in err


def test_checkpoint_error_through_the_engine(files):
    """Item 5: through the engine the whole message was ``544502645``."""
    from unsamv2_engine import protocol as p
    from unsamv2_engine.service import EngineService

    reply = EngineService().handle(p.LoadModel(checkpoint=str(files["text"])))
    assert isinstance(reply, p.Failure) and reply.user_error and reply.kind == "CheckpointError"
    assert "a text file" in reply.message and reply.traceback == ""


def test_truncated_adapter_names_the_adapter(capsys, files, tmp_path):
    """Item 16: a truncated --adapter was reported with advice about --checkpoint."""
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", tmp_path / "o.tif",
                        "--checkpoint", files["ckpt"], "--adapter", files["truncated"], "-q")
    assert code == 2 and "adapter" in err and "--adapter" in err and "--checkpoint" not in err, err


def test_five_dimensional_tiff_with_frame(capsys, files, tmp_path):
    """Item 16: a 5D TIFF with --frame was called "a single 2D image"."""
    stack = tmp_path / "tzyx.tif"
    tifffile.imwrite(stack, np.zeros((2, 3, 4, 16, 16), np.uint8))
    code, _, err = _run(capsys, "segment", stack, "--frame", "0", "--point", "4,4", "-g", "0.5", "-o",
                        tmp_path / "o.tif", "--checkpoint", files["text"])
    assert code == 2 and "5 axes" in err and "single 2D image" not in err


# ============================================================ 8: one error hierarchy
def test_existing_error_types_are_in_the_hierarchy():
    from unsamv2_engine.automatic.segmenter import Cancelled
    from unsamv2_engine.io.images import ImageReadError
    from unsamv2_engine.model.checkpoint import CheckpointError as CheckpointError2
    from unsamv2_engine.prompts import PromptError as PromptError2
    from unsamv2_engine.weights import ChecksumMismatchError, WeightsError

    assert PromptError2 is PromptError and CheckpointError2 is CheckpointError
    assert issubclass(PromptError, ValueError) and issubclass(ImageReadError, ValueError)  # old catches still work
    for kind in (PromptError, ImageReadError, CheckpointError, WeightsError, ChecksumMismatchError, Cancelled,
                 OutputError, CliError):
        assert issubclass(kind, UnSAMv2Error)
    assert not is_user_error(ValueError("a bug")) and not is_user_error(KeyError("k"))


def test_a_bug_keeps_its_traceback_and_a_user_error_does_not(capsys, files, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")  # a programming error, not the user's

    monkeypatch.setattr("unsamv2_engine.io.read_image", bug)
    with pytest.raises(ValueError, match="broadcast"):
        main(["segment", str(files["image"]), "--point", "1,1", "-g", "0.5", "-o", str(tmp_path / "o.tif")])
    monkeypatch.undo()
    code, _, err = _run(capsys, "segment", files["image"], "--point", "1,1", "-g", "5", "-o", tmp_path / "o.tif")
    assert code == 2 and err.startswith("unsamv2: error: granularity must be in") and "Traceback" not in err
    with pytest.raises(PromptError):  # --traceback shows the trace of a user error too
        main(["segment", str(files["image"]), "--point", "1,1", "-g", "5", "-o", str(tmp_path / "o.tif"),
                  "--traceback"])


def test_engine_service_classifies_like_the_cli(files, monkeypatch):
    """A bug in the engine arrives with its type and traceback; a user error as one line."""
    from unsamv2_engine import protocol as p
    from unsamv2_engine.client import EngineClient, EngineRequestError, ThreadTransport
    from unsamv2_engine.service import EngineService

    service = EngineService()

    def broken(request, emit):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(service, "_load", broken)
    client = EngineClient(ThreadTransport(service))
    try:
        with pytest.raises(EngineRequestError) as info:
            client.call(p.LoadModel(model_name="unsamv2-plus"), timeout=30)
        failure = info.value.failure
        assert not failure.user_error and failure.kind == "ZeroDivisionError"
        assert "Traceback" in failure.traceback and "broken" in failure.traceback
        assert "ZeroDivisionError" in str(info.value) and "Traceback" in str(info.value)
        reply = service.handle(p.Predict("nothing", np.array([[1.0, 1.0]]), np.array([1]), 0.5))
        assert reply.user_error and reply.traceback == ""  # no model loaded: the user's order of steps
    finally:
        client.close()


# ============================================================ 9, 10, 17: silent wrong results in the API
def test_failed_set_image_forgets_the_previous_embedding(tiny_model):
    from unsamv2_engine.session import ImageSession

    s = ImageSession(tiny_model)
    s.set_image(make_cells_image())
    with pytest.raises(ImageError):
        s.set_image(np.zeros((5, 40, 40, 2)))
    assert not s.is_image_set
    with pytest.raises(UnSAMv2Error, match="no image set"):
        s.predict([[40, 40]], [1], 0.5)


def test_nan_threshold_and_wrong_granularity_types(capsys, files, session, tmp_path):
    code, _, err = _run(capsys, "segment", files["image"], "--point", "40,40", "-g", "0.5", "-o", tmp_path / "o.tif",
                        "--mask-threshold", "nan")
    assert code == 2 and "finite" in err
    with pytest.raises(PromptError, match="finite"):
        session.predict([[40, 40]], [1], 0.5, mask_threshold=float("nan"))
    for g in (True, "0.5"):
        with pytest.raises(PromptError, match="granularity must be a number"):
            session.predict([[40, 40]], [1], g)


def test_api_shapes_and_argument_forms(tiny_model, session, files):
    from unsamv2_engine.session import ImageSession

    s = ImageSession(tiny_model)
    with pytest.raises(ImageError, match="read_image"):
        s.set_image(str(files["image"]))
    grey = make_cells_image()[..., 0]
    s.set_image(grey[..., None])  # [H, W, 1], as the file reader accepts it
    assert s.image_hw == grey.shape
    s.set_image(grey[None])  # [1, H, W]
    assert s.image_hw == grey.shape
    with pytest.raises(PromptError, match=r"for one granularity pass \[0.5\]"):
        session.sweep([[40, 40]], [1], 0.5)
    with pytest.raises(PromptError, match="got the string"):
        session.sweep([[40, 40]], [1], "0.1,0.5")
    for points in ("40,40", [["40", "40"]], [[40, 40], [50]]):
        with pytest.raises(PromptError, match=r"points must be numbers of shape \[N, 2\]"):
            session.predict(points, [1] * (2 if len(points) == 2 and points != "40,40" else 1), 0.5)


# ============================================================ 11: sweep size
def test_huge_sweep_is_refused_at_once(capsys, files, tmp_path):
    code, _, err = _run(capsys, "sweep", files["image"], "--point", "40,40", "--granularities", "0.1:1.0:100000",
                        "-o", tmp_path / "s.tif", "--checkpoint", files["text"])
    assert code == 2 and "100000 granularities are too many" in err and "at most 100" in err


# ============================================================ 12: the engine process dies
def test_dead_engine_fails_pending_and_new_requests():
    from unsamv2_engine import protocol as p
    from unsamv2_engine.client import EngineClient, EngineRequestError, ProcessTransport

    transport = ProcessTransport(torch_threads=1)
    client = EngineClient(transport)
    try:
        replies = []
        # a request the engine is busy with (its first request imports torch): then the process is killed
        client.submit(p.LoadModel(checkpoint="/nonexistent/model.pt"), replies.append)
        os.kill(transport.pid, signal.SIGKILL)
        with pytest.raises(EngineRequestError) as info:
            client.call(p.LoadModel(checkpoint="/nonexistent/other.pt"), timeout=60)  # answered, not a wait
        assert info.value.engine_died and "Restart the engine" in str(info.value)
        assert "signal 9" in str(info.value) and not transport.alive
        final = [r for r in replies if isinstance(r, p.Failure)]
        assert len(final) == 1 and final[0].kind in ("EngineDied", "FileNotFoundError", "CheckpointError")
    finally:
        client.close(timeout=5)


# ============================================================ 13: a bad RLE in a pseudo-label JSON
def test_invalid_rle_names_file_and_annotation(tmp_path):
    from unsamv2_engine.io.coco import encode_rle
    from unsamv2_engine.train.dataset import find_pairs

    images, labels = tmp_path / "imgs", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    mask = np.zeros((96, 128), bool)
    mask[10:30, 10:30] = True
    good = {"segmentation": encode_rle(mask), "granularity": 0.5}
    for stem in ("a", "b"):
        tifffile.imwrite(images / f"{stem}.tif", make_cells_image(), photometric="rgb")
    bad = {"id": 7, "segmentation": {"size": [96, 128], "counts": "not an RLE!"}, "granularity": 0.5}
    (labels / "a.json").write_text(json.dumps({"annotations": [good, good, bad]}))
    (labels / "b.json").write_text(json.dumps({"annotations": [good]}))
    pairs, skipped = find_pairs(images, labels)
    assert [p.name for p in pairs] == ["b"]  # the image with one bad annotation among good ones is skipped...
    assert len(skipped) == 1 and "a.json annotation 2 (id 7) has an invalid RLE" in skipped[0]  # ...and named


# ============================================================ 14: uniform image
@pytest.mark.parametrize("fill,expected", [(7, "is uniform (every pixel is 7.0)"), (np.nan, "has no finite value")])
def test_uniform_image_is_named(capsys, files, tmp_path, fill, expected):
    image = tmp_path / "flat.tif"
    tifffile.imwrite(image, np.full((32, 32), fill, np.float32))
    code, _, err = _run(capsys, "segment", image, "--point", "5,5", "-g", "0.5", "-o", tmp_path / "o.tif",
                        "--checkpoint", files["text"])
    assert code == 2 and expected in err and "another point" not in err


# ============================================================ 18: pseudo-label and subfolders
def test_pseudo_label_says_subfolders_are_not_searched(capsys, tmp_path):
    (tmp_path / "in" / "day1").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "in" / "day1" / "a.tif", make_cells_image(), photometric="rgb")
    code, _, err = _run(capsys, "pseudo-label", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 2 and "subfolders are not searched" in err and "day1" in err


# ============================================================ 19: the CPU preset, one number everywhere
def test_cpu_preset_points_per_side_is_documented_as_coded(capsys):
    from unsamv2_engine.automatic.settings import AutoSettings

    n = AutoSettings.preset("cpu").points_per_side
    code, help_text, _ = _run(capsys, "auto", "--help")
    flat = " ".join(help_text.split())
    assert code == 0 and f"(authors 64, cpu {n})" in flat and f"cpu ({n}x{n}" in flat
    assert f"| `--points-per-side N` | 64 | {n} |" in (REPO / "docs" / "cli.md").read_text()
