"""Propagation through z-stacks and time-lapses (``unsamv2_engine.video``), its CLI and its protocol.

Two random-weight models. ``tiny_model`` (the shared hiera-tiny, see ``conftest.py``) checks that a
prompted slice equals the image path and runs the CLI on a real checkpoint file. Every other test uses
``small_model``: the same hiera-tiny UnSAMv2 architecture built by upstream hydra with a 128 px input
(``++model.image_size=128``), because on CPU one tracked slice at 1024 px costs seconds (memory
attention over 7 x 64 x 64 memory tokens) and these tests track dozens: at 128 px this module and the
widget's propagation tests took 41 s instead of 70 s at 256 px. The code under test reads the
input size from the model, so both exercise the same paths. Stacks are synthetic (``synth``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unsamv2_engine import protocol as p
from unsamv2_engine.cli import main
from unsamv2_engine.prompts import PromptError
from unsamv2_engine.video import ObjectPrompt, Propagation, StackFrames, VideoSession, propagate

REPO = Path(__file__).resolve().parents[1]
N_SLICES = 6
SMALL_INPUT = 128  # px: the video models' input size (see the module docstring)


# ============================================================================ fixtures
def _small_input_model(granularity: bool = True):
    """hiera-tiny SAM 2.1 / UnSAMv2 with random weights and a SMALL_INPUT px input (see the module docstring)."""
    import sam2  # noqa: F401  (initialises sam2's hydra configs)
    import torch
    from sam2.build_sam import build_sam2

    from unsamv2_engine.model.build import UNSAMV2_OVERRIDES, ModelInfo, UnSAMv2Model
    from unsamv2_engine.model.specs import SIZES

    torch.manual_seed(0)
    overrides = (list(UNSAMV2_OVERRIDES) if granularity else []) + [f"++model.image_size={SMALL_INPUT}"]
    sam = build_sam2(SIZES["tiny"].config, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=overrides)
    model = UnSAMv2Model(sam, ModelInfo(size="tiny", family="sam2.1"))
    if granularity:
        model.add_granularity_module()
    model.sam.eval()
    return model


@pytest.fixture(scope="module")
def small_model():
    return _small_input_model()


@pytest.fixture(scope="module")
def small_sam2_model():
    return _small_input_model(granularity=False)


@pytest.fixture(scope="module")
def sample():
    from unsamv2_engine.synth import generate_sample

    return generate_sample(3, modality="brightfield", ndim="3", shape=(N_SLICES, 96, 128))


def _inside(sample, z: int, rank: int = 0) -> np.ndarray:
    """A point (x, y) at the centre of the rank-th largest cell on slice z: ``[1, 2]``."""
    cells = sample.labels["cell"][z]
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    target = ids[np.argsort(-counts)[rank]]
    yy, xx = np.nonzero(cells == target)
    k = np.argmin(np.hypot(yy - yy.mean(), xx - xx.mean()))
    return np.array([[xx[k], yy[k]]], np.float64)


@pytest.fixture(scope="module")
def two_objects(small_model, sample):
    """Object 1 on slice 2 (g 0.6) and object 2 on slice 3 (g 1.0), propagated both ways."""
    session = VideoSession(small_model, sample.image)
    session.add_prompts([ObjectPrompt(1, 2, _inside(sample, 2, 0), np.array([1]), 0.6),
                         ObjectPrompt(2, 3, _inside(sample, 3, 1), np.array([1]), 1.0)])
    steps = []
    result = session.propagate("both", progress=lambda done, total: steps.append((done, total)))
    return session, result, steps


# ============================================================================ engine
def test_labels_have_the_stack_shape_and_distinct_ids(two_objects, sample):
    _, result, steps = two_objects
    assert isinstance(result, Propagation)
    assert result.labels.shape == sample.image.shape and result.labels.dtype == np.uint16
    assert result.object_ids == [1, 2]
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    assert (result.labels == 1).any() and (result.labels == 2).any()
    assert result.scores.shape == result.object_scores.shape == (N_SLICES, 2)
    assert result.scores.dtype == np.float32
    assert result.frames_done.all() and result.complete and not result.cancelled
    assert result.granularities == {1: 0.6, 2: 1.0} and result.prompted_frames == {1: [2], 2: [3]}
    # one progress step per slice and pass: forward from slice 2 (object 1's) to 5, then backward from
    # slice 2 (just before object 2's) down to 0
    assert steps == [(d, 7) for d in range(1, 8)]


def test_both_directions_compute_every_slice_of_every_object(two_objects):
    _, result, _ = two_objects
    assert np.isfinite(result.scores).all() and np.isfinite(result.object_scores).all()
    for z in range(N_SLICES):
        assert np.array_equal(result.frame_labels(z), result.labels[z])


@pytest.mark.slow
def test_forward_leaves_earlier_slices_empty_and_backward_later_ones(small_model, sample):
    session = VideoSession(small_model, sample.image)
    session.add_prompts([ObjectPrompt(1, 2, _inside(sample, 2), np.array([1]), 0.6)])
    forward = session.propagate("forward")
    assert not forward.labels[:2].any() and np.isnan(forward.scores[:2]).all()
    assert np.isfinite(forward.scores[2:]).all() and forward.frames_done.all()
    backward = session.propagate("backward")
    assert not backward.labels[3:].any() and np.isnan(backward.scores[3:]).all()
    assert np.isfinite(backward.scores[:3]).all()
    both = session.propagate("both")
    # "both" = the forward pass, then backward from the prompted slice: each slice computed once
    np.testing.assert_array_equal(both.labels[2:], forward.labels[2:])
    np.testing.assert_array_equal(both.scores[2:], forward.scores[2:])
    assert np.isfinite(both.scores).all()
    assert both.frames_embedded == 0  # every slice was still in the embedding cache


@pytest.mark.slow
def test_prompted_slice_equals_the_image_session(tiny_model, sample):
    from unsamv2_engine.session import ImageSession

    stack = sample.image[:2]
    point = _inside(sample, 1)
    result = propagate(tiny_model, stack, [ObjectPrompt(1, 1, point, np.array([1]), 0.4)], direction="forward")
    image = ImageSession(tiny_model)
    image.set_image(stack[1])
    pred = image.predict(point, [1], 0.4, mask_threshold=-1.0)
    assert pred.object_score > 0, "the video path empties masks of absent objects; pick another point"
    video_mask = result.labels[1] == 1
    assert video_mask.any()
    assert np.count_nonzero(video_mask != pred.mask) <= 2  # exact up to float rounding of point scaling
    assert result.scores[1, 0] == pytest.approx(pred.score, abs=1e-4)
    assert result.object_scores[1, 0] == pytest.approx(pred.object_score, abs=1e-4)
    assert not result.labels[0].any()


@pytest.mark.slow
def test_each_object_keeps_its_own_granularity(two_objects, sample):
    session, before, _ = two_objects
    object_one = ObjectPrompt(1, 2, _inside(sample, 2, 0), np.array([1]), 0.6)
    session.clear(1)
    try:
        only_two = session.propagate("both")  # object 2 alone (the session's embeddings are reused)
    finally:
        session.add_prompts([object_one])
    assert only_two.object_ids == [2]
    # object 2 tracked beside object 1 is exactly object 2 tracked alone: its own row, its own g
    np.testing.assert_array_equal(before.object_scores[:, 1], only_two.object_scores[:, 0])
    np.testing.assert_array_equal(before.scores[:, 1], only_two.scores[:, 0])

    session.set_granularity(1, 0.2)
    try:
        after = session.propagate("both")
    finally:
        session.set_granularity(1, 0.6)
    assert after.granularities == {1: 0.2, 2: 1.0}
    np.testing.assert_array_equal(after.scores[:, 1], before.scores[:, 1])
    np.testing.assert_array_equal(after.object_scores[:, 1], before.object_scores[:, 1])
    assert after.scores[2, 0] != before.scores[2, 0]  # object 1's conditioning slice changed


@pytest.mark.slow
def test_reprompting_another_slice_corrects_the_result(small_model, sample):
    from unsamv2_engine.session import ImageSession

    session = VideoSession(small_model, sample.image, mask_threshold=0.0)
    session.add_prompts([ObjectPrompt(1, 1, _inside(sample, 1), np.array([1]), 0.5)])
    first = session.propagate("forward")
    correction = np.vstack([_inside(sample, 4, 1), _inside(sample, 4, 0)])
    session.add_prompts([ObjectPrompt(1, 4, correction, np.array([1, 0]), 0.5)])
    second = session.propagate("forward")
    assert session.prompted_frames(1) == [1, 4] and second.prompted_frames == {1: [1, 4]}
    # the first prompted slice keeps its mask; tracked slices may change on both sides of the new one,
    # since every conditioning slice is in the memory of every tracked slice (upstream SAM 2)
    np.testing.assert_array_equal(second.labels[1], first.labels[1])
    assert not second.labels[0].any()
    image = ImageSession(small_model, mask_threshold=0.0)
    image.set_image(sample.image[4])
    pred = image.predict(correction, [1, 0], 0.5)
    expected = pred.mask if pred.object_score > 0 else np.zeros_like(pred.mask)
    assert np.count_nonzero((second.labels[4] == 1) != expected) <= 2
    assert not np.array_equal(second.scores[4:], first.scores[4:])
    # prompting the same slice again replaces its points
    session.add_prompts([ObjectPrompt(1, 4, correction[:1], np.array([1]), 0.5)])
    assert session.prompted_frames(1) == [1, 4]
    session.clear(1, 4)
    assert session.prompted_frames(1) == [1]


def test_cancel_stops_early_and_marks_missing_slices(small_model, sample):
    session = VideoSession(small_model, sample.image)
    session.add_prompts([ObjectPrompt(1, 0, _inside(sample, 0), np.array([1]), 0.8)])
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 2:
            stop.set()

    result = session.propagate("forward", progress=progress, cancel=stop)
    assert result.cancelled and not result.complete
    assert result.frames_done[:2].all() and not result.frames_done[2:].any()
    assert not result.labels[2:].any() and np.isnan(result.scores[2:]).all()


@pytest.mark.slow
def test_stack_layouts_axis_and_channels(small_model, sample):
    zyx = sample.image[:3]  # [3, 96, 128]
    moved = np.moveaxis(zyx, 0, 1)  # [96, 3, 128] with axis=1: the same 3 frames; labels keep the axis order
    result = propagate(small_model, moved, [ObjectPrompt(1, 0, _inside(sample, 0), np.array([1]), 0.7)], axis=1,
                       direction="forward")
    assert result.labels.shape == moved.shape and result.axis == 1
    plain = propagate(small_model, zyx, [ObjectPrompt(1, 0, _inside(sample, 0), np.array([1]), 0.7)],
                      direction="forward")
    np.testing.assert_array_equal(np.moveaxis(result.labels, 1, 0), plain.labels)

    # 4D: channels last by default (2 channels -> red, green); a channel axis before z is allowed too
    two_channel = np.stack([zyx, zyx // 2], axis=-1)  # [3, 96, 128, 2]
    four_d = propagate(small_model, two_channel, [ObjectPrompt(1, 1, _inside(sample, 1), np.array([1]), 0.7)],
                       direction="both")
    assert four_d.labels.shape == zyx.shape and four_d.frames_done.all()
    channels_first = np.moveaxis(two_channel, -1, 0)  # [2, 3, 96, 128]
    frames = StackFrames(channels_first, axis=1, channel_axis=0)
    assert frames.n_frames == 3 and frames.frame_hw == (96, 128) and frames.layout.labels_shape == zyx.shape
    np.testing.assert_array_equal(frames.rgb8(1), StackFrames(two_channel).rgb8(1))


def test_frames_use_one_contrast_range_for_the_whole_stack():
    stack = np.zeros((3, 40, 50), np.uint16)
    stack[0, :, :25] = 1000
    stack[2, :, :25] = 4000  # the stack's range is 0..4000
    frames = StackFrames(stack)
    assert frames.contrast_limits == (0.0, 4000.0)
    assert frames.rgb8(0).max() == 64 and frames.rgb8(2).max() == 255  # 1000 / 4000 * 255 = 63.75
    assert StackFrames(stack, contrast_limits=(0, 1000)).rgb8(0).max() == 255
    rgba = np.random.default_rng(0).integers(0, 255, (2, 40, 50, 4), dtype=np.uint8)
    np.testing.assert_array_equal(StackFrames(rgba).rgb8(1), rgba[1, ..., :3])  # alpha dropped, uint8 as is
    grey = StackFrames(rgba[..., :1]).rgb8(0)
    assert grey.shape == (40, 50, 3) and (grey == rgba[0, ..., :1]).all()


@pytest.mark.slow
def test_plain_sam_model_propagates_and_g_picks_the_first_slice_candidate(small_sam2_model, sample):
    from unsamv2_engine.session import ImageSession

    point = _inside(sample, 0)
    result = propagate(small_sam2_model, sample.image[:3], [ObjectPrompt(1, 0, point, np.array([1]), 0.2)],
                       direction="forward", mask_threshold=0.0)
    assert result.labels.shape == (3, 96, 128) and np.isfinite(result.scores).all()
    image = ImageSession(small_sam2_model, mask_threshold=0.0)
    image.set_image(sample.image[0])
    pred = image.predict(point, [1], 0.2)
    expected = pred.mask if pred.object_score > 0 else np.zeros_like(pred.mask)
    # upstream's decoder against ours: the same arithmetic in another order, so allow a few edge pixels
    assert np.count_nonzero((result.labels[0] == 1) != expected) <= 0.01 * expected.size


# ============================================================================ bad inputs
@pytest.mark.parametrize(("stack_shape", "kwargs", "message"), [
    ((96, 128), {}, "single 2D image"),
    ((4, 96, 128, 3, 2), {}, "5 axes"),
    ((4, 96, 128), {"axis": 3}, "axis 3 is out of range"),
    ((4, 96, 128), {"axis": -4}, "out of range"),
    ((4, 96, 128), {"channel_axis": 0}, "3D"),
    ((4, 96, 128, 3), {"axis": 3}, "both name axis 3"),
    ((4, 96, 1, 128), {"axis": 0, "channel_axis": 1}, "too small"),
    ((4, 96, 128), {"direction": "sideways"}, "direction must be one of both, forward, backward"),
    ((4, 96, 128), {"mask_threshold": float("nan")}, "mask_threshold"),
    ((4, 96, 128), {"max_cached_frames": 0}, "max_cached_frames"),
])
def test_bad_stacks_and_options_are_refused(small_model, stack_shape, kwargs, message):
    prompt = ObjectPrompt(1, 0, np.array([[10, 10]]), np.array([1]), 0.5)
    with pytest.raises(ValueError, match=message):
        propagate(small_model, np.zeros(stack_shape, np.uint8), [prompt], **kwargs)


@pytest.mark.parametrize(("prompt", "message"), [
    (ObjectPrompt(1, 4, [[10, 10]], [1], 0.5), "slice 4 of object 1 is outside the stack: it has 4 slices"),
    (ObjectPrompt(1, -1, [[10, 10]], [1], 0.5), "outside the stack"),
    (ObjectPrompt(1, 0, [[130, 10]], [1], 0.5), "object 1, slice 0: points outside the 128x96"),
    (ObjectPrompt(1, 0, [[10, 10]], [0], 0.5), "all points are negative"),
    (ObjectPrompt(1, 0, [[10, 10]], [1], 1.5), r"granularity must be in \[0.1, 1.0\]"),
    (ObjectPrompt(1, 0, [[10, 10]], [1], 0.05), "granularity must be in"),
    (ObjectPrompt(1, 0, [[10, 10]], [1], None), "object 1 has no granularity"),
    (ObjectPrompt(0, 0, [[10, 10]], [1], 0.5), "object ids must be integers >= 1"),
    (ObjectPrompt(1, 1.5, [[10, 10]], [1], 0.5), "must be an integer index"),
])
def test_bad_prompts_are_refused_before_any_work(small_model, prompt, message):
    session = VideoSession(small_model, np.zeros((4, 96, 128), np.uint8))
    with pytest.raises(PromptError, match=message):
        session.add_prompts([prompt])
    assert session.object_ids == [] and session.state["frames_embedded"] == 0


def test_one_granularity_per_object_and_prompts_required(small_model):
    session = VideoSession(small_model, np.zeros((4, 96, 128), np.uint8))
    with pytest.raises(PromptError, match="two granularities"):
        session.add_prompts([ObjectPrompt(1, 0, [[10, 10]], [1], 0.5), ObjectPrompt(1, 2, [[10, 10]], [1], 0.7)])
    with pytest.raises(PromptError, match="no prompts"):
        session.propagate()
    with pytest.raises(PromptError, match="no prompts given"):
        session.add_prompts([])
    with pytest.raises(PromptError, match="has no prompts"):
        session.set_granularity(3, 0.5)


# ============================================================================ CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, tiny_model, sample):
    from unsamv2_engine.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("propagate")
    stack = folder / "stack.tif"
    tifffile.imwrite(stack, sample.image[:2])
    flat = folder / "flat.tif"
    tifffile.imwrite(flat, sample.image[0])
    return {"ckpt": save_checkpoint(tiny_model, folder / "tiny.pt"), "stack": stack, "flat": flat, "dir": folder}


@pytest.mark.slow
def test_cli_end_to_end(cli_files, sample, capsys):
    import csv
    import json

    from unsamv2_engine.io import read_labels

    out, scores, meta = (cli_files["dir"] / name for name in ("labels.tif", "scores.csv", "meta.json"))
    x, y = _inside(sample, 0)[0]
    x2, y2 = _inside(sample, 0, 1)[0]
    code = main(["propagate", str(cli_files["stack"]), "--point", f"0,{x:g},{y:g}", "--point", f"0,{x2:g},{y2:g}@2",
                 "--granularity", "0.5", "--granularity", "2=1.0", "--checkpoint", str(cli_files["ckpt"]),
                 "--device", "cpu", "-o", str(out), "--scores", str(scores), "--json", str(meta), "-q"])
    assert code == 0, capsys.readouterr().err
    labels, info = read_labels(out)
    assert labels.shape == (2, 96, 128) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert [o["granularity"] for o in info["objects"]] == [0.5, 1.0]
    rows = list(csv.DictReader(scores.open()))
    assert [(r["slice"], r["object"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    document = json.loads(meta.read_text())
    assert document["stack_shape"] == [2, 96, 128] and document["direction"] == "both"
    assert document["frames_embedded"] == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--point", "2,10,10"], "slice 2 (object 1) is outside the stack: it has 2 slices"),
    (["--point", "0,500,10"], "points outside the 128x96"),
    (["--point", "0,10,10", "--axis", "3"], "axis 3 is out of range"),
    (["--point", "0,10,10@2", "--granularity", "1=0.5"], "object 1, which has no --point"),
    (["--point", "0,10,10", "--granularity", "1.5"], "granularity must be in"),
    (["--point", "x,10,10"], "Z a slice index"),
])
def test_cli_user_errors(cli_files, capsys, extra, message):
    argv = ["propagate", str(cli_files["stack"]), "-o", str(cli_files["dir"] / "bad.tif"), "--checkpoint",
            str(cli_files["ckpt"]), *extra]
    if "--granularity" not in extra:
        argv += ["--granularity", "0.5"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_2d_image(cli_files, capsys):
    argv = ["propagate", str(cli_files["flat"]), "--point", "0,10,10", "-g", "0.5", "-o",
            str(cli_files["dir"] / "bad.tif"), "--checkpoint", str(cli_files["ckpt"])]
    assert main(argv) == 2
    assert "single 2D image" in capsys.readouterr().err


def test_propagate_help_does_not_import_torch():
    code = ("import sys\nfrom unsamv2_engine.cli import main\n"
            "assert main(['propagate', '--help']) == 0\n"
            "import unsamv2_engine.protocol\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sam2', 'hydra'))\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "Z,X,Y[,pos|neg][@ID]" in result.stdout


# ============================================================================ protocol
@pytest.mark.slow
def test_protocol_round_trip(small_model, sample):
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.service import EngineService

    service = EngineService(small_model)
    stack = sample.image[:3]
    prompts = [ObjectPrompt(1, 1, _inside(sample, 1), np.array([1]), 0.6)]
    messages: list = []
    reply = service.handle(p.Propagate("layer-1", prompts, stack=stack), messages.append)
    assert isinstance(reply, p.Propagated), reply
    assert reply.labels.shape == stack.shape and reply.object_ids == [1] and reply.frames_done.all()
    assert not reply.cancelled and reply.stack_key == "layer-1" and reply.axis == 0
    assert [(m.stage, m.done, m.total) for m in messages] == [("propagate", i, 3) for i in (1, 2, 3)]

    client = EngineClient(ThreadTransport(service))
    try:
        again = client.call(p.Propagate("layer-1", prompts), timeout=120)  # no stack: the cached session
        np.testing.assert_array_equal(again.labels, reply.labels)
        forward = client.call(p.Propagate("layer-1", prompts, direction="forward"), timeout=120)
        assert not forward.labels[0].any() and np.isnan(forward.scores[0]).all()
    finally:
        client.close()

    missing = service.handle(p.Propagate("unknown", prompts))
    assert isinstance(missing, p.Failure) and missing.user_error and "not loaded" in missing.message
    bad = service.handle(p.Propagate("layer-1", [ObjectPrompt(1, 9, [[1, 1]], [1], 0.5)]))
    assert isinstance(bad, p.Failure) and bad.kind == "PromptError" and bad.user_error


# ------------------------------------------------------------------------------ CUDA (lent GPU only)
@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_propagation_agrees_with_cpu(tiny_model, sample):
    """bf16 autocast on CUDA gives nearly the CPU label volume (same model, same prompts)."""
    from unsamv2_engine.model import build_model

    stack = sample.image[:3]
    prompts = [ObjectPrompt(1, 1, _inside(sample, 1), np.array([1]), 0.5)]
    cpu = propagate(tiny_model, stack, prompts, direction="both")
    gpu = propagate(build_model("tiny", seed=0, device="cuda"), stack, prompts, direction="both")
    assert gpu.labels.shape == cpu.labels.shape and gpu.frames_done.all()
    assert (gpu.labels == cpu.labels).mean() > 0.97
