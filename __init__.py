"""Parcel Crop Classifier: QGIS entry point.

QGIS imports this module at start-up for every installed plugin, so it stays tiny: the plugin
class (and with it torch, numpy, ...) is imported only when QGIS actually loads the plugin.
"""


def classFactory(iface):
    """Return the plugin instance; ``iface`` is None under qgis_process."""
    from .plugin.main import CropClassifierPlugin

    return CropClassifierPlugin(iface)
