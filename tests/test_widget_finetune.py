"""The "Fine-tune on a folder…" action: a real ``unsamv2 finetune`` child process, followed, cancelled, loaded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

WAIT_S = 240
# small steps: few masks and one correction click per step, no validation (the recipe itself is tested in
# test_finetune.py; here the process handling is)
FAST = ("--cache-embeddings", "--batch-size", "1", "--max-masks", "2", "--correction-clicks", "1",
        "--val-fraction", "0", "--seed", "0")


@pytest.fixture(scope="module")
def lab_folder(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Two small synthetic images, their classical pseudo-labels and a tiny random base checkpoint."""
    import tifffile

    from unsamv2_engine.pseudo.pipeline import pseudo_label_folder
    from unsamv2_engine.synth import generate_sample

    root = tmp_path_factory.mktemp("lab")
    images = root / "images"
    images.mkdir()
    for seed in (0, 1):
        sample = generate_sample(seed=seed, modality="fluorescence", ndim=2, shape=(128, 128))
        tifffile.imwrite(images / f"cells_{seed}.tif", np.asarray(sample.image))
    labels = root / "pseudo"
    summary = pseudo_label_folder(images, labels, backbone="classical", overlays=False)
    assert len(summary.done) == 2 and summary.n_masks > 0
    base = tiny_checkpoint
    return {"images": images, "labels": labels, "base": base, "root": root}


def _options(lab: dict[str, Path], output: Path, steps: int):
    from napari_unsamv2._finetune_job import FinetuneOptions

    return FinetuneOptions(images=str(lab["images"]), base=str(lab["base"]), output=str(output),
                           pseudo_labels=str(lab["labels"]), max_steps=steps, device="cpu",
                           extra=FAST)


@pytest.mark.slow
def test_cancel_stops_the_child_and_keeps_a_checkpoint(lab_folder, tmp_path):
    from napari_unsamv2._finetune_job import FinetuneJob

    output = tmp_path / "adapter.pt"
    steps: list[dict] = []
    job = FinetuneJob(_options(lab_folder, output, steps=10_000),
                      on_event=lambda e: steps.append(e) if e["event"] == "step" else None)
    job.start()
    deadline = time.monotonic() + WAIT_S
    while not steps and time.monotonic() < deadline and job.running:
        time.sleep(0.2)
    assert steps, f"no training step within {WAIT_S} s: {job.wait(1)}"
    job.cancel()
    result = job.wait(WAIT_S)
    assert result is not None and result.status == "cancelled", result
    assert result.returncode == 130
    assert not output.exists()  # no adapter from an unfinished run
    assert list(output.parent.rglob("last.pt")), "a cancelled run must leave a checkpoint to resume from"
    assert all(np.isfinite(e["loss"]) for e in steps)


@pytest.mark.slow
@pytest.mark.gui
def test_widget_runs_finetuning_and_loads_the_adapter(make_napari_viewer, qtbot, lab_folder, tmp_path):
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.model.checkpoint import read_adapter

    viewer = make_napari_viewer()
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    viewer.window.add_dock_widget(w)
    w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
    w.checkpoint_edit.setText(str(lab_folder["base"]))
    w.device_combo.setCurrentText("cpu")
    loaded: list = []
    w.model_loaded.connect(loaded.append)
    panel = w.finetune_panel
    output = tmp_path / "lab_adapter.pt"
    panel.images_edit.setText(str(lab_folder["images"]))
    panel.labels_edit.setText(str(lab_folder["labels"]))
    panel.output_edit.setText(str(output))
    options = panel.options()
    assert options is not None and options.base == str(lab_folder["base"]) and options.device == "cpu"
    options.max_steps = 1
    options.extra = FAST
    with qtbot.waitSignal(panel.job_finished, timeout=WAIT_S * 1000) as finished:
        assert panel.start(options) is not None
        assert not panel.start_button.isEnabled() and panel.cancel_button.isEnabled()
    result = finished.args[0]
    assert result.status == "done", result.message
    assert output.is_file() and read_adapter(output)  # a real adapter file
    assert [e["step"] for e in panel.job.events if e["event"] == "step"][-1] == 1
    assert panel.last_loss is not None and np.isfinite(panel.last_loss)
    # the widget loads the adapter on top of the base model it was trained from
    assert w.adapter_edit.text() == str(output)
    qtbot.waitUntil(lambda: bool(loaded), timeout=WAIT_S * 1000)
    assert "adapter" in loaded[-1].label
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    w.close_engine()


@pytest.mark.gui
def test_missing_folder_is_a_notification_not_a_run(make_napari_viewer, qtbot):
    from napari_unsamv2._widget import UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    w.finetune_panel.images_edit.setText("/no/such/folder")
    assert w.finetune_panel.options() is None
    assert w.finetune_panel.start() is None and w.finetune_panel.job is None
    w.close_engine()
