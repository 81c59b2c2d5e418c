"""The UnSAMv2 dock widget: click, turn the granularity dial, watch the labels follow.

A thin shell: layers become typed requests (:mod:`unsamv2_engine.protocol`), the engine runs
outside the GUI thread (:mod:`unsamv2_engine.client`; a separate engine process by default,
``UNSAMV2_ENGINE=thread`` for an in-process worker thread), and replies become layers. Replies
arrive on a background thread and are handed to the GUI thread through a Qt signal.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_unsamv2 import _layers as L
from napari_unsamv2 import _result_layers as R
from napari_unsamv2._form_rows import path_row
from napari_unsamv2._propagate_panel import PURPOSE as PROPAGATE
from napari_unsamv2._propagate_panel import PropagatePanel

if TYPE_CHECKING:
    import napari

PROMPTS_LAYER = "UnSAMv2 prompts"
PREVIEW_LAYER = "UnSAMv2 preview"
OBJECTS_LAYER = "UnSAMv2 objects"
DIAL_STEPS = 90  # slider 10..100 -> g 0.10..1.00
NUDGE = 0.05
REEMBED_DELAY_MS = 250  # quiet time after a contrast / data change before re-embedding
CHECKPOINT_CHOICE = "checkpoint file…"
LOCAL_ENGINE = "this computer"
SERVER_ENGINE = "server"
KEYS = {"granularity_up": ".", "granularity_down": ",", "commit": "Shift-Enter", "clear": "Shift-Backspace",
        "toggle_polarity": "n"}


class _Relay(QObject):
    """Carries engine replies from the reply thread to the GUI thread (queued connection)."""

    reply = Signal(object)


class UnSAMv2Widget(QWidget):
    """Dock widget. ``engine`` may be injected (tests); otherwise one is started on first use."""

    preview_updated = Signal(object)   # the Decoded reply shown in the preview layer
    model_loaded = Signal(object)
    sweep_added = Signal(list)         # the Labels layers of a sweep
    whole_image_added = Signal(list)   # the Labels layers of "segment all" / "build hierarchy"
    job_progress = Signal(object)      # each Progress of a whole-image job (a large image: one per tile)

    def __init__(self, napari_viewer: napari.Viewer, *, engine: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._engine = engine
        self._relay = _Relay()
        self._relay.reply.connect(self._on_reply)
        self._model_ready = False
        self._embedded_key: str | None = None
        self._embedding_key: str | None = None
        self._last_decoded: Any = None
        self._stale_before = 0  # preview replies to requests older than the last Clear are dropped
        self._pending: dict[int, str] = {}
        self._sweep_count = 0
        self._object_granularity: dict[int, float] = {}  # object id -> g, for propagation
        self._current_object = 1
        self._watched: set[int] = set()
        self._plane_memo: tuple | None = None  # ((id(data), leading), signature) of a lazy layer's plane
        self._reembed_timer = QTimer(self)
        self._reembed_timer.setSingleShot(True)
        self._reembed_timer.setInterval(REEMBED_DELAY_MS)
        self._reembed_timer.timeout.connect(self._ensure_embedding)
        self._build_ui()
        self._connect_viewer()
        self._bind_keys()

    # ================================================================== UI
    def _build_ui(self) -> None:
        from unsamv2_engine.weights import DEFAULT_MODEL, REGISTRY

        layout = QVBoxLayout(self)

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.engine_combo = QComboBox()
        self.engine_combo.addItems([LOCAL_ENGINE, SERVER_ENGINE])
        self.engine_combo.setToolTip("where the model runs: here, or on an 'unsamv2 serve' GPU server")
        form.addRow("engine", self.engine_combo)
        self.server_edit = QLineEdit(os.environ.get("UNSAMV2_SERVER", ""))
        self.server_edit.setPlaceholderText("ws://gpu-box:8765")
        form.addRow("server URL", self.server_edit)
        self.token_edit = QLineEdit(os.environ.get("UNSAMV2_TOKEN", ""))
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("the server's token (UNSAMV2_TOKEN)")
        form.addRow("token", self.token_edit)
        self.model_combo = QComboBox()
        self.model_combo.addItems(list(REGISTRY) + [CHECKPOINT_CHOICE])
        self.model_combo.setCurrentText(DEFAULT_MODEL)
        form.addRow("model", self.model_combo)
        self.checkpoint_edit = self._path_row(form, "checkpoint", "a SAM 2.1 or UnSAMv2 .pt file")
        self.adapter_edit = self._path_row(form, "adapter", "optional adapter .pt")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        form.addRow("device", self.device_combo)
        self.download_check = QCheckBox("download if missing")
        form.addRow("", self.download_check)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load_model)
        form.addRow(self.load_button)
        self.status_label = QLabel("no model loaded")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        self.restart_button = QPushButton("Restart engine")
        self.restart_button.setToolTip("the engine process ended: start a new one and load the model again")
        self.restart_button.clicked.connect(self.restart_engine)
        self.restart_button.setVisible(False)
        form.addRow(self.restart_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        form.addRow(self.progress_bar)
        layout.addWidget(model_box)

        seg_box = QGroupBox("Segment")
        seg = QFormLayout(seg_box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(lambda _: self._ensure_embedding())
        self.image_combo.currentIndexChanged.connect(lambda _: self._match_prompts_layer())
        seg.addRow("image", self.image_combo)
        dial_row = QHBoxLayout()
        self.dial = QSlider(Qt.Orientation.Horizontal)
        self.dial.setRange(10, 100)
        self.dial.setValue(50)
        self.dial.setToolTip(f"granularity: parts (0.1) to wholes (1.0); keys '{KEYS['granularity_down']}' "
                             f"and '{KEYS['granularity_up']}' nudge it")
        self.dial.valueChanged.connect(self._on_dial)
        self.dial_label = QLabel("0.50")
        dial_row.addWidget(self.dial)
        dial_row.addWidget(self.dial_label)
        seg.addRow("granularity", dial_row)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-10.0, 10.0)
        self.threshold_spin.setSingleStep(0.5)
        self.threshold_spin.setValue(0.0)
        self.threshold_spin.valueChanged.connect(lambda _: self.request_preview())
        seg.addRow("mask threshold", self.threshold_spin)
        self.m2m_check = QCheckBox("M2M refinement (second pass)")
        self.m2m_check.toggled.connect(lambda _: self.request_preview())
        seg.addRow("", self.m2m_check)
        buttons = QHBoxLayout()
        self.prompts_button = QPushButton("Prompts layer")
        self.prompts_button.clicked.connect(self.ensure_prompts_layer)
        self.commit_button = QPushButton("Commit (⇧⏎)")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear (⇧⌫)")
        self.clear_button.clicked.connect(self.clear)
        for b in (self.prompts_button, self.commit_button, self.clear_button):
            buttons.addWidget(b)
        seg.addRow(buttons)
        layout.addWidget(seg_box)

        sweep_box = QGroupBox("Sweep → hierarchy")
        sw = QFormLayout(sweep_box)
        self.sweep_edit = QLineEdit("0.1:1.0:10")
        self.sweep_edit.setToolTip("a list (0.2,0.5,1.0) or START:STOP:N")
        sw.addRow("granularities", self.sweep_edit)
        self.sweep_button = QPushButton("Sweep current prompt")
        self.sweep_button.clicked.connect(self.sweep)
        sw.addRow(self.sweep_button)
        layout.addWidget(sweep_box)

        whole_box = QGroupBox("Whole image")
        wh = QFormLayout(whole_box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(["cpu", "authors"])
        self.preset_combo.setToolTip("cpu: 16x16 points, no M2M; authors: 64x64 points, M2M (UnSAMv2's settings)")
        wh.addRow("preset", self.preset_combo)
        self.segment_all_button = QPushButton("Segment all at g")
        self.segment_all_button.clicked.connect(self.segment_all)
        self.hierarchy_button = QPushButton("Build hierarchy (granularities above)")
        self.hierarchy_button.clicked.connect(self.build_hierarchy)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_job)
        wh.addRow(self.segment_all_button)
        wh.addRow(self.hierarchy_button)
        wh.addRow(self.cancel_button)
        layout.addWidget(whole_box)

        from napari_unsamv2._finetune_panel import FinetunePanel

        self.finetune_panel = FinetunePanel(self._finetune_base, self._load_adapter, self._notify,
                                            server=self._finetune_server)
        layout.addWidget(self.finetune_panel)
        self.propagate_panel = PropagatePanel(self)
        self.propagate_panel.object_spin.valueChanged.connect(self._on_object_changed)
        self.image_combo.currentIndexChanged.connect(lambda _: self.propagate_panel.refresh_axes())
        layout.addWidget(self.propagate_panel)
        layout.addStretch(1)
        self.model_combo.currentTextChanged.connect(self._on_model_choice)
        self.engine_combo.currentTextChanged.connect(self._on_engine_choice)
        if self.server_edit.text():
            self.engine_combo.setCurrentText(SERVER_ENGINE)
        self._show_engine_choice(self.engine_combo.currentText())

    def _path_row(self, form: QFormLayout, name: str, placeholder: str) -> QLineEdit:
        return path_row(form, name, placeholder, lambda: QFileDialog.getOpenFileName(
            self, f"Choose {name}", "", "PyTorch checkpoints (*.pt *.pth)")[0])

    def _on_model_choice(self, text: str) -> None:
        self.checkpoint_edit.setEnabled(text == CHECKPOINT_CHOICE and not self.uses_server)

    @property
    def uses_server(self) -> bool:
        return self.engine_combo.currentText() == SERVER_ENGINE

    def _on_engine_choice(self, text: str) -> None:
        """Another engine from now on: the running one (and its model) is closed."""
        self._show_engine_choice(text)
        if self._engine is not None:
            self.close_engine()
            self.status_label.setText("no model loaded")

    def _show_engine_choice(self, text: str) -> None:
        """Server: URL and token rows on, model rows off (the server's operator chose the model)."""
        server = text == SERVER_ENGINE
        for widget in (self.server_edit, self.token_edit):
            widget.setEnabled(server)
        for widget in (self.model_combo, self.adapter_edit, self.device_combo, self.download_check):
            widget.setEnabled(not server)
        self._on_model_choice(self.model_combo.currentText())
        self.load_button.setText("Connect to server" if server else "Load model")
        self.finetune_panel.set_remote(server)

    # ================================================================== viewer wiring
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(lambda e: self._refresh_images())
        layers.events.removed.connect(lambda e: self._refresh_images())
        self.viewer.dims.events.current_step.connect(lambda e: self._ensure_embedding())
        self._refresh_images()

    def _bind_keys(self) -> None:
        bindings = {KEYS["granularity_up"]: lambda v: self.nudge(+NUDGE),
                    KEYS["granularity_down"]: lambda v: self.nudge(-NUDGE),
                    KEYS["commit"]: lambda v: self.commit(),
                    KEYS["clear"]: lambda v: self.clear()}
        for key, func in bindings.items():
            self.viewer.bind_key(key, func, overwrite=True)
        self._bound_keys = list(bindings)

    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _watch_layers(self) -> None:
        """Re-embed when the chosen layer's data or contrast limits change (debounced: a contrast slider
        fires many events; the embedding is computed once it rests).
        """
        for layer in self._image_layers():
            if id(layer) in self._watched:
                continue
            self._watched.add(id(layer))
            layer.events.contrast_limits.connect(self._on_layer_changed)
            layer.events.data.connect(self._on_layer_changed)

    def _on_layer_changed(self, event=None) -> None:
        source = getattr(event, "source", None)
        if source is not None and source is not self.image_layer():
            return
        self._plane_memo = None
        self._reembed_timer.start()

    def _refresh_images(self) -> None:
        self._watch_layers()
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self.propagate_panel.refresh_axes()
        self._ensure_embedding()

    def _plane(self, layer) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(leading indices of the plane shown now, spatial shape of the layer without its RGB axis)."""
        data = L.level0(layer)
        shape = tuple(int(s) for s in data.shape)
        leading = L.leading_indices(self.viewer.dims.current_step, len(shape), layer.rgb)
        return leading, shape[:-1] if layer.rgb else shape

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ================================================================== engine
    @property
    def engine(self):
        if self._engine is None:
            self._engine = self._start_engine()
        return self._engine

    def _start_engine(self):
        """An engine client: on the server of the URL field, or local (a process; ``UNSAMV2_ENGINE=thread``:
        a worker thread). Raises RemoteEngineError / RuntimeError with a message for the user.
        """
        import importlib.util

        from unsamv2_engine.client import EngineClient, ProcessTransport, RemoteTransport, ThreadTransport

        if self.uses_server:
            url = self.server_edit.text().strip()
            if not url:
                raise RuntimeError("give the server's URL (e.g. ws://gpu-box:8765), or choose 'this computer'")
            return EngineClient(RemoteTransport(url, self.token_edit.text().strip() or None))
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("sam2") is None:
            raise RuntimeError("torch and sam2 are not installed on this computer (light install): choose the "
                               "'server' engine and give the URL of an 'unsamv2 serve' machine, or install the "
                               "engine here with pip install 'napari-unsamv2[engine]'")
        mode = os.environ.get("UNSAMV2_ENGINE", "process")
        return EngineClient(ThreadTransport() if mode == "thread" else ProcessTransport())

    @property
    def engine_location(self) -> str:
        """Where the engine runs (status line): ``this computer`` or ``server ws://..., cuda:0``."""
        transport = getattr(self._engine, "_transport", None)
        return getattr(transport, "where", LOCAL_ENGINE)

    def _submit(self, request, purpose: str) -> None:
        self._pending[request.request_id] = purpose
        self.engine.submit(request, self._relay.reply.emit)

    def load_model(self) -> None:
        from unsamv2_engine import protocol as p

        choice = self.model_combo.currentText()
        checkpoint = self.checkpoint_edit.text().strip() if choice == CHECKPOINT_CHOICE else None
        if choice == CHECKPOINT_CHOICE and not checkpoint:
            self._notify("choose a checkpoint file first (or a model from the list)", "warning")
            return
        request = p.LoadModel(checkpoint=checkpoint, model_name=None if checkpoint else choice,
                              adapter=self.adapter_edit.text().strip() or None,
                              device=self.device_combo.currentText(), download=self.download_check.isChecked())
        self._model_ready = False
        self._embedded_key = self._embedding_key = None
        self.propagate_panel.forget_stack()
        if self._engine is not None and not getattr(getattr(self._engine, "_transport", None), "connected", True):
            self.close_engine()  # the connection was lost: this press reconnects
        try:
            _ = self.engine  # starts (or reconnects) the engine
        except Exception as exc:  # noqa: BLE001 - RemoteEngineError, missing torch: the message says what to do
            self._engine = None
            self._idle(f"error: {exc}")
            self._notify(str(exc), "error")
            return
        self._busy(f"connecting to {self.server_edit.text().strip()}…" if self.uses_server else
                   f"loading {checkpoint or choice}…")
        self._submit(request, "load")

    def _finetune_base(self) -> tuple[str | None, str]:
        """(base checkpoint path or registry name, device) for a fine-tuning run: the model chosen above."""
        choice = self.model_combo.currentText()
        base = self.checkpoint_edit.text().strip() if choice == CHECKPOINT_CHOICE else choice
        return base or None, self.device_combo.currentText()

    def _finetune_server(self) -> tuple[str, str | None] | None:
        """(URL, token) of the server engine for a fine-tuning run, or None with a local engine."""
        if not self.uses_server:
            return None
        return self.server_edit.text().strip(), self.token_edit.text().strip() or None

    def _load_adapter(self, path: str) -> None:
        """Load a freshly fine-tuned adapter on top of the chosen base model."""
        self.adapter_edit.setText(path)
        self._notify(f"fine-tuning finished: loading the adapter {path}", "info")
        self.load_model()

    def _ensure_embedding(self) -> None:
        from unsamv2_engine import protocol as p
        from unsamv2_engine.tiling.grid import wants_tiles

        layer = self.image_layer()
        if not self._model_ready or layer is None:
            return
        leading, shape = self._plane(layer)
        data = L.level0(layer)
        contrast = None if np.dtype(data.dtype) == np.uint8 else tuple(float(c) for c in layer.contrast_limits)
        # the file the layer came from: the engine reads a large plane from it itself (a local engine only) and
        # uses the IMAGE.embeddings.zarr beside it
        path = None if self.uses_server else getattr(layer.source, "path", None)
        from_file = L.file_plane(path, data, leading, layer.rgb) if path and wants_tiles(shape[-2:]) else None
        plane = None
        if from_file is not None:
            content = L.file_signature(*from_file)
        else:
            content, plane = self._plane_content(layer, data, leading)
        # what the model sees: the pixels and the intensity mapping (not only the layer and the plane)
        key = L.image_key(layer.name, id(layer), leading, content=content, contrast=contrast)
        if key in (self._embedded_key, self._embedding_key):
            if key == self._embedded_key:
                self.request_preview()
            return
        if plane is None and from_file is None:
            plane = L.plane_of(data, leading, layer.rgb)
        self._plane_memo = None  # the pixels go to the engine now: do not keep a copy here
        self._embedding_key = key
        h, w = shape[-2:]
        self._busy(f"preparing the large image {layer.name} ({w}x{h}, tiled)…" if wants_tiles((h, w)) else
                   f"computing the image embedding of {layer.name}…")
        self._submit(p.SetImage(key, None if plane is None else np.ascontiguousarray(plane), contrast_limits=contrast,
                                rgb=layer.rgb, image_path=str(path) if path and len(leading) <= 1 else None,
                                frame=int(leading[0]) if path and len(leading) == 1 else None), "embed")

    def _plane_content(self, layer, data, leading) -> tuple[str, np.ndarray | None]:
        """(content signature, the plane or None) of the plane at ``leading``. A numpy plane is hashed each time
        (a view: cheap); a lazy one (dask, zarr) is read once per data object and plane, not at every event.
        """
        if not L.is_lazy(data):
            plane = L.plane_of(data, leading, layer.rgb)
            return L.plane_signature(plane), plane
        memo_key = (id(data), tuple(leading))
        if self._plane_memo is not None and self._plane_memo[0] == memo_key:
            return self._plane_memo[1], None
        plane = L.plane_of(data, leading, layer.rgb)
        signature = L.plane_signature(plane)
        self._plane_memo = (memo_key, signature)
        return signature, plane

    @property
    def granularity(self) -> float:
        return self.dial.value() / 100.0

    def set_granularity(self, g: float) -> None:
        self.dial.setValue(int(round(min(max(g, 0.1), 1.0) * 100)))

    def nudge(self, delta: float) -> None:
        self.set_granularity(self.granularity + delta)

    def _on_dial(self, value: int) -> None:
        self.dial_label.setText(f"{value / 100:.2f}")
        self.request_preview()

    def prompt_points(self, layer) -> tuple[np.ndarray, list[str], list[int]] | None:
        """The prompts in ``layer``'s data coordinates ``[N, D]`` (D = its spatial ndim), their polarity
        and object ids ``[N]`` (layers without an ``object`` feature: all the current object); None if none.
        """
        points = self._prompts_layer()
        if layer is None or points is None or len(points.data) == 0:
            return None
        data = np.array([layer.world_to_data(points.data_to_world(pt)) for pt in points.data])
        spatial = L.spatial_ndim(len(L.level0(layer).shape), layer.rgb)
        features = points.features
        objects = [int(o) for o in features[L.OBJECT]] if L.OBJECT in features else \
            [self.propagate_panel.object_id] * len(data)
        return data[:, -spatial:], list(features[L.POLARITY]), objects

    def current_prompt(self) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
        """The current object's points on the plane shown now, as (points_xy, labels, leading)."""
        layer = self.image_layer()
        found = self.prompt_points(layer)
        if found is None:
            return None
        data, polarity, objects = found
        mine = np.asarray(objects) == self.propagate_panel.object_id
        leading = self._plane(layer)[0]
        xy, labels = L.prompt_from_points(data[mine], list(np.asarray(polarity, dtype=object)[mine]), leading)
        if not np.any(labels == 1):
            return None
        return xy, labels, leading

    def request_preview(self) -> None:
        from unsamv2_engine import protocol as p

        prompt = self.current_prompt()
        if self._embedded_key is None or prompt is None:
            return
        xy, labels, _ = prompt
        self._submit(p.Predict(self._embedded_key, xy, labels, self.granularity,
                               mask_threshold=self.threshold_spin.value(), m2m=self.m2m_check.isChecked(),
                               want_logits=False), "preview")

    # ================================================================== replies (GUI thread)
    def _on_reply(self, reply) -> None:
        """Turn one engine reply into layer updates; a failure here becomes a notification, never a crash."""
        try:
            self._handle_reply(reply)
        except Exception as exc:  # noqa: BLE001 - napari must survive any bug in the hand-over
            self._idle(None)
            self._notify(f"UnSAMv2 could not show the result: {type(exc).__name__}: {exc}", "error")

    def _handle_reply(self, reply) -> None:
        from unsamv2_engine import protocol as p
        from unsamv2_engine.client import ENGINE_DIED

        if isinstance(reply, p.Progress):
            if self._pending.get(reply.request_id) == PROPAGATE:
                self.propagate_panel.show_progress(reply)
            else:
                self._progress(reply)
            return
        purpose = self._pending.pop(reply.request_id, None)
        if isinstance(reply, p.Failure):
            if reply.kind == "ConnectionLost":
                self._connection_lost(reply)
            self._idle(f"error: {reply.message}" if purpose == "load" else None)
            if purpose == PROPAGATE:
                self.propagate_panel.job_failed(reply)
            if purpose == "whole":
                self._job_done("cancelled" if reply.kind == "Cancelled" else f"error: {reply.message}")
                if reply.kind == "Cancelled":
                    return
            if purpose == "embed":
                self._embedding_key = None
            if reply.kind == ENGINE_DIED:
                self._engine_died(reply)
                return
            self._notify(reply.message if reply.user_error else f"{reply.kind}: {reply.message}", "error")
        elif isinstance(reply, p.ModelLoaded):
            self._model_ready = True
            grain = "granularity module" if reply.has_granularity else "plain SAM 2.1: the dial picks among 3 masks"
            self._idle(f"{reply.label} on {reply.device} ({grain}); engine: {self.engine_location}")
            self.model_loaded.emit(reply)
            self._ensure_embedding()
        elif isinstance(reply, p.ImageEmbedded):
            if reply.image_key == self._embedding_key:
                self._embedded_key, self._embedding_key = reply.image_key, None
                self._idle(f"image ready: {reply.note}" if reply.tiled else
                           f"image ready ({reply.image_hw[1]}x{reply.image_hw[0]}, {reply.seconds:.1f} s)")
                self.request_preview()
        elif isinstance(reply, p.Decoded):
            if reply.image_key == self._embedded_key and reply.request_id >= self._stale_before:
                self._show_preview(reply)
        elif isinstance(reply, p.SweepDecoded):
            self._add_sweep(reply)
        elif isinstance(reply, p.Segmented):
            self._job_done(f"{len(reply.scores)} objects at g={reply.granularity:.2f} in {reply.seconds:.1f} s"
                           + _tiles_text(reply))
            self._add_segmented(reply)
        elif isinstance(reply, p.HierarchyBuilt):
            self._job_done(f"hierarchy of {len(reply.granularities)} levels, {len(reply.table)} objects "
                           f"in {reply.seconds:.1f} s" + _tiles_text(reply))
            self._add_hierarchy_reply(reply)
        elif isinstance(reply, p.Propagated):
            self.propagate_panel.show_result(reply)

    def _show_preview(self, reply) -> None:
        layer = self.image_layer()
        if layer is None:
            return
        self._last_decoded = reply
        leading, shape = self._plane(layer)
        if reply.box is None:
            preview = self._labels_layer(PREVIEW_LAYER, shape, layer, opacity=0.5)
            data = np.zeros(shape, np.uint8) if preview.data.shape != tuple(shape) else preview.data
            data[...] = 0
            data[tuple(leading)] = reply.mask.astype(np.uint8)
            preview.data = data
        else:
            # a large (tiled) image: the preview holds the reply's box of this plane only, placed by its
            # translate, so a dial move repaints the box, not the whole plane
            data, translate = R.box_on_plane(layer, leading, shape, reply.mask.astype(np.uint8), reply.box)
            existing = self.viewer.layers[PREVIEW_LAYER] if PREVIEW_LAYER in self.viewer.layers else None
            preview = existing if existing is not None and existing.data.ndim == data.ndim else \
                self._labels_layer(PREVIEW_LAYER, data.shape, layer, opacity=0.5)
            preview.data = data
            preview.translate = translate
        self.preview_updated.emit(reply)

    # ================================================================== actions
    def ensure_prompts_layer(self):
        """The prompts layer, created for the chosen image's dimensions (re-created if they changed)."""
        image = self.image_layer()
        ndim = L.spatial_ndim(len(L.level0(image).shape), image.rgb) if image is not None else 2
        layer = self._prompts_layer()
        if layer is not None and (image is None or layer.ndim == ndim):
            return layer
        if layer is not None:  # made for an image with other dimensions: its points cannot address this one
            self.viewer.layers.remove(layer)
        layer = self.viewer.add_points(
            np.zeros((0, ndim)), name=PROMPTS_LAYER, ndim=ndim, size=10, border_width=0.1,
            features={L.POLARITY: np.array([], dtype=object), L.OBJECT: np.array([], dtype=np.int64)},
            feature_defaults={L.POLARITY: L.POSITIVE, L.OBJECT: self.propagate_panel.object_id},
            face_color=L.POLARITY, face_color_cycle=[L.POLARITY_COLOURS[L.POSITIVE], L.POLARITY_COLOURS[L.NEGATIVE]],
            scale=image.scale[-ndim:] if image is not None else None,
            translate=image.translate[-ndim:] if image is not None else None,
        )
        layer.face_color_cycle_map = {L.POSITIVE: L.POLARITY_COLOURS[L.POSITIVE],
                                      L.NEGATIVE: L.POLARITY_COLOURS[L.NEGATIVE]}
        layer.mode = "add"
        layer.events.data.connect(self._on_points_changed)
        layer.bind_key(KEYS["toggle_polarity"], lambda lyr: self.toggle_polarity(), overwrite=True)
        return layer

    def _on_points_changed(self, event) -> None:
        # napari announces a change before making it ("adding", "removing"): decode only after it
        action = str(getattr(event, "action", "changed"))
        if not action.endswith(("ing", "ING")):
            self.request_preview()

    def _match_prompts_layer(self) -> None:
        """After the image choice changes: a prompts layer of other dimensions is replaced."""
        if self._prompts_layer() is not None:
            self.ensure_prompts_layer()

    def _prompts_layer(self):
        return self.viewer.layers[PROMPTS_LAYER] if PROMPTS_LAYER in self.viewer.layers else None

    def object_granularities(self) -> dict[int, float]:
        """Object id -> the g it is propagated at: the dial's value when it was last the current object
        (the current object: the dial's value now).
        """
        return {**self._object_granularity, self.propagate_panel.object_id: self.granularity}

    def _on_object_changed(self, object_id: int) -> None:
        """The next clicks belong to ``object_id``; the preview shows that object's points, and the dial
        shows its granularity (each object keeps its own).
        """
        self._object_granularity[self._current_object] = self.granularity
        self._current_object = int(object_id)
        if object_id in self._object_granularity:
            self.set_granularity(self._object_granularity[object_id])
        layer = self._prompts_layer()
        if layer is not None and L.OBJECT in layer.features:
            layer.feature_defaults = L.feature_defaults_with(layer.feature_defaults, **{L.OBJECT: int(object_id)})
        self.request_preview()

    def toggle_polarity(self) -> str:
        """Switch the polarity of the next clicks (and of the selected points)."""
        layer = self.ensure_prompts_layer()
        current = layer.feature_defaults[L.POLARITY][0]
        new = L.NEGATIVE if current == L.POSITIVE else L.POSITIVE
        layer.feature_defaults = L.feature_defaults_with(layer.feature_defaults, **{L.POLARITY: new})
        if layer.selected_data:
            feats = layer.features.copy()
            for i in layer.selected_data:
                feats.loc[i, L.POLARITY] = new
            layer.features = feats
            layer.refresh_colors()
            self.request_preview()
        self.status_label.setText(f"next clicks: {new}")
        return new

    def add_point(self, row: float, col: float, positive: bool = True) -> None:
        """Add a prompt at (row, col) of the current plane (what a click does; used by scripts/tests)."""
        layer = self.ensure_prompts_layer()
        image = self.image_layer()
        leading = self._plane(image)[0] if image else ()
        layer.feature_defaults = L.feature_defaults_with(layer.feature_defaults,
                                                         **{L.POLARITY: L.POSITIVE if positive else L.NEGATIVE})
        layer.add(np.array([[*leading, row, col]], dtype=float))
        layer.feature_defaults = L.feature_defaults_with(layer.feature_defaults, **{L.POLARITY: L.POSITIVE})

    def commit(self) -> int | None:
        """Paint the previewed object into the objects layer (undoable) with a features row."""
        reply, image = self._last_decoded, self.image_layer()
        if reply is None or image is None or reply.image_key != self._embedded_key or not reply.mask.any():
            self._notify("nothing to commit: click on an object first", "info")
            return None
        leading, shape = self._plane(image)
        objects = self._labels_layer(OBJECTS_LAYER, shape, image, dtype=np.uint32)
        label = int(objects.data.max()) + 1
        parent = L.parent_label(np.asarray(objects.data[L.box_index(leading, reply.box)]), reply.mask)
        objects.data_setitem(L.plane_indices(reply.mask, leading, reply.box), label)
        features = {k: list(v) for k, v in objects.features.to_dict("list").items()} if len(objects.features) else {}
        objects.features = L.append_row(features, {
            "index": label, "granularity": reply.granularity, "score": float(reply.score), "parent": parent,
            "area": int(reply.mask.sum()), "plane": ",".join(map(str, leading))})
        self.clear()
        return label

    def clear(self) -> None:
        from unsamv2_engine.protocol import next_request_id

        points = self._prompts_layer()
        if points is not None and len(points.data):
            points.data = np.zeros((0, points.ndim))
        self._stale_before = next_request_id()  # a decode still in flight must not repaint the preview
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers[PREVIEW_LAYER].data = np.zeros_like(self.viewer.layers[PREVIEW_LAYER].data)
        self._last_decoded = None

    def sweep(self) -> None:
        from unsamv2_engine import protocol as p

        try:
            granularities = L.parse_granularity_list(self.sweep_edit.text())
        except ValueError as exc:
            self._notify(f"granularities: {exc}", "warning")
            return
        prompt = self.current_prompt()
        if self._embedded_key is None or prompt is None:
            self._notify("load a model and click a positive point first", "info")
            return
        xy, labels, _ = prompt
        self._busy(f"sweeping {len(granularities)} granularities…")
        self._submit(p.SweepRequest(self._embedded_key, xy, labels, granularities,
                                    mask_threshold=self.threshold_spin.value(), m2m=self.m2m_check.isChecked(),
                                    nest=True),
                     "sweep")

    def _add_sweep(self, reply) -> None:
        """Show a sweep as one labels layer per level (nested by the engine: ``SweepRequest(nest=True)``).

        On a large (tiled) image the engine returns the levels over a box around the prompts: the layers then
        hold that box of the current plane only, placed on the image by their translate.
        """
        note = f"; {reply.note}" if reply.note else ""
        self._idle(f"sweep of {len(reply.granularities)} granularities in {reply.seconds:.2f} s{note}")
        self._sweep_count += 1
        layers = self._add_hierarchy_layers(reply.labels, reply.granularities, reply.table,
                                            f"sweep {self._sweep_count}", {"sweep": self._sweep_count},
                                            box=reply.box)
        if layers:
            self.sweep_added.emit(layers)

    def _add_hierarchy_layers(self, labels: np.ndarray, granularities, table, prefix: str, extra: dict,
                              box: tuple[int, int, int, int] | None = None) -> list:
        """One Labels layer per level on the current plane (:func:`._result_layers.hierarchy_layers`)."""
        image = self.image_layer()
        if image is None:
            return []
        leading, shape = self._plane(image)
        return R.hierarchy_layers(self.viewer, image, leading, shape, labels, granularities, table, prefix, extra,
                                  box=box)

    def _whole_image_settings(self) -> dict:
        return {"preset": self.preset_combo.currentText(), "mask_threshold": self.threshold_spin.value()}

    def segment_all(self) -> None:
        """Every object of the current image (plane) at the dial's granularity, in the background."""
        from unsamv2_engine import protocol as p

        if self._embedded_key is None:
            self._notify("load a model and choose an image first", "info")
            return
        self._start_job(f"segmenting everything at g={self.granularity:.2f}…")
        self._submit(p.SegmentAll(self._embedded_key, self.granularity, self._whole_image_settings()), "whole")

    def build_hierarchy(self) -> None:
        """Whole-image segmentation at every granularity of the sweep list, nested into levels."""
        from unsamv2_engine import protocol as p

        try:
            granularities = L.parse_granularity_list(self.sweep_edit.text())
        except ValueError as exc:
            self._notify(f"granularities: {exc}", "warning")
            return
        if self._embedded_key is None:
            self._notify("load a model and choose an image first", "info")
            return
        self._start_job(f"building a {len(granularities)}-level hierarchy…")
        self._submit(p.BuildHierarchy(self._embedded_key, granularities, self._whole_image_settings()), "whole")

    def cancel_job(self) -> None:
        if self._engine is not None:
            self._engine.cancel()
            self.status_label.setText("cancelling…")

    def _start_job(self, text: str) -> None:
        self._busy(text)
        self.cancel_button.setEnabled(True)
        self.segment_all_button.setEnabled(False)
        self.hierarchy_button.setEnabled(False)

    def _job_done(self, text: str) -> None:
        self._idle(text)
        self.cancel_button.setEnabled(False)
        self.segment_all_button.setEnabled(True)
        self.hierarchy_button.setEnabled(True)

    def _add_segmented(self, reply) -> None:
        image = self.image_layer()
        if image is None:
            return
        leading, shape = self._plane(image)
        self.whole_image_added.emit([R.segmented_layer(self.viewer, image, leading, shape, reply)])

    def _add_hierarchy_reply(self, reply) -> None:
        self._sweep_count += 1
        layers = self._add_hierarchy_layers(reply.labels, reply.granularities, reply.table,
                                            f"hierarchy {self._sweep_count}", {"whole_image": True})
        self.whole_image_added.emit(layers)

    # ================================================================== helpers
    def _labels_layer(self, name: str, shape, image, *, dtype=np.uint8, opacity: float = 0.7):
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == tuple(shape):
            return self.viewer.layers[name]
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        spatial = len(shape)
        layer = self.viewer.add_labels(np.zeros(shape, dtype), name=name, opacity=opacity,
                                       scale=image.scale[-spatial:], translate=image.translate[-spatial:])
        self.viewer.layers.selection.active = self._prompts_layer() or layer
        return layer

    def _busy(self, text: str) -> None:
        self.status_label.setText(text)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)

    def _idle(self, text: str | None) -> None:
        if text:
            self.status_label.setText(text)
        self.progress_bar.setVisible(False)

    def _progress(self, reply) -> None:
        if reply.total:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * reply.done / reply.total))
        # a large image is segmented tile by tile: one message per finished tile
        self.status_label.setText(f"tile {reply.done} of {reply.total} done…" if reply.stage == "tiles" else
                                  f"{reply.stage}…")
        self.job_progress.emit(reply)

    def _notify(self, message: str, level: str) -> None:
        from napari.utils import notifications

        {"error": notifications.show_error, "warning": notifications.show_warning,
         "info": notifications.show_info}[level](message)

    def _engine_died(self, reply) -> None:
        """The engine process ended: nothing it held is left; offer a restart (once per death)."""
        self._model_ready = False
        self._embedded_key = self._embedding_key = None
        self.propagate_panel.forget_stack()
        self._idle("the engine stopped: press 'Restart engine'")
        if self.restart_button.isHidden():
            self.restart_button.setVisible(True)
            self._notify(reply.message, "error")

    def restart_engine(self) -> None:
        """Close the (dead) engine, start a new one and load the chosen model again."""
        self.restart_button.setVisible(False)
        self.close_engine()
        self.load_model()
    def _connection_lost(self, reply) -> None:
        """The server went away: forget what it held; the next press of the button reconnects."""
        if not self._model_ready and self._engine is None:
            return
        self._model_ready = False
        self._embedded_key = self._embedding_key = None
        self.propagate_panel.forget_stack()
        self._job_done(f"error: {reply.message}")
        self.status_label.setText(f"{reply.message} — press '{self.load_button.text()}' to reconnect")

    def close_engine(self) -> None:
        self.finetune_panel.cancel()  # a run outlives no widget; it keeps its checkpoint for --resume
        self.propagate_panel.forget_stack()
        # the model goes with the engine: a later event must not start a fresh engine that has none
        self._model_ready = False
        self._embedded_key = self._embedding_key = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.close_engine()
        super().closeEvent(event)


def _tiles_text(reply) -> str:
    """What a tiled whole-image job covered: all tiles, or those finished before a cancel (their objects kept)."""
    if reply.tiles_total is None:
        return ""
    if reply.tiles_done < reply.tiles_total:
        return (f"; cancelled after {reply.tiles_done} of {reply.tiles_total} tiles: the objects of the finished "
                "tiles are kept")
    return f" ({reply.tiles_total} tiles)"
