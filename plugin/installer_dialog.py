"""Install torch and the other dependencies from inside QGIS: a dialog, a background task, and
the message-bar offer shown at load when something is missing.

The work is :class:`cropmodels.installer.Installer` (QGIS-free, tested with a real pip);
here it runs in a :class:`QgsTask` so QGIS stays usable for the minutes a CUDA torch takes to
download, with its output streamed to the dialog's log and the QGIS message log, a progress
bar, and Cancel (which stops pip).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.gui import QgsFileWidget, QgsMessageBar, QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, pyqtSignal
from qgis.PyQt.QtGui import QFont, QFontDatabase
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..cropmodels import deps
from ..cropmodels.deps import PIP, REQUIREMENTS, BuildChoice, Requirement, TorchBuild
from ..cropmodels.installer import Installer, InstallPlan, InstallResult
from . import deps_check
from .paths import PLUGIN_TITLE

LOG = logging.getLogger(__name__)

INSTALL_TEXT = "Install dependencies…"


def tr(text: str) -> str:
    return QCoreApplication.translate("InstallDialog", text)


def monospace_font() -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.FixedFont)
    font.setStyleHint(QFont.TypeWriter)
    return font


class InstallTask(QgsTask):
    """Runs an :class:`InstallPlan` off the GUI thread. Signals carry pip's lines and
    progress messages to the dialog (queued to the GUI thread); ``on_finished(result)`` runs
    on the GUI thread when the task ends, however it ends."""

    lineReceived = pyqtSignal(str)  # noqa: N815 - Qt naming
    stepChanged = pyqtSignal(float, str)  # noqa: N815

    def __init__(
        self, plan: InstallPlan, on_finished: Callable[[InstallResult], None] | None = None
    ) -> None:
        super().__init__(
            tr("Installing PyTorch ({}) for the Parcel Crop Classifier").format(plan.build.label),
            QgsTask.CanCancel | QgsTask.CancelWithoutPrompt,
        )
        self.plan = plan
        self.on_finished = on_finished
        self.result: InstallResult | None = None
        self.installer = Installer(plan, on_line=self._line, on_progress=self._progress)

    def _line(self, text: str) -> None:
        self.lineReceived.emit(text)

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(100.0 * fraction)
        self.stepChanged.emit(fraction, message)

    def run(self) -> bool:
        try:
            self.result = self.installer.run()
        except Exception as exc:  # a bug here must still end in a message, not a silent task
            LOG.exception("installing the dependencies failed")
            self.result = InstallResult(False, False, f"Unexpected error: {exc}", None)
        return self.result.ok

    def cancel(self) -> None:
        self.installer.cancel()
        super().cancel()

    def finished(self, result: bool) -> None:
        outcome = self.result or InstallResult(False, True, tr("Installation cancelled."))
        if outcome.ok:
            deps_check.activate()
            LOG.info("%s", outcome.message)
        elif outcome.cancelled:
            LOG.info("%s", outcome.message)
        else:
            LOG.error("%s", outcome.message)
        if self.on_finished is not None:
            self.on_finished(outcome)


class ProbeTask(QgsTask):
    """Asks nvidia-smi about the GPU and finds the Python interpreter (subprocesses, so off
    the GUI thread: a confused driver can keep nvidia-smi busy for seconds)."""

    def __init__(self, on_done: Callable[[ProbeTask], None]) -> None:
        super().__init__(tr("Detecting the GPU"), QgsTask.CanCancel | QgsTask.CancelWithoutPrompt)
        self.on_done = on_done
        self.smi: deps.NvidiaSmi | None = None
        self.smi_said = ""
        self.python: str | None = None
        self.python_error = ""

    def run(self) -> bool:
        self.smi, self.smi_said = deps.query_nvidia_smi()
        try:
            self.python = deps.find_python()
        except FileNotFoundError as exc:
            self.python_error = str(exc)
        return True

    def finished(self, result: bool) -> None:
        self.on_done(self)


class InstallDialog(QDialog):
    """Shows the torch build chosen from the GPU (changeable), an optional wheel folder for an
    offline installation, the exact command, pip's log and the outcome.

    ``nvidia_smi_text`` and ``python`` skip the background probe (tests pass a recorded
    nvidia-smi output); ``userbase`` defaults to the profile's dependencies folder.
    """

    installed = pyqtSignal(bool)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        nvidia_smi_text: str | None = None,
        python: str | None = None,
        userbase: Path | None = None,
        requirements: Sequence[Requirement] = REQUIREMENTS,
        platform: str = sys.platform,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Install dependencies — {}").format(PLUGIN_TITLE))
        self.setMinimumWidth(720)
        self.platform = platform
        self.requirements = tuple(requirements)
        self.userbase = userbase or deps_check.dependencies_dir()
        self.python = python
        self.python_error = ""
        self.recommended: BuildChoice | None = None
        self.task: InstallTask | None = None
        self.probe: ProbeTask | None = None
        self.last_result: InstallResult | None = None

        self.summary = QLabel(self._summary_text())
        self.summary.setWordWrap(True)
        self.python_label = QLabel(python or tr("looking for QGIS's Python interpreter…"))
        self.python_label.setWordWrap(True)
        self.folder_label = QLabel(str(self.userbase))
        self.folder_label.setTextInteractionFlags(self.folder_label.textInteractionFlags())
        self.gpu_label = QLabel(tr("detecting…"))
        self.gpu_label.setWordWrap(True)
        self.build_combo = QComboBox()
        self.build_combo.setObjectName("buildCombo")
        for build in deps.available_builds(platform):
            self.build_combo.addItem(build.label, build.key)
        self.build_reason = QLabel()
        self.build_reason.setWordWrap(True)
        self.wheel_dir = QgsFileWidget()
        self.wheel_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.wheel_dir.setDialogTitle(tr("Folder of wheels (offline installation)"))
        self.wheel_dir.setToolTip(
            tr(
                "Leave empty to download from PyPI and PyTorch's index. For a computer without "
                "internet: 'pip download' the command's packages elsewhere, copy the folder "
                "here."
            )
        )
        self.wheels_label = QLabel()
        self.wheels_label.setWordWrap(True)
        self.command = QPlainTextEdit()
        self.command.setReadOnly(True)
        self.command.setObjectName("command")
        self.command.setFont(monospace_font())
        self.command.setMaximumHeight(4 * self.command.fontMetrics().lineSpacing() + 12)
        form = QFormLayout()
        form.addRow(tr("Python"), self.python_label)
        form.addRow(tr("Install into"), self.folder_label)
        form.addRow(tr("GPU"), self.gpu_label)
        form.addRow(tr("PyTorch build"), self.build_combo)
        form.addRow("", self.build_reason)
        form.addRow(tr("Wheel folder (offline)"), self.wheel_dir)
        form.addRow("", self.wheels_label)
        form.addRow(tr("Command"), self.command)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setObjectName("status")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(20000)
        self.log.setFont(monospace_font())
        self.log.setMinimumHeight(180)

        self.buttons = QDialogButtonBox()
        self.install_button = self.buttons.addButton(tr("Install"), QDialogButtonBox.AcceptRole)
        self.cancel_button = self.buttons.addButton(tr("Cancel installation"),
                                                    QDialogButtonBox.ActionRole)  # fmt: skip
        self.close_button = self.buttons.addButton(QDialogButtonBox.Close)
        self.install_button.setObjectName("installButton")
        self.cancel_button.setObjectName("cancelButton")
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        self.cancel_button.setEnabled(False)

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.buttons)

        self.build_combo.currentIndexChanged.connect(self._update)
        self.wheel_dir.fileChanged.connect(self._wheel_dir_changed)
        if nvidia_smi_text is not None or python is not None:
            smi = deps.parse_nvidia_smi(nvidia_smi_text or "")
            said = f"nvidia-smi: {smi.describe()}" if smi else tr("no NVIDIA GPU found")
            self._apply_gpu(smi, said)
            if python is None:
                self._find_python_now()
        else:
            self.install_button.setEnabled(False)
            self.probe = ProbeTask(self._probe_done)
            QgsApplication.taskManager().addTask(self.probe)
        self._update()

    # -- state ----------------------------------------------------------------------------------

    def _summary_text(self) -> str:
        absent = deps.missing(deps.ALL_REQUIREMENTS)
        pip_absent = [r for r in absent if r.source == PIP]
        other = [r for r in absent if r.source != PIP]
        if pip_absent:
            text = tr("QGIS's Python cannot import {}. They are installed for this QGIS "
                      "profile only, beside (never over) the numpy and GDAL QGIS runs "
                      "on.").format(", ".join(r.name for r in pip_absent))  # fmt: skip
        else:
            text = tr("Everything the classifier needs can be imported. Install again to "
                      "change the PyTorch build (CPU or CUDA) or to repair it.")  # fmt: skip
        for r in other:
            text += f"\n{r.name}: {r.hint}."
        return text

    def _find_python_now(self) -> None:
        try:
            self.python = deps.find_python()
        except FileNotFoundError as exc:
            self.python_error = str(exc)

    def _probe_done(self, probe: ProbeTask) -> None:
        self.probe = None
        if sip.isdeleted(self):
            return
        self.python, self.python_error = probe.python, probe.python_error
        self._apply_gpu(probe.smi, probe.smi_said)
        self._update()

    def _apply_gpu(self, smi: deps.NvidiaSmi | None, said: str) -> None:
        self.gpu_label.setText(said)
        self.recommended = deps.recommend_build(smi, self.platform)
        index = self.build_combo.findData(self.recommended.build.key)
        for i in range(self.build_combo.count()):
            build = deps.build_by_key(self.build_combo.itemData(i))
            suffix = tr(" (recommended)") if i == index else ""
            self.build_combo.setItemText(i, build.label + suffix)
        if index >= 0:
            self.build_combo.setCurrentIndex(index)

    def selected_build(self) -> TorchBuild:
        return deps.build_by_key(self.build_combo.currentData())

    def selected_wheel_dir(self) -> Path | None:
        text = self.wheel_dir.filePath().strip()
        return Path(text) if text else None

    def plan(self) -> InstallPlan | None:
        if not self.python:
            return None
        return InstallPlan(self.python, self.userbase, self.selected_build(),
                           self.selected_wheel_dir(), self.requirements)  # fmt: skip

    def _wheel_dir_changed(self, _path: str = "") -> None:
        folder = self.selected_wheel_dir()
        if folder is None:
            self.wheels_label.setText("")
        else:
            found = deps.torch_wheels(folder)
            if not found:
                self.wheels_label.setText(
                    tr("No torch {} wheel in this folder.").format(deps.TORCH_VERSION)
                )
            else:
                self.wheels_label.setText(tr("torch wheels: {}").format(", ".join(found)))
                keys = set(found.values()) - {""}
                if keys and self.selected_build().key not in keys:
                    # The folder decides: the recommended build if it is there, else one it has.
                    best = self.recommended.build.key if self.recommended else ""
                    for key in [best] if best in keys else sorted(keys, reverse=True):
                        index = self.build_combo.findData(key)
                        if index >= 0:
                            self.build_combo.setCurrentIndex(index)
                            break
        self._update()

    def _update(self, *_args: object) -> None:
        build = self.selected_build()
        if self.recommended is not None and build == self.recommended.build:
            self.build_reason.setText(self.recommended.reason)
        elif self.recommended is not None:
            self.build_reason.setText(
                tr("Chosen by hand; recommended: {} ({})").format(
                    self.recommended.build.label, self.recommended.reason
                )
            )
        if self.python_error:
            self.python_label.setText(self.python_error)
        elif self.python:
            self.python_label.setText(self.python)
        plan = self.plan()
        self.command.setPlainText(plan.display_command() if plan else "")
        running = self.task is not None
        self.install_button.setEnabled(plan is not None and not running and self.probe is None)
        self.cancel_button.setEnabled(running)
        self.build_combo.setEnabled(not running)
        self.wheel_dir.setEnabled(not running)

    # -- actions --------------------------------------------------------------------------------

    def start(self, *, run_in_background: bool = True) -> InstallTask | None:
        """Start the installation; ``run_in_background=False`` runs it here and now (tests)."""
        plan = self.plan()
        if plan is None or self.task is not None:
            return None
        self.log.clear()
        self.progress.setValue(0)
        self.status.setText(tr("Installing {}…").format(plan.build.label))
        task = InstallTask(plan, self._finished)
        task.lineReceived.connect(self.log.appendPlainText)
        task.stepChanged.connect(self._step)
        self.task = task
        self._update()
        if run_in_background:
            QgsApplication.taskManager().addTask(task)
        else:
            task.finished(task.run())
        return task

    def cancel(self) -> None:
        if self.task is not None:
            self.status.setText(tr("Cancelling…"))
            self.task.cancel()

    def _step(self, fraction: float, message: str) -> None:
        self.progress.setValue(round(100 * fraction))
        self.status.setText(message)

    def _finished(self, result: InstallResult) -> None:
        self.task = None
        self.last_result = result
        if sip.isdeleted(self):
            return
        if result.ok:
            self.progress.setValue(100)
            if "torch" in sys.modules:  # a module is loaded once per process
                text = tr("{} PyTorch was already loaded in this QGIS session: restart QGIS to "
                          "use the new installation.").format(result.message)  # fmt: skip
            else:
                text = tr("{} The classifier can be used now; if an algorithm still reports a "
                          "missing package, restart QGIS.").format(result.message)  # fmt: skip
        else:
            text = result.message
        self.status.setText(text)
        self.summary.setText(self._summary_text())
        self._update()
        self.installed.emit(result.ok)


def offer_install(
    bar: QgsMessageBar, absent: Sequence[Requirement], open_installer: Callable[[], None]
) -> QgsMessageBarItem:
    """A message-bar entry naming what is missing, with an "Install dependencies…" button."""
    names = ", ".join(r.name for r in absent)
    item = QgsMessageBar.createMessage(
        PLUGIN_TITLE, tr("QGIS's Python cannot import {}: classification needs them.").format(names)
    )
    button = QPushButton(tr(INSTALL_TEXT))
    button.setObjectName("installDependenciesButton")
    button.clicked.connect(open_installer)
    item.layout().addWidget(button)
    bar.pushWidget(item, Qgis.Warning, 0)
    return item


def withdraw(bar: QgsMessageBar | None, item: QgsMessageBarItem | None) -> None:
    """Remove ``item`` from ``bar`` unless the user already closed it."""
    if bar is None or item is None or sip.isdeleted(item):
        return
    if item in bar.items():
        bar.popWidget(item)


__all__ = ["INSTALL_TEXT", "InstallDialog", "InstallTask", "offer_install", "withdraw"]
