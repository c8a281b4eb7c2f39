"""What the plugin shows about its dependencies: the message-bar offer at load when something
is missing, the Diagnostics dialog and the installer dialog (one of each, reused).

Kept out of ``main.py`` so that the plugin class only calls :meth:`offer_if_missing`,
:meth:`show_diagnostics` and :meth:`unload`.
"""

from __future__ import annotations

import logging

from qgis.core import Qgis
from qgis.gui import QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication

from ..cropmodels.deps import PIP
from . import deps_check
from .diagnostics_dialog import DiagnosticsDialog
from .installer_dialog import InstallDialog, offer_install, withdraw
from .paths import PLUGIN_TITLE

LOG = logging.getLogger(__name__)


def tr(text: str) -> str:
    return QCoreApplication.translate("DependencyUi", text)


class DependencyUi:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.notice: QgsMessageBarItem | None = None
        self.installer: InstallDialog | None = None
        self.diagnostics: DiagnosticsDialog | None = None

    def offer_if_missing(self) -> bool:
        """At load: if a package is missing, say so in the message bar, with an "Install
        dependencies…" button when the installer can install it (``find_spec`` only: nothing
        is imported, so this costs milliseconds)."""
        absent = deps_check.missing()
        if not absent:
            return False
        LOG.warning("%s", deps_check.missing_message(absent))
        pip_absent = [r for r in absent if r.source == PIP]
        if pip_absent:
            self.notice = offer_install(self.iface.messageBar(), absent, self.show_installer)
        else:  # only what comes with QGIS's distribution: no button, say where to get it
            self.iface.messageBar().pushMessage(
                PLUGIN_TITLE, deps_check.missing_message(absent), Qgis.Warning, 0
            )
        return True

    @staticmethod
    def _alive(dialog) -> bool:
        return dialog is not None and not sip.isdeleted(dialog)

    def show_installer(self) -> InstallDialog:
        if not self._alive(self.installer):
            self.installer = InstallDialog(self.iface.mainWindow())
            self.installer.installed.connect(self._installed)
        self.installer.show()
        self.installer.raise_()
        self.installer.activateWindow()
        return self.installer

    def show_diagnostics(self) -> DiagnosticsDialog:
        if not self._alive(self.diagnostics):
            self.diagnostics = DiagnosticsDialog(
                self.iface.mainWindow(), open_installer=self.show_installer
            )
        else:
            self.diagnostics.refresh()
        self.diagnostics.show()
        self.diagnostics.raise_()
        self.diagnostics.activateWindow()
        return self.diagnostics

    def _installed(self, ok: bool) -> None:
        if not ok:
            return
        withdraw(self.iface.messageBar(), self.notice)
        self.notice = None
        self.iface.messageBar().pushMessage(
            PLUGIN_TITLE, tr("Dependencies installed: the classifier is ready."), Qgis.Success, 10
        )
        if self._alive(self.diagnostics) and self.diagnostics.isVisible():
            self.diagnostics.refresh()

    def unload(self) -> None:
        withdraw(self.iface.messageBar(), self.notice)
        self.notice = None
        if self._alive(self.installer):
            if self.installer.task is not None:  # the plugin goes away: stop pip with it
                LOG.warning("the plugin is unloading: cancelling the installation")
                self.installer.task.on_finished = None
                self.installer.task.cancel()
            self.installer.close()
            self.installer.deleteLater()
        if self._alive(self.diagnostics):
            if self.diagnostics.task is not None:
                self.diagnostics.task.on_done = lambda task: None
            self.diagnostics.close()
            self.diagnostics.deleteLater()
        self.installer = self.diagnostics = None


__all__ = ["DependencyUi"]
