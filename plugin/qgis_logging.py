"""Route stdlib ``logging`` of the plugin and its core to the QGIS message log.

The core only ever uses ``logging.getLogger(__name__)``; inside QGIS those loggers are children
of the plugin package's logger, so one handler on that logger sends everything to the
"Parcel Crop Classifier" tab of the Log Messages panel. ``QgsMessageLog.logMessage`` is
thread-safe, so records from Processing or task threads are fine.
"""

from __future__ import annotations

import logging

from qgis.core import Qgis, QgsMessageLog

from .paths import PACKAGE_NAME, PLUGIN_TITLE


class QgsMessageLogHandler(logging.Handler):
    """A logging handler writing to the QGIS message log under one tag."""

    def __init__(self, tag: str = PLUGIN_TITLE, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.tag = tag
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @staticmethod
    def qgis_level(levelno: int) -> Qgis.MessageLevel:
        if levelno >= logging.ERROR:
            return Qgis.Critical
        if levelno >= logging.WARNING:
            return Qgis.Warning
        return Qgis.Info

    def emit(self, record: logging.LogRecord) -> None:
        try:
            QgsMessageLog.logMessage(
                self.format(record), self.tag, self.qgis_level(record.levelno), False
            )
        except Exception:
            self.handleError(record)


def install(level: int = logging.INFO) -> QgsMessageLogHandler:
    """Attach a message-log handler to the plugin's root logger and return it for removal."""
    logger = logging.getLogger(PACKAGE_NAME)
    handler = QgsMessageLogHandler()
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler


def remove(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger(PACKAGE_NAME).removeHandler(handler)
