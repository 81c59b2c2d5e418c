"""Dial move -> preview updated, in a real napari viewer (issue 4 benchmark).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_widget_latency.py

Builds a RANDOM-weight model (hiera-tiny by default; timings are the architecture's), opens a
1024x1024 image in napari, docks the widget with the engine in its own process (the default),
clicks once and then moves the dial 50 times, each time waiting until the preview layer shows
the mask for the new granularity. The latency includes the request, the decode in the engine
process, sending the full-resolution mask back and the layer refresh.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--engine", choices=["process", "thread"], default="process")
    args = parser.parse_args()

    import napari
    import torch
    from napari.qt import get_qapp

    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ProcessTransport, ThreadTransport
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint
    from unsamv2_engine.synth import generate_sample

    ckpt = save_checkpoint(build_model(args.size, seed=0), Path(tempfile.mkdtemp()) / "random.pt")
    image = generate_sample(0, modality="fluorescence", ndim="2", shape=(args.image_size, args.image_size)).image
    app = get_qapp()
    viewer = napari.Viewer()
    viewer.add_image(image, name="cells")
    transport = ProcessTransport() if args.engine == "process" else ThreadTransport()
    widget = UnSAMv2Widget(viewer, engine=EngineClient(transport))
    viewer.window.add_dock_widget(widget)
    widget.model_combo.setCurrentText(CHECKPOINT_CHOICE)
    widget.checkpoint_edit.setText(str(ckpt))
    widget.device_combo.setCurrentText("cpu")

    from qtpy.QtCore import QEventLoop, QTimer

    def wait(condition, timeout=300.0):
        """Block in Qt's own event loop (idle between events, as napari is), not in a busy loop that
        would steal a core from the engine.
        """
        end = time.time() + timeout
        while not condition():
            loop = QEventLoop()
            QTimer.singleShot(5, loop.quit)
            widget.preview_updated.connect(loop.quit)
            loop.exec()
            widget.preview_updated.disconnect(loop.quit)
            if time.time() > end:
                raise TimeoutError("no update")

    widget.load_model()
    wait(lambda: widget._embedded_key is not None)
    widget.add_point(args.image_size / 2, args.image_size / 2)
    wait(lambda: widget._last_decoded is not None)
    shown = []
    widget.preview_updated.connect(lambda reply: shown.append((time.perf_counter(), reply.granularity)))
    rng = np.random.default_rng(0)
    latencies = []
    for _ in range(args.moves):
        g = widget.granularity
        while abs(g - widget.granularity) < 1e-9:
            g = float(rng.integers(10, 101)) / 100
        start = time.perf_counter()
        widget.set_granularity(g)
        wait(lambda g=g: shown and abs(shown[-1][1] - g) < 1e-9)
        app.processEvents()  # the canvas repaint of the new preview
        latencies.append((time.perf_counter() - start) * 1000)
    widget.close_engine()
    viewer.close()

    lat = sorted(latencies)
    p50 = statistics.median(lat)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; RANDOM weights, hiera-{args.size}, {args.image_size}x{args.image_size}, "
          f"engine={args.engine}, {args.moves} moves")
    print("| measurement | value | target | verdict |\n|---|---:|---|:---:|")
    print(f"| dial move -> preview updated, p50 | {p50:.1f} ms | <= 150 ms | {'PASS' if p50 <= 150 else 'FAIL'} |")
    print(f"| dial move -> preview updated, p95 | {p95:.1f} ms | <= 300 ms | {'PASS' if p95 <= 300 else 'FAIL'} |")
    print(f"| min / max | {lat[0]:.1f} / {lat[-1]:.1f} ms | | |")


if __name__ == "__main__":
    main()
