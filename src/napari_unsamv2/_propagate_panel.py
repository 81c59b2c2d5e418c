"""The "Propagate through slices" panel of the dock widget (z-stacks and time-lapses).

Prompts are the points of the widget's prompts layer, each with an ``object`` feature (the object
id spin box sets it for the next clicks) beside its ``polarity``. *Propagate* sends every prompt of
the sub-stack through the current plane (:func:`napari_unsamv2._layers.object_prompts`, each object at
its own granularity: the widget's ``object_granularities()``) as one
:class:`unsamv2_engine.protocol.Propagate` request. The stack travels once per stack key; the engine
tracks the objects slice by slice in the background, sending progress, and its ``Propagated`` reply
fills the *UnSAMv2 propagated* labels layer.
Re-prompting a slice and pressing *Propagate* again recomputes the sub-stack from all prompts.

The panel holds no engine logic: layer data -> request and reply -> layer go through ``_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QSpinBox

from napari_unsamv2 import _layers as L
from napari_unsamv2._form_rows import job_rows

PROPAGATED_LAYER = "UnSAMv2 propagated"
PURPOSE = "propagate"  # the widget's pending-request purpose of Propagate requests
MAX_OBJECT_ID = 65535


@dataclass
class _Job:
    """Where the result of the running request goes: the image, its sub-stack and the settings sent."""

    request_id: int
    image_name: str
    image_id: int
    leading: tuple[int, ...]
    axis: int
    index: tuple[int | slice, ...]
    shape: tuple[int, ...]
    direction: str
    granularity: dict[int, float | None]  # object id -> g
    mask_threshold: float
    prompts: list


class PropagatePanel(QGroupBox):
    """Object id, axis, direction, Propagate / Cancel and a per-slice progress bar.

    ``host`` is the :class:`~napari_unsamv2._widget.UnSAMv2Widget`; the panel uses its ``viewer``,
    ``image_layer()``, ``prompt_points(image)``, ``_plane(image)``, ``granularity``,
    ``threshold_spin``, ``_submit(request, purpose)``, ``engine``, ``_labels_layer(...)`` and
    ``_notify(message, level)``. The widget routes the replies of ``PURPOSE`` requests to
    :meth:`show_progress`, :meth:`show_result` and :meth:`job_failed`.
    """

    propagated = Signal(object)  # the labels layer, after each Propagated reply (cancelled runs too)

    def __init__(self, host: Any) -> None:
        super().__init__("Propagate through slices")
        self._host = host
        self._job: _Job | None = None
        self._sent_key: str | None = None  # the stack the engine holds (it keeps one)
        self._build()

    def _build(self) -> None:
        form = QFormLayout(self)
        self.object_spin = QSpinBox()
        self.object_spin.setRange(1, MAX_OBJECT_ID)
        self.object_spin.setToolTip("the object the next clicks belong to (its label value)")
        form.addRow("object id", self.object_spin)
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip("the z or t axis to propagate along (4D layers: at the current index of the others)")
        form.addRow("axis", self.axis_combo)
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(["both", "forward", "backward"])
        self.direction_combo.setToolTip("both: from each object's first prompted slice to the end, then back to 0; "
                                        "forward: only towards the end; backward: from its last prompted slice to 0")
        form.addRow("direction", self.direction_combo)
        controls = job_rows(form, "Propagate", self.propagate, self.cancel)
        self.propagate_button, self.cancel_button = controls.start_button, controls.cancel_button
        self.progress_bar, self.status_label = controls.progress_bar, controls.status_label
        self.propagate_button.setToolTip("track every object of the prompts layer through the stack, each at its own g")

    # ------------------------------------------------------------------ state
    @property
    def object_id(self) -> int:
        return int(self.object_spin.value())

    @property
    def running(self) -> bool:
        return self._job is not None

    def forget_stack(self) -> None:
        """The engine lost its stacks (a new model): send the stack again next time."""
        self._sent_key = None

    def refresh_axes(self) -> None:
        """List the leading axes of the chosen image (last one preselected: z of a t,z,y,x layer)."""
        image = self._host.image_layer()
        axes = L.propagation_axes(len(L.level0(image).shape), image.rgb) if image is not None else ()
        current = self.axis_combo.currentData()
        labels = list(self._host.viewer.dims.axis_labels)
        offset = len(labels) - len(axes) - 2
        self.axis_combo.blockSignals(True)
        self.axis_combo.clear()
        for axis in axes:
            name = labels[offset + axis] if 0 <= offset + axis < len(labels) else str(axis)
            named = not str(name).lstrip("-").isdigit()  # napari's default labels are axis numbers
            self.axis_combo.addItem(f"axis {axis}" + (f" ({name})" if named else ""), axis)
        if axes:
            self.axis_combo.setCurrentIndex(axes.index(current) if current in axes else len(axes) - 1)
        self.axis_combo.blockSignals(False)
        self.axis_combo.setEnabled(len(axes) > 1)

    # ------------------------------------------------------------------ actions
    def propagate(self) -> int | None:
        """Send the prompts of the sub-stack through the current plane; returns the request id (or None,
        with a notification, when there is nothing to propagate).
        """
        from unsamv2_engine import protocol as p

        host = self._host
        if self.running:
            host._notify("a propagation is running: wait for it or cancel it", "info")
            return None
        image = host.image_layer()
        if image is None:
            host._notify("add a z-stack or time-lapse image layer and choose it above", "info")
            return None
        if not L.propagation_axes(len(L.level0(image).shape), image.rgb):
            host._notify(f"'{image.name}' is a single 2D image: Propagate needs a z-stack or time-lapse (a 3D or 4D "
                         f"layer). Segment a 2D image with clicks and Commit, or Segment all", "info")
            return None
        if image.multiscale:
            host._notify(f"'{image.name}' is a multiscale (pyramid) layer: open its full-resolution level as an "
                         f"ordinary layer to propagate through it", "warning")
            return None
        self.refresh_axes()
        axis = int(self.axis_combo.currentData())
        leading, shape = host._plane(image)
        found = host.prompt_points(image)
        try:
            if found is None:
                raise ValueError("no prompts: click the object on a slice first")
            prompts = L.object_prompts(*found, leading, axis, host.granularity, host.object_granularities())
        except ValueError as exc:
            host._notify(str(exc), "warning")
            return None
        index = L.substack_index(leading, axis)
        data = L.level0(image)  # a multiscale layer: full resolution; only the sub-stack is read
        key = L.stack_key(image.name, id(image), leading, axis, L.data_signature(data))
        stack = None if key == self._sent_key else np.ascontiguousarray(data[index])
        contrast = None if np.dtype(data.dtype) == np.uint8 else tuple(float(c) for c in image.contrast_limits)
        direction = self.direction_combo.currentText()
        threshold = float(host.threshold_spin.value())
        request = p.Propagate(key, prompts, stack=stack, axis=0, channel_axis=3 if image.rgb else None,
                              direction=direction, mask_threshold=threshold, contrast_limits=contrast)
        granularities = {pr.object_id: pr.granularity for pr in prompts}
        self._job = _Job(request.request_id, image.name, id(image), leading, axis, index, tuple(shape), direction,
                         granularities, threshold, prompts)
        self._sent_key = key
        at = ", ".join(f"{i}: g={g:.2f}" if g is not None else f"{i}" for i, g in granularities.items())
        self._set_running(True, f"propagating {len(granularities)} object(s) ({at})"
                                + ("" if stack is None else " (sending the stack)") + "…")
        try:
            host._submit(request, PURPOSE)
        except Exception as exc:  # noqa: BLE001 - e.g. a closed engine: say so, keep napari running
            self._job, self._sent_key = None, None
            self._set_running(False, f"error: {exc}")
            host._notify(f"could not start the propagation: {type(exc).__name__}: {exc}", "error")
            return None
        return request.request_id

    def cancel(self) -> None:
        """Stop the running propagation at its next slice (the engine still replies with what is done)."""
        if self.running:
            self._host.engine.cancel()
            self.status_label.setText("cancelling after this slice…")

    # ------------------------------------------------------------------ replies (GUI thread)
    def show_progress(self, reply: Any) -> None:
        if reply.total:
            self.progress_bar.setRange(0, int(reply.total))
            self.progress_bar.setValue(int(reply.done))
            self.status_label.setText(f"propagating: slice {reply.done}/{reply.total}")

    def job_failed(self, reply: Any) -> None:
        self._job = None
        self._sent_key = None  # the engine may not hold the stack: send it again next time
        self._set_running(False, f"error: {reply.message}")

    def show_result(self, reply: Any) -> Any:
        """Write the finished slices into the result layer, with features and metadata; returns the layer."""
        job, self._job = self._job, None
        n_done, n = int(np.count_nonzero(reply.frames_done)), len(reply.frames_done)
        if reply.cancelled:
            text = f"cancelled: {n_done} of {n} slices done (written); the other slices are unchanged"
        else:
            text = f"{len(reply.object_ids)} object(s) through {n} slices in {reply.seconds:.1f} s"
        self._set_running(False, text)
        if job is None or job.request_id != reply.request_id:
            return None
        host = self._host
        image = host.viewer.layers[job.image_name] if job.image_name in host.viewer.layers else None
        if image is None or id(image) != job.image_id:
            host._notify(f"the image '{job.image_name}' was removed or replaced: the propagation is not shown",
                         "warning")
            return None
        layer = host._labels_layer(PROPAGATED_LAYER, job.shape, image, dtype=np.uint32)
        data = L.write_propagated(np.asarray(layer.data), job.index, reply.labels, reply.frames_done, reply.axis)
        prompted: dict[int, list[int]] = {}
        for prompt in job.prompts:
            prompted.setdefault(prompt.object_id, []).append(prompt.frame)
        layer.features = L.propagation_features(reply.labels, reply.object_ids, reply.scores,
                                                job.granularity, prompted, reply.axis)
        layer.metadata = {"unsamv2_propagation": L.propagation_metadata(
            reply, leading=job.leading, axis=job.axis, direction=job.direction, granularity=job.granularity,
            mask_threshold=job.mask_threshold)}
        layer.data = data  # in place: this refreshes the view (and starts a new undo history)
        self.propagated.emit(layer)
        return layer

    def _set_running(self, running: bool, text: str) -> None:
        self.propagate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress_bar.setVisible(running)
        if running:
            self.progress_bar.setRange(0, 0)
        self.status_label.setText(text)
