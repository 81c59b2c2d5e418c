"""The "Fine-tune on a folder…" panel of the dock widget.

It collects the options, runs :class:`napari_unsamv2._finetune_job.FinetuneJob` (a separate
process), shows the step, the loss and a progress bar, can cancel, and hands the finished adapter
to the widget, which loads it on top of the base model.

With the widget's "server" engine the run is a :class:`~napari_unsamv2._finetune_job.RemoteFinetuneJob`
instead: the folders are paths on the server (inside its ``--data-root``), the server trains its own base
model, and the adapter stays there (the operator serves it with ``unsamv2 serve --adapter``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QLineEdit, QSpinBox

from napari_unsamv2._finetune_job import FinetuneJob, FinetuneOptions, JobResult, RemoteFinetuneJob
from napari_unsamv2._form_rows import job_rows, path_row

TRAINABLE_SETS = ("granularity", "decoder", "all")
DEFAULT_ADAPTER_NAME = "unsamv2_adapter.pt"


class _JobRelay(QObject):
    """Carries job events from the reader thread to the GUI thread."""

    event = Signal(dict)
    finished = Signal(object)


class FinetunePanel(QGroupBox):
    """Options, Start/Cancel, progress and loss of one fine-tuning run.

    ``base_model()`` returns ``(base, device)``: the checkpoint path or registry name the main widget
    has chosen, and its device. ``on_adapter(path)`` is called with the adapter of a finished local run.
    ``server()`` returns ``(url, token)`` while the widget's engine is a server (runs then go there), else None.
    """

    job_finished = Signal(object)  # JobResult

    def __init__(self, base_model: Callable[[], tuple[str | None, str]],
                 on_adapter: Callable[[str], None], notify: Callable[[str, str], None],
                 server: Callable[[], tuple[str, str | None] | None] = lambda: None) -> None:
        super().__init__("Fine-tune on a folder…")
        self._base_model = base_model
        self._server = server
        self._on_adapter = on_adapter
        self._notify = notify
        self.job: FinetuneJob | RemoteFinetuneJob | None = None
        self._relay = _JobRelay()
        self._relay.event.connect(self._on_event)
        self._relay.finished.connect(self._on_finished)
        self.last_loss: float | None = None
        self._build()

    def _build(self) -> None:
        form = QFormLayout(self)
        self.where_label = QLabel()
        self.where_label.setWordWrap(True)
        form.addRow(self.where_label)
        self.images_edit = self._folder_row(form, "images", "a folder of unlabeled images (.tif, .png, .jpg)")
        self.labels_edit = self._folder_row(form, "pseudo-labels", "optional: made first when empty")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText(f"default: <images>/{DEFAULT_ADAPTER_NAME}")
        form.addRow("adapter", self.output_edit)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(200)
        form.addRow("steps", self.steps_spin)
        self.trainable_combo = QComboBox()
        self.trainable_combo.addItems(TRAINABLE_SETS)
        self.trainable_combo.setToolTip("granularity: the 345,760 added parameters (the authors' recipe); "
                                        "decoder: the whole mask decoder; all: every parameter")
        form.addRow("train", self.trainable_combo)
        self.resume_check = QCheckBox("resume the last run of this adapter")
        form.addRow("", self.resume_check)
        controls = job_rows(form, "Start fine-tuning", self.start, self.cancel)
        self.start_button, self.cancel_button = controls.start_button, controls.cancel_button
        self.progress_bar, self.status_label = controls.progress_bar, controls.status_label
        self.set_remote(False)

    def set_remote(self, remote: bool) -> None:
        """Say where the run goes: on this computer, or on the server (the folders are then server paths)."""
        if remote:
            self.where_label.setText("runs on the server: type the folders as paths on the server, inside the "
                                     "folder it was started with (unsamv2 serve --data-root DIR); the adapter is "
                                     "written there")
            self.images_edit.setPlaceholderText("on the server, e.g. lab/images (relative to its data root)")
        else:
            self.where_label.setText("runs on this computer, in a separate process")
            self.images_edit.setPlaceholderText("a folder of unlabeled images (.tif, .png, .jpg)")

    def _folder_row(self, form: QFormLayout, name: str, placeholder: str) -> QLineEdit:
        return path_row(form, name, placeholder,
                        lambda: QFileDialog.getExistingDirectory(self, f"Choose the {name} folder"))

    # ------------------------------------------------------------------ actions
    def options(self) -> FinetuneOptions | None:
        """The run's options from the form, or None (with a notification) when something is missing."""
        images = self.images_edit.text().strip()
        if self._server() is not None:  # server paths: checked by the server, inside its data root
            if not images:
                self._notify("type the images folder as a path on the server (inside its --data-root)", "warning")
                return None
            output = self.output_edit.text().strip() or f"{images.rstrip('/')}/{DEFAULT_ADAPTER_NAME}"
            return FinetuneOptions(images=images, base="(the server's model)", output=output,
                                   pseudo_labels=self.labels_edit.text().strip() or None,
                                   max_steps=self.steps_spin.value(), trainable=self.trainable_combo.currentText(),
                                   device="(the server's)",
                                   extra=("--resume",) if self.resume_check.isChecked() else ())
        if not images or not Path(images).is_dir():
            self._notify("choose the folder of images to fine-tune on", "warning")
            return None
        base, device = self._base_model()
        if not base:
            self._notify("choose the base model (a registry model or a checkpoint file) above", "warning")
            return None
        output = self.output_edit.text().strip() or str(Path(images) / DEFAULT_ADAPTER_NAME)
        labels = self.labels_edit.text().strip() or None
        extra = ("--resume",) if self.resume_check.isChecked() else ()
        return FinetuneOptions(images=images, base=base, output=output, pseudo_labels=labels,
                               max_steps=self.steps_spin.value(), trainable=self.trainable_combo.currentText(),
                               device=device, extra=extra)

    def start(self, options: FinetuneOptions | None = None) -> FinetuneJob | RemoteFinetuneJob | None:
        """Start a run in a child process, or on the server (``options`` default to the form's)."""
        if self.job is not None and self.job.running:
            self._notify("a fine-tuning run is already going; cancel it first", "info")
            return None
        options = options or self.options()
        if options is None:
            return None
        self.last_loss = None
        server = self._server()
        if server is not None:
            self.job = RemoteFinetuneJob(options, *server, on_event=self._relay.event.emit,
                                         on_exit=self._relay.finished.emit)
        else:
            self.job = FinetuneJob(options, on_event=self._relay.event.emit, on_exit=self._relay.finished.emit)
        try:
            self.job.start()
        except Exception as exc:  # noqa: BLE001 - RemoteEngineError: no server, wrong token (the message says)
            self.job = None
            self._notify(f"fine-tuning not started: {exc}", "error")
            return None
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status_label.setText(f"starting: {Path(options.images).name} → {Path(options.output).name}")
        return self.job

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status_label.setText("cancelling… (saving a checkpoint)")

    # ------------------------------------------------------------------ events (GUI thread)
    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "step":
            step, total = int(event.get("step", 0)), int(event.get("max_steps", 0) or 0)
            self.last_loss = float(event["loss"]) if event.get("loss") is not None else self.last_loss
            if total:
                self.progress_bar.setRange(0, total)
                self.progress_bar.setValue(step)
            loss = f", loss {self.last_loss:.4f}" if self.last_loss is not None else ""
            self.status_label.setText(f"step {step}/{total}{loss}")
        elif kind == "stage":
            done, total = event.get("done"), event.get("total")
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                self.progress_bar.setRange(0, total)
                self.progress_bar.setValue(done)
                self.status_label.setText(f"{event.get('stage', 'working')}: {done}/{total} {event.get('image', '')}")
            else:
                self.progress_bar.setRange(0, 0)
                self.status_label.setText(str(event.get("message") or event.get("stage") or "working…"))
        elif kind == "val":
            values = ", ".join(f"{k} {v:.3f}" for k, v in event.items() if isinstance(v, float))
            self.status_label.setText(f"validation: {values}")

    def _on_finished(self, result: JobResult) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        self.status_label.setText(result.message)
        if result.status == "done" and result.adapter and isinstance(self.job, RemoteFinetuneJob):
            self._notify(f"{result.message}; to use it, serve it: unsamv2 serve ... --adapter {result.adapter}",
                         "info")
        elif result.status == "done" and result.adapter:
            self._on_adapter(result.adapter)
        elif result.status == "failed":
            self._notify(result.message, "error")
        self.job_finished.emit(result)
