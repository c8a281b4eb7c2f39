"""The Diagnostics dialog: what this QGIS can run, on which device, and why.

The report is :func:`cropmodels.doctor.collect` (the same as ``python -m cropmodels doctor``)
plus what only QGIS knows. Collecting it imports torch and runs nvidia-smi, so it runs in a
:class:`QgsTask`; the dialog opens at once with the cheap part and fills in the rest.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QT_VERSION_STR, QCoreApplication
from qgis.PyQt.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from ..cropmodels import doctor
from ..cropmodels.deps import PIP
from . import deps_check
from .installer_dialog import INSTALL_TEXT, monospace_font
from .paths import PLUGIN_TITLE

LOG = logging.getLogger(__name__)


def tr(text: str) -> str:
    return QCoreApplication.translate("DiagnosticsDialog", text)


class DiagnosticsTask(QgsTask):
    """Runs :func:`doctor.collect` off the GUI thread; ``on_done(task)`` on the GUI thread."""

    def __init__(self, on_done: Callable[[DiagnosticsTask], None]) -> None:
        super().__init__(tr("Diagnostics: probing PyTorch and the GPU"),
                         QgsTask.CanCancel | QgsTask.CancelWithoutPrompt)  # fmt: skip
        self.on_done = on_done
        self.report: doctor.Report | None = None
        self.error = ""

    def run(self) -> bool:
        try:
            self.report = doctor.collect()
        except Exception as exc:  # the diagnosis must never be what fails
            LOG.exception("collecting the diagnostics failed")
            self.error = f"{type(exc).__name__}: {exc}"
        return self.report is not None

    def finished(self, result: bool) -> None:
        self.on_done(self)


def qgis_rows() -> list[tuple[str, str]]:
    """What only the QGIS process knows; cheap (no torch import)."""
    folder = deps_check.dependencies_dir()
    site = deps_check.site_dir()
    if str(site) in sys.path:
        state = "on sys.path"
    elif site.is_dir():
        state = "not on sys.path yet"
    else:
        state = "nothing installed yet"
    return [
        ("QGIS", Qgis.QGIS_VERSION),
        ("Qt", QT_VERSION_STR),
        ("Profile", QgsApplication.qgisSettingsDirPath()),
        ("Installed in", f"{folder} ({state})"),
    ]


class DiagnosticsDialog(QDialog):
    """The report, "Copy to clipboard", "Install dependencies…" and "Refresh"."""

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        open_installer: Callable[[], None] | None = None,
        run_in_background: bool = True,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Diagnostics — {}").format(PLUGIN_TITLE))
        self.resize(820, 560)
        self.open_installer = open_installer
        self.run_in_background = run_in_background
        self.task: DiagnosticsTask | None = None
        self.report: doctor.Report | None = None

        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setObjectName("report")
        self.text.setFont(monospace_font())
        self.buttons = QDialogButtonBox()
        self.copy_button = self.buttons.addButton(tr("Copy to clipboard"),
                                                  QDialogButtonBox.ActionRole)  # fmt: skip
        self.install_button = self.buttons.addButton(tr(INSTALL_TEXT), QDialogButtonBox.ActionRole)
        self.refresh_button = self.buttons.addButton(tr("Refresh"), QDialogButtonBox.ActionRole)
        close = self.buttons.addButton(QDialogButtonBox.Close)
        self.copy_button.setObjectName("copyButton")
        self.install_button.setObjectName("installButton")
        self.copy_button.clicked.connect(self.copy)
        self.install_button.clicked.connect(self._install)
        self.refresh_button.clicked.connect(self.refresh)
        close.clicked.connect(self.close)
        self.install_button.setEnabled(open_installer is not None)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.buttons)
        self.refresh()

    def report_text(self) -> str:
        return self.text.toPlainText()

    def _missing_rows(self) -> list[tuple[str, str]]:
        absent = deps_check.missing()
        pip_absent = [r for r in absent if r.source == PIP]
        self.install_button.setText(
            tr(INSTALL_TEXT) if pip_absent else tr("Change the PyTorch build…")
        )
        self.install_button.setDefault(bool(pip_absent))
        return [("Missing", deps_check.missing_message(absent))] if absent else []

    def refresh(self) -> None:
        if self.task is not None:
            return
        self.report = None
        probing = tr("Probing PyTorch and the GPU (importing torch can take a few seconds)…")
        rows = [*qgis_rows(), *self._missing_rows()]
        self.text.setPlainText(f"{doctor.format_rows(rows)}\n\n{probing}")
        self.refresh_button.setEnabled(False)
        task = DiagnosticsTask(self._done)
        self.task = task
        if self.run_in_background:
            QgsApplication.taskManager().addTask(task)
        else:
            task.finished(task.run())

    def _done(self, task: DiagnosticsTask) -> None:
        self.task = None
        if sip.isdeleted(self):
            return
        self.report = task.report
        rows = [*qgis_rows(), *self._missing_rows()]
        if task.report is not None:
            text = task.report.to_text(rows)
        else:
            text = f"{doctor.format_rows(rows)}\n\nDiagnostics failed: {task.error}"
        self.text.setPlainText(text)
        self.refresh_button.setEnabled(True)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.report_text())

    def _install(self) -> None:
        if self.open_installer is not None:
            self.open_installer()


__all__ = ["DiagnosticsDialog", "DiagnosticsTask", "qgis_rows"]
