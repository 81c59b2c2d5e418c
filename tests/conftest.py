"""Shared fixtures: tiny random-weight models, synthetic images, the parity fixture folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_INPUT = 128  # px: the shared test models' input size

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one torch thread each, or the workers fight over the cores.
    import torch

    torch.set_num_threads(1)
# The authors'-code parity fixture lives in the repository (byte-identical to the team's shared copy;
# tests/test_parity_fixture.py checks its digests). UNSAMV2_PARITY_DIR points the tests at another copy.
PARITY_DIR = Path(os.environ.get("UNSAMV2_PARITY_DIR", REPO / "tests" / "fixtures" / "unsamv2_decoder_parity"))


def pytest_collection_finish(session):
    """Move what the imports made (torch, sam2, napari, Qt: millions of objects that live until the end) out
    of the collector's reach. napari runs ``gc.collect()`` whenever a layer leaves a canvas; over this heap a
    full collection took 0.3-0.9 s, and the automatic ones cost as much. Objects made by the tests (and so
    every leak check with ``gc.get_objects()``) are collected as before.
    """
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    # Never skipped: the fixture ships with the repository; a missing fixture is a failure.
    assert PARITY_DIR.is_dir(), f"parity fixture not found at {PARITY_DIR} (set UNSAMV2_PARITY_DIR)"
    return PARITY_DIR


@pytest.fixture(scope="session")
def tiny_model():
    """A seeded random-weight UnSAMv2 model on hiera-tiny at 128 px (shared: do not mutate it in tests).

    128 px, not the 1024 px of the real checkpoints: every test that is not about the input size runs
    its encoder on a 64x smaller token grid (test_model.py and test_parity.py build the 1024-px models).
    An encoder pass takes about 0.2 s on one CPU thread here, against 0.65 s at 256 px and 11 s at 1024 px.
    The tiled tests, whose tile counts follow the model input, use ``tiny_model_256``.
    """
    from unsamv2_engine.model import build_model

    return build_model("tiny", seed=0, image_size=TINY_INPUT)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """``tiny_model`` saved as an UnSAMv2 checkpoint file (for the engine process, the widget, the CLI)."""
    from unsamv2_engine.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("tiny") / "tiny.pt", kind="unsamv2")


@pytest.fixture(scope="session")
def tiny_model_256():
    """``tiny_model`` at a 256-px input: for the tiled tests (their images are sized in 256-px tiles)."""
    from unsamv2_engine.model import build_model

    return build_model("tiny", seed=0, image_size=256)


@pytest.fixture(scope="session")
def tiny_checkpoint_256(tiny_model_256, tmp_path_factory):
    """``tiny_model_256`` saved as an UnSAMv2 checkpoint file."""
    from unsamv2_engine.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model_256, tmp_path_factory.mktemp("tiny256") / "tiny256.pt", kind="unsamv2")


@pytest.fixture(scope="session")
def tiny_sam2_model():
    """A seeded random-weight plain SAM 2.1 hiera-tiny model at 128 px (no granularity module)."""
    from unsamv2_engine.model import build_model

    return build_model("tiny", granularity=False, seed=0, image_size=TINY_INPUT)


def make_cells_image() -> np.ndarray:
    """A 96x128 uint8 RGB image with two bright blobs, each holding a brighter nucleus."""
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.full((96, 128), 20, np.float32)
    for cy, cx, r in [(40, 40, 22), (55, 95, 18)]:
        d = np.hypot(yy - cy, xx - cx)
        img[d < r] = 120
        img[d < r / 2.5] = 230
    rgb = np.stack([img, img * 0.8, img * 0.6], -1)
    return rgb.astype(np.uint8)


@pytest.fixture
def cells_image() -> np.ndarray:
    return make_cells_image()


def start_widget(viewer, qtbot, checkpoint, *, dock: bool = False, timeout_ms: int = 60_000):
    """An UnSAMv2 widget on ``viewer`` with an in-process engine, ``checkpoint`` loaded on the CPU and the
    chosen image embedded (waited for); docked when ``dock``.
    """
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    if dock:
        viewer.window.add_dock_widget(w)
    w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
    w.checkpoint_edit.setText(str(checkpoint))
    w.device_combo.setCurrentText("cpu")
    w.load_model()
    qtbot.waitUntil(lambda: w._embedded_key is not None, timeout=timeout_ms)
    return w
