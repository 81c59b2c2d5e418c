"""Open napari with the UnSAMv2 widget docked on an image or a sample (``unsamv2 napari``)."""

from __future__ import annotations

from typing import Any

SAMPLES = {"cells": "cells", "ihc": "ihc", "cell": "cell"}  # sample keys of napari.yaml


def launch(image: str | None = None, *, sample: str = "cells", checkpoint: str | None = None,
           model: str | None = None, adapter: str | None = None, device: str = "auto", download: bool = False,
           load: bool = True, show: bool = True) -> tuple[Any, Any]:
    """Create a viewer, add ``image`` (a path napari can open) or a bundled sample, dock the widget,
    and start loading the model (``checkpoint`` path, else registry ``model``). Returns (viewer, widget).
    """
    import napari

    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget

    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose one of {', '.join(SAMPLES)}")
    viewer = napari.Viewer(show=show)
    if image:
        viewer.open(image)
    else:
        viewer.open_sample("napari-unsamv2", SAMPLES[sample])
    widget = UnSAMv2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="UnSAMv2", area="right")
    if checkpoint:
        widget.model_combo.setCurrentText(CHECKPOINT_CHOICE)
        widget.checkpoint_edit.setText(checkpoint)
    elif model:
        widget.model_combo.setCurrentText(model)
    widget.adapter_edit.setText(adapter or "")
    widget.device_combo.setCurrentText(device)
    widget.download_check.setChecked(download)
    widget.ensure_prompts_layer()
    if load:
        widget.load_model()
    return viewer, widget


def run_from_args(args: Any) -> int:
    """``unsamv2 napari``: launch and run the Qt event loop until the window closes."""
    import napari

    launch(args.image, sample=args.sample, checkpoint=args.checkpoint, model=args.model, adapter=args.adapter,
           device=args.device, download=args.download, load=not args.no_load)
    napari.run()
    return 0
