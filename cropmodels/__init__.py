"""QGIS-free core of the Parcel Crop Classifier.

Garnot, Landrieu, Giordano, Chehata, "Time-Space Tradeoff in Deep Learning Models for Crop
Classification on Satellite Multi-Spectral Image Time Series", IGARSS 2019.

Nothing here imports ``qgis``; heavy dependencies (torch) are imported by the modules that need
them, never at package import, so the plugin can load and explain what is missing without them.
Inside QGIS this package is ``<plugin folder>.cropmodels``, hence relative imports throughout.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

PAPER_REFERENCE = (
    "V. Sainte Fare Garnot, L. Landrieu, S. Giordano, N. Chehata, "
    '"Time-Space Tradeoff in Deep Learning Models for Crop Classification on Satellite '
    'Multi-Spectral Image Time Series", IGARSS 2019, pp. 6247-6250, '
    "doi:10.1109/IGARSS.2019.8900517"
)

# A library never configures logging for its users; it only makes sure an unconfigured
# application does not print "No handlers could be found".
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["PAPER_REFERENCE", "__version__"]
