"""Form rows the widget's panels share: a path field with a browse button, and the controls of a
background job (start, cancel, progress bar, status line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton


def path_row(form: QFormLayout, name: str, placeholder: str, choose: Callable[[], str]) -> QLineEdit:
    """A ``name`` row: a line edit and a "…" button that fills it with ``choose()`` (a file dialog;
    an empty string means cancelled).
    """
    row = QHBoxLayout()
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    browse = QPushButton("…")
    browse.setMaximumWidth(30)

    def pick() -> None:
        path = choose()
        if path:
            edit.setText(path)

    browse.clicked.connect(pick)
    row.addWidget(edit)
    row.addWidget(browse)
    form.addRow(name, row)
    return edit


@dataclass
class JobControls:
    """The widgets of :func:`job_rows`."""

    start_button: QPushButton
    cancel_button: QPushButton
    progress_bar: QProgressBar
    status_label: QLabel


def job_rows(form: QFormLayout, start_text: str, on_start: Callable[[], object],
             on_cancel: Callable[[], object]) -> JobControls:
    """Start and Cancel (disabled until a job runs) side by side, a hidden progress bar, a status line."""
    buttons = QHBoxLayout()
    start = QPushButton(start_text)
    start.clicked.connect(lambda: on_start())
    cancel = QPushButton("Cancel")
    cancel.setEnabled(False)
    cancel.clicked.connect(lambda: on_cancel())
    buttons.addWidget(start)
    buttons.addWidget(cancel)
    form.addRow(buttons)
    progress = QProgressBar()
    progress.setVisible(False)
    form.addRow(progress)
    status = QLabel("")
    status.setWordWrap(True)
    form.addRow(status)
    return JobControls(start, cancel, progress, status)
