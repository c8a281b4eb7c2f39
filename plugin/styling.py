"""The look of a classified parcel layer: classes in the model card's colours, confidence as
fill opacity, disagreements with the declared crop outlined in red.

One style, built from the card and the output's field names, serves three ways: applied to the
output layer when Processing loads it (:class:`ApplyStyle`, a layer post-processor, as
QuickOSM styles its outputs), saved as a QML file beside the output so that opening the file
later shows the same map, and stored as the default style inside a GeoPackage output.

Why these choices:

* categories on the predicted *code* (stable) labelled with the class *name*, in the card's
  order, so the legend reads like the model's nomenclature; parcels without a class (outside
  the stack, too small, cloudy...) fall in a last "No class (see status)" category drawn as a
  grey dashed outline, never as a guessed colour;
* the fill's alpha follows the confidence linearly from chance level (1 / number of classes:
  35% opaque) to certainty (opaque), so doubtful parcels look washed out, while an opaque
  outline in the class colour keeps the class legible over any background;
* with a declared-crop check, parcels whose prediction disagrees get a thick red outline, and
  the attribute table opens sorted by ``check_rank`` (the most suspicious first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProperty,
    QgsRendererCategory,
    QgsSimpleLineSymbolLayer,
    QgsSymbolLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtGui import QColor

from ..cropmodels.modelcard import ModelCard

LOG = logging.getLogger(__name__)

DISAGREE_OUTLINE = "#e31a1c"
NO_CLASS_OUTLINE = "#8c8c8c"
MIN_ALPHA = 90  # the fill at chance-level confidence (35% opaque): pale, the colour still legible
OUTLINE_MM = 0.5  # in the class colour, opaque: the class reads even where the fill is pale
DISAGREE_OUTLINE_MM = 0.9


def tr(text: str) -> str:
    return QCoreApplication.translate("CropStyle", text)


@dataclass(frozen=True)
class StyleFields:
    """Names of the output fields the style reads (after any renaming of clashes)."""

    crop_code: str = "crop_code"
    crop_class: str = "crop_class"
    confidence: str = "confidence"
    status: str = "status"
    agrees: str | None = None  # set when the declared crop was checked
    check_rank: str | None = None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def alpha_expression(confidence: str, n_classes: int) -> str:
    """Alpha 0-255: ``MIN_ALPHA`` at chance level (1 / n_classes) or below, 255 at 1."""
    chance = min(1.0 / max(n_classes, 1), 0.99)
    return f"scale_linear(coalesce({_quoted(confidence)}, 0), {chance:.6f}, 1, {MIN_ALPHA}, 255)"


def class_symbol(colour: str, fields: StyleFields, n_classes: int) -> QgsFillSymbol:
    """The class colour as an opaque outline and a fill whose opacity is the confidence; with
    a declaration check, a red outline on top where the prediction disagrees."""
    symbol = QgsFillSymbol.createSimple(
        {
            "color": colour,
            "outline_color": colour,
            "outline_width": str(OUTLINE_MM),
            "outline_width_unit": "MM",
        }
    )
    fill = symbol.symbolLayer(0)
    c = QColor(colour)
    alpha = alpha_expression(fields.confidence, n_classes)
    fill.setDataDefinedProperty(
        QgsSymbolLayer.PropertyFillColor,
        QgsProperty.fromExpression(f"color_rgba({c.red()}, {c.green()}, {c.blue()}, {alpha})"),
    )
    if fields.agrees:
        # Transparent unless the feature disagrees: a data-defined colour, not a data-defined
        # "enabled", because the legend draws enabled layers without evaluating it. A boolean
        # is compared with a boolean: in QGIS expressions false = 0 is false.
        line = QgsSimpleLineSymbolLayer(QColor(0, 0, 0, 0), DISAGREE_OUTLINE_MM)
        disagrees = f"coalesce({_quoted(fields.agrees)}, true) = false"
        line.setDataDefinedProperty(
            QgsSymbolLayer.PropertyStrokeColor,
            QgsProperty.fromExpression(f"if({disagrees}, '{DISAGREE_OUTLINE}', '0,0,0,0')"),
        )
        symbol.appendSymbolLayer(line)
    return symbol


def no_class_symbol() -> QgsFillSymbol:
    return QgsFillSymbol.createSimple(
        {
            "style": "no",
            "outline_color": NO_CLASS_OUTLINE,
            "outline_width": "0.4",
            "outline_width_unit": "MM",
            "outline_style": "dash",
        }
    )


def crop_renderer(card: ModelCard, fields: StyleFields) -> QgsCategorizedSymbolRenderer:
    """Categories by predicted class code, in the card's colours and names."""
    n = len(card.classes)
    categories = [
        QgsRendererCategory(c.code, class_symbol(c.colour, fields, n), c.name) for c in card.classes
    ]
    categories.append(QgsRendererCategory("", no_class_symbol(), tr("No class (see status)")))
    return QgsCategorizedSymbolRenderer(fields.crop_code, categories)


def apply_style(layer: QgsVectorLayer, card: ModelCard, fields: StyleFields) -> None:
    """Renderer, map tip and display expression on ``layer``."""
    layer.setRenderer(crop_renderer(card, fields))
    klass, conf, status = (_quoted(f) for f in (fields.crop_class, fields.confidence,
                                                  fields.status))  # fmt: skip
    layer.setDisplayExpression(
        f"coalesce({klass} || ' (' || round(100 * {conf}) || '%)', {status})"
    )
    tip = (
        f"<b>[% coalesce({klass}, 'no class') %]</b><br>"
        f"confidence [% round(100 * coalesce({conf}, 0)) %]%<br>status [% {status} %]"
    )
    if fields.agrees:
        tip += f"<br>agrees with the declaration: [% {_quoted(fields.agrees)} %]"
    layer.setMapTipTemplate(tip)
    if fields.check_rank:  # the attribute table opens with the parcels to check first
        config = layer.attributeTableConfig()
        config.setSortExpression(_quoted(fields.check_rank))
        config.setSortOrder(Qt.AscendingOrder)
        layer.setAttributeTableConfig(config)


def write_qml(
    path: str | Path, card: ModelCard, fields: StyleFields, template: QgsVectorLayer
) -> Path:
    """Save the style as a QML file; ``template`` is any polygon layer with the output's
    fields (a memory layer will do): the style is applied to it, then written."""
    apply_style(template, card, fields)
    message, ok = template.saveNamedStyle(str(path))
    if not ok:
        raise OSError(f"cannot write the style {path}: {message}")
    return Path(path)


class ApplyStyle(QgsProcessingLayerPostProcessorInterface):
    """Loads the saved QML onto the output layer once Processing has loaded it.

    Instances are kept in ``_alive`` until used: Processing holds only a C++ pointer.
    """

    _alive: set[ApplyStyle] = set()  # noqa: RUF012 - deliberately shared

    def __init__(self, qml: str, name: str) -> None:
        super().__init__()
        self.qml = qml
        self.name = name

    @classmethod
    def create(cls, qml: str, name: str) -> ApplyStyle:
        instance = cls(qml, name)
        cls._alive.add(instance)
        return instance

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        try:
            if isinstance(layer, QgsVectorLayer) and layer.isValid():
                message, ok = layer.loadNamedStyle(self.qml)
                if not ok:
                    feedback.reportError(tr("Could not style the output: {}").format(message))
                layer.setName(self.name)
                layer.triggerRepaint()
        finally:
            type(self)._alive.discard(self)
