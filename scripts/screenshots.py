"""Take the plugin walk-through screenshots (docs/images/plugin_*.png) in a real napari window.

Run under a virtual display:  xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py
With no checkpoint given it builds a hiera-tiny model with RANDOM weights (no weights can be
downloaded where the docs are built): the widget, layers and flow are real, the masks are not
meaningful. Pass --checkpoint to take them with real weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(app, condition, timeout=120.0) -> None:
    end = time.time() + timeout
    while not condition():
        app.processEvents()
        if time.time() > end:
            raise TimeoutError("the widget did not update in time")
        time.sleep(0.02)


def shoot(viewer, app, name: str) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    from imageio.v3 import imwrite

    imwrite(OUT / name, viewer.screenshot(canvas_only=False, flash=False))
    print("wrote", OUT / name)


def shoot_propagation(viewer, widget, app) -> None:
    """A synthetic z-stack, one click on its middle slice, Propagate: plugin_6_propagate.png."""
    import numpy as np

    from unsamv2_engine.synth import generate_sample

    sample = generate_sample(seed=0, modality="fluorescence", ndim="3", shape=(5, 256, 256))
    viewer.add_image(sample.image, name="z-stack", colormap="gray")
    widget.image_combo.setCurrentText("z-stack")
    viewer.dims.set_current_step(0, 2)
    yy, xx = np.nonzero(sample.labels["cell"][2])
    widget.clear()
    viewer.layers.remove("UnSAMv2 prompts")  # made for the 2D sample: the next click makes a 3D one
    widget.set_granularity(0.8)
    widget.add_point(float(np.median(yy)), float(np.median(xx)))
    results = []
    widget.propagate_panel.propagated.connect(results.append)
    widget.propagate_panel.propagate()
    wait(app, lambda: bool(results), timeout=600)
    viewer.dims.set_current_step(0, 3)  # a tracked slice
    wait(app, lambda: widget._embedding_key is None)  # the slice's own embedding (for clicks) is ready
    for layer in list(viewer.layers):
        if layer.name not in ("z-stack", "UnSAMv2 propagated", "UnSAMv2 prompts"):
            viewer.layers.remove(layer)
    viewer.layers["UnSAMv2 propagated"].opacity = 0.5
    viewer.reset_view()
    shoot(viewer, app, "plugin_6_propagate.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--only-propagation", action="store_true",
                        help="take only plugin_6_propagate.png (the other screenshots are left as they are)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from unsamv2_engine.model import build_model
        from unsamv2_engine.model.checkpoint import save_checkpoint

        checkpoint = str(save_checkpoint(build_model("tiny", seed=0), Path(tempfile.mkdtemp()) / "random_tiny.pt"))

    import os

    os.environ.setdefault("UNSAMV2_ENGINE", "process")
    from napari.qt import get_qapp

    from napari_unsamv2.launch import launch

    viewer, widget = launch(sample="cells", checkpoint=checkpoint, device="cpu")
    app = get_qapp()
    viewer.window._qt_window.resize(1500, 950)
    wait(app, lambda: widget._embedded_key is not None)
    if args.only_propagation:
        shoot_propagation(viewer, widget, app)
        widget.close_engine()
        viewer.close()
        return
    shoot(viewer, app, "plugin_1_loaded.png")

    widget.add_point(256, 250)
    widget.set_granularity(0.3)
    wait(app, lambda: widget._last_decoded is not None and abs(widget._last_decoded.granularity - 0.3) < 1e-6)
    shoot(viewer, app, "plugin_2_click_g030.png")
    widget.set_granularity(0.9)
    wait(app, lambda: abs(widget._last_decoded.granularity - 0.9) < 1e-6)
    shoot(viewer, app, "plugin_3_dial_g090.png")

    widget.commit()
    widget.add_point(256, 250)
    widget.sweep_edit.setText("0.2,0.5,1.0")
    done = []
    widget.sweep_added.connect(done.append)
    widget.sweep()
    wait(app, lambda: bool(done))
    shoot(viewer, app, "plugin_4_sweep.png")

    for layer in list(viewer.layers):
        if layer.name.startswith(("sweep", "UnSAMv2 objects")):
            viewer.layers.remove(layer)
    widget.clear()
    widget.set_granularity(0.5)
    added = []
    widget.whole_image_added.connect(added.append)
    widget.segment_all()
    wait(app, lambda: bool(added), timeout=600)
    shoot(viewer, app, "plugin_5_segment_all.png")
    for layer in list(viewer.layers):
        if layer.name.startswith("all g="):
            viewer.layers.remove(layer)
    shoot_propagation(viewer, widget, app)
    widget.close_engine()
    viewer.close()


if __name__ == "__main__":
    main()
