"""The "Fine-tune on a folder…" panel of the dock widget.

It collects the options, runs :class:`napari_unsamv2._finetune_job.FinetuneJob` (a separate
process), shows the step, the loss and a progress bar, can cancel, and hands the finished adapter
to the widget, which loads it on top of the base model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLineEdit, QSpinBox

from napari_unsamv2._finetune_job import FinetuneJob, FinetuneOptions, JobResult
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
    has chosen, and its device. ``on_adapter(path)`` is called with the adapter of a finished run.
    """

    job_finished = Signal(object)  # JobResult

    def __init__(self, base_model: Callable[[], tuple[str | None, str]],
                 on_adapter: Callable[[str], None], notify: Callable[[str, str], None]) -> None:
        super().__init__("Fine-tune on a folder…")
        self._base_model = base_model
        self._on_adapter = on_adapter
        self._notify = notify
        self.job: FinetuneJob | None = None
        self._relay = _JobRelay()
        self._relay.event.connect(self._on_event)
        self._relay.finished.connect(self._on_finished)
        self.last_loss: float | None = None
        self._build()

    def _build(self) -> None:
        form = QFormLayout(self)
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

    def _folder_row(self, form: QFormLayout, name: str, placeholder: str) -> QLineEdit:
        return path_row(form, name, placeholder,
                        lambda: QFileDialog.getExistingDirectory(self, f"Choose the {name} folder"))

    # ------------------------------------------------------------------ actions
    def options(self) -> FinetuneOptions | None:
        """The run's options from the form, or None (with a notification) when something is missing."""
        images = self.images_edit.text().strip()
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

    def start(self, options: FinetuneOptions | None = None) -> FinetuneJob | None:
        """Start a run in a child process (``options`` default to the form's)."""
        if self.job is not None and self.job.running:
            self._notify("a fine-tuning run is already going; cancel it first", "info")
            return None
        options = options or self.options()
        if options is None:
            return None
        self.last_loss = None
        self.job = FinetuneJob(options, on_event=self._relay.event.emit, on_exit=self._relay.finished.emit)
        self.job.start()
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
        if result.status == "done" and result.adapter:
            self._on_adapter(result.adapter)
        elif result.status == "failed":
            self._notify(result.message, "error")
        self.job_finished.emit(result)
