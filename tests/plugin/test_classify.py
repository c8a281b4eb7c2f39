"""``cropclassifier:classify_parcels`` in headless QGIS on the real Flanders sample."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    NULL,
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsFeature,
    QgsFeatureRequest,
    QgsGeometry,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

from parcel_crop_classifier.cropmodels.modelcard import read_card
from parcel_crop_classifier.cropmodels.predict import Classifier, PredictConfig
from parcel_crop_classifier.plugin.styling import StyleFields, apply_style
from sample_data import PARCELS, PARCELS_WGS84, STACK

ALG = "cropclassifier:classify_parcels"
OUT_FIELDS = ["crop_code_pred", "crop_class", "confidence", "margin", "p_maize",
              "p_other_leguminous_crops", "p_permanent_grass_crops", "n_clear_dates",
              "status"]  # fmt: skip


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(params: dict, feedback: QgsProcessingFeedback | None = None, context=None) -> dict:
    import processing

    return processing.run(ALG, params, feedback=feedback, context=context)


def layer_of(path: str | Path) -> QgsVectorLayer:
    layer = QgsVectorLayer(str(path), "out", "ogr")
    assert layer.isValid(), path
    return layer


def plain(value):
    """QGIS NULL as None."""
    return None if value == NULL else value


def rows(layer: QgsVectorLayer, order_by: str | None = None) -> list[dict]:
    names = layer.fields().names()
    request = QgsFeatureRequest()
    if order_by:
        request.addOrderBy(order_by)
    return [
        {n: plain(v) for n, v in zip(names, f.attributes(), strict=True)}
        for f in layer.getFeatures(request)
    ]


@pytest.fixture(scope="module")
def expected(sample_model) -> dict[int, np.ndarray]:
    """Probabilities by parcel position from the core, straight."""
    classifier = Classifier.load(sample_model, device="cpu")
    return {
        p.index: p.probabilities
        for p in classifier.classify(PARCELS, STACK, PredictConfig(device="cpu"))
    }


def test_classify_writes_every_input_field_and_the_predictions(
    provider, sample_model, expected, tmp_path
):
    before = digest(PARCELS)
    out = tmp_path / "classified.gpkg"
    result = run({"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "OUTPUT": str(out)})  # fmt: skip
    assert digest(PARCELS) == before  # the input is never modified
    assert result["N_CLASSIFIED"] == 18
    assert result["N_UNCLASSIFIED"] == 0
    assert result["DEVICE_USED"] == "cpu"
    layer = layer_of(result["OUTPUT"])
    source = layer_of(PARCELS)
    input_names = source.fields().names()
    assert layer.fields().names() == ["fid", *input_names[1:], *OUT_FIELDS]
    card = read_card(sample_model)
    got = rows(layer)
    assert len(got) == 18
    for position, (row, original) in enumerate(zip(got, rows(source), strict=True)):
        for name in input_names[1:]:  # the declared crop_code keeps its name and value
            assert row[name] == original[name]
        p = np.array([row[f] for f in OUT_FIELDS[4:7]])
        np.testing.assert_allclose(p, expected[position], atol=1e-5)
        k = int(np.argmax(p))
        assert row["crop_code_pred"] == card.classes[k].code
        assert row["crop_class"] == card.classes[k].name
        assert row["confidence"] == pytest.approx(p.max(), abs=1e-6)
        assert row["margin"] == pytest.approx(np.sort(p)[-1] - np.sort(p)[-2], abs=2e-6)
        assert row["status"] == "ok"
        assert 0 < row["n_clear_dates"] <= 118
    # styled: the QML beside the file and the GeoPackage's default style
    qml = Path(result["STYLE"])
    assert qml == out.with_suffix(".qml")
    assert qml.is_file()
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "crop_code_pred"
    categories = renderer.categories()
    assert [c.label() for c in categories] == [*card.class_names, "No class (see status)"]
    assert [int(c.value()) for c in categories[:-1]] == card.class_codes  # QML keeps text
    for category, cls in zip(categories, card.classes, strict=False):
        assert category.symbol().color().name() == cls.colour
    symbol = categories[0].symbol()
    fill = symbol.symbolLayer(0).dataDefinedProperties()
    assert "confidence" in fill.property(fill.propertyKeys()[0]).expressionString()
    from_qml = QgsVectorLayer("Polygon", "x", "memory")
    assert from_qml.loadNamedStyle(str(qml))[1]
    assert [c.label() for c in from_qml.renderer().categories()] == [c.label() for c in categories]


def test_declared_field_flags_disagreements_suspicious_first(provider, sample_model, tmp_path):
    out = tmp_path / "checked.gpkg"
    result = run({"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "DECLARED_FIELD": "crop_code", "OUTPUT": str(out)})  # fmt: skip
    layer = layer_of(result["OUTPUT"])
    assert layer.fields().names()[-2:] == ["agrees", "check_rank"]
    got = rows(layer, order_by="check_rank")
    assert [r["check_rank"] for r in got] == list(range(1, 19))
    agrees = [r["agrees"] for r in got]
    n_bad = agrees.count(False)
    n_good = agrees.count(True)
    assert result["N_DISAGREEING"] == n_bad
    assert n_bad + n_good == 16  # cabbages and potatoes: crops the model does not know
    assert agrees == [False] * n_bad + [True] * n_good + [None, None]
    for row in got:
        if row["agrees"] is not None:
            assert row["agrees"] == (row["crop_code"] == row["crop_code_pred"])
    confidence = [r["confidence"] for r in got]
    assert confidence[:n_bad] == sorted(confidence[:n_bad], reverse=True)
    assert confidence[n_bad : n_bad + n_good] == sorted(confidence[n_bad : n_bad + n_good])
    categories = layer.renderer().categories()  # keep them: the symbols belong to them
    symbol = categories[0].symbol()
    line = symbol.symbolLayer(1)  # the red outline, drawn where the prediction disagrees
    stroke = line.dataDefinedProperties().property(line.PropertyStrokeColor)
    assert 'coalesce("agrees", true) = false' in stroke.expressionString()
    assert layer.attributeTableConfig().sortExpression() == '"check_rank"'
    # a memory output is also written in that order
    memory = run({"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "DECLARED_FIELD": "crop_code",
                  "OUTPUT": "TEMPORARY_OUTPUT"})["OUTPUT"]  # fmt: skip
    assert [r["check_rank"] for r in rows(memory)] == list(range(1, 19))


def test_bad_parcels_get_a_status_and_no_class(provider, sample_model, tmp_path):
    source = layer_of(PARCELS)
    layer = QgsVectorLayer(f"Polygon?crs={source.crs().authid()}", "parcels", "memory")
    layer.dataProvider().addAttributes(source.fields().toList()[1:])
    layer.updateFields()
    features = []
    for f in list(source.getFeatures())[:3]:
        g = QgsFeature(layer.fields())
        g.setAttributes(f.attributes()[1:])
        g.setGeometry(f.geometry())
        features.append(g)
    for wkt in (
        "POLYGON((400000 5600000, 400100 5600000, 400100 5600100, 400000 5600000))",  # outside
        "POLYGON((501461 5629141, 501463 5629141, 501463 5629143, 501461 5629141))",  # < pixel
        "POLYGON((501400 5629100, 501600 5629300, 501600 5629100, 501400 5629300, "
        "501400 5629100))",  # self-intersecting bow tie: repaired by the extractor
        None,
    ):
        g = QgsFeature(layer.fields())
        g.setAttributes([None] * layer.fields().count())
        if wkt:
            g.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(g)
    layer.dataProvider().addFeatures(features)
    result = run({"PARCELS": layer, "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "OUTPUT": "TEMPORARY_OUTPUT"})  # fmt: skip
    got = rows(result["OUTPUT"])
    statuses = [r["status"] for r in got]
    assert statuses == ["ok", "ok", "ok", "outside_stack", "too_small", "ok", "invalid_geometry"]
    for r in got:
        if r["status"] != "ok":
            assert r["crop_code_pred"] is None
            assert r["crop_class"] is None
            assert r["confidence"] is None
    assert result["N_CLASSIFIED"] == 4
    assert result["N_UNCLASSIFIED"] == 3
    assert layer.featureCount() == 7  # the input layer is untouched
    assert layer.fields().count() == source.fields().count() - 1


def test_parcels_in_another_crs_keep_theirs(provider, sample_model, expected, tmp_path):
    result = run({"PARCELS": str(PARCELS_WGS84), "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "OUTPUT": str(tmp_path / "wgs84.gpkg")})  # fmt: skip
    layer = layer_of(result["OUTPUT"])
    assert layer.crs().authid() == "EPSG:4326"
    assert result["N_CLASSIFIED"] == 18
    p = np.array([[r["p_maize"], r["p_other_leguminous_crops"], r["p_permanent_grass_crops"]]
                  for r in rows(layer)])  # fmt: skip
    np.testing.assert_allclose(p, np.stack([expected[i] for i in range(18)]), atol=1e-3)


def test_loaded_output_gets_the_style(provider, sample_model, qgis_new_project):
    """Processing loads a temporary output into the project: the post-processor styles it."""
    import processing

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    output = QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance())
    feedback = QgsProcessingFeedback()
    result = processing.run(ALG, {"PARCELS": str(PARCELS), "STACK": str(STACK),
                                  "MODEL": str(sample_model), "DEVICE": "cpu",
                                  "OUTPUT": output}, context=context,
                            feedback=feedback)  # fmt: skip
    layer = result["OUTPUT"]  # processing.run hands the layer itself back
    assert context.willLoadLayerOnCompletion(layer.id())
    details = context.layerToLoadOnCompletionDetails(layer.id())
    assert layer.renderer() is None or not isinstance(layer.renderer(),
                                                      QgsCategorizedSymbolRenderer)  # fmt: skip
    details.postProcessor().postProcessLayer(layer, context, feedback)
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert layer.name() == "Classified parcels (cnn_flanders_test)"
    assert Path(result["STYLE"]).is_file()


def test_confidence_is_visible_as_fill_opacity(sample_model):
    """Render parcels of one class, one certain, one at chance level, one disagreeing with
    its declaration: the certain one is filled with the class colour, the doubtful one is
    nearly transparent, the disagreeing one has a red outline."""
    card = read_card(sample_model)
    uri = ("Polygon?crs=EPSG:32631&field=crop_code:integer&field=crop_class:string"
           "&field=confidence:double&field=status:string&field=agrees:boolean")  # fmt: skip
    layer = QgsVectorLayer(uri, "t", "memory")
    features = []
    for x0, confidence, agrees in ((0, 1.0, True), (200, 1 / 3, None), (400, 0.9, False)):
        f = QgsFeature(layer.fields())
        f.setAttributes([card.classes[0].code, card.classes[0].name, confidence, "ok", agrees])
        f.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, 0, x0 + 100, 100)))
        features.append(f)
    layer.dataProvider().addFeatures(features)
    apply_style(layer, card, StyleFields(agrees="agrees"))
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setExtent(QgsRectangle(-10, -10, 510, 110))
    settings.setOutputSize(QSize(520, 120))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    certain = QColor(image.pixel(60, 60))
    doubtful = QColor(image.pixel(260, 60))
    colour = QColor(card.classes[0].colour)
    assert abs(certain.red() - colour.red()) < 8
    assert abs(certain.blue() - colour.blue()) < 8
    # at chance level the fill is 35% opaque: the white background shows through
    assert 170 < doubtful.blue() < 195
    edge = QColor(image.pixel(410, 60))  # the left border of the disagreeing parcel
    assert (edge.red(), edge.green(), edge.blue()) == (0xE3, 0x1A, 0x1C)
    border = QColor(image.pixel(10, 60))  # the agreeing one: an outline in the class colour
    assert (border.red(), border.green(), border.blue()) == (colour.red(), colour.green(),
                                                            colour.blue())  # fmt: skip


def test_cancel_leaves_no_output(provider, sample_model, tmp_path):
    class CancelWhenClassifying(QgsProcessingFeedback):
        def setProgressText(self, text: str) -> None:
            super().setProgressText(text)
            self.cancel()

    out = tmp_path / "never.gpkg"
    with pytest.raises(QgsProcessingException, match="Cancelled: nothing was written"):
        run({"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
             "DEVICE": "cpu", "OUTPUT": str(out)}, feedback=CancelWhenClassifying())  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_cancel_while_writing_removes_the_partial_file(provider, sample_model, tmp_path):
    class CancelWhenWriting(QgsProcessingFeedback):
        def pushWarning(self, text: str) -> None:
            super().pushWarning(text)
            if "already has a field" in text:  # said just before the sink is created
                self.cancel()

    out = tmp_path / "partial.gpkg"
    with pytest.raises(QgsProcessingException, match="Cancelled: nothing was written"):
        run({"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
             "DEVICE": "cpu", "OUTPUT": str(out)}, feedback=CancelWhenWriting())  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"STACK": "/nonexistent/stack"}, "does not exist"),
        ({"MODEL": "no_such_model"}, "'no_such_model' is neither a bundled model"),
        ({"MODEL": ""}, "Incorrect parameter value for MODEL"),
        ({"DEVICE": "cuda"}, "sees no CUDA GPU.*Use device .cpu. \\(or .auto.\\)"),
    ],
)
def test_bad_inputs_give_actionable_messages(provider, sample_model, tmp_path, change, message):
    params = {"PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
              "DEVICE": "cpu", "OUTPUT": str(tmp_path / "o.gpkg"), **change}  # fmt: skip
    with pytest.raises(QgsProcessingException, match=message):
        run(params)
    assert not (tmp_path / "o.gpkg").exists()


def test_a_short_stack_is_resampled_with_a_warning(provider, sample_model, tmp_path):
    from sample_data import copy_dates

    # four clear dates from late February to early May 2018, of the model's 118
    stack = copy_dates(["20180225", "20180320", "20180419", "20180504"], tmp_path / "short")
    feedback = QgsProcessingFeedback()
    result = run({"PARCELS": str(PARCELS), "STACK": str(stack), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback)  # fmt: skip
    assert result["N_CLASSIFIED"] == 18
    log = feedback.textLog()
    assert "interpolated linearly in time onto the grid" in log
    assert "span only 14% of the model's dates" in log
    # spring 2018 lies in the second year of the model's season (August 2017 - November 2018)
    assert "as if the season started in 2017" in log


def test_the_algorithm_runs_in_batch_mode_and_in_models(provider, sample_model, tmp_path):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
    )

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg.flags() & QgsProcessingAlgorithm.FlagSupportsBatch
    assert alg.flags() & QgsProcessingAlgorithm.FlagCanCancel
    assert not alg.flags() & QgsProcessingAlgorithm.FlagHideFromModeler

    model = QgsProcessingModelAlgorithm("classify in a model", "tests")
    child = QgsProcessingModelChildAlgorithm(ALG)
    child.setChildId("classify")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    for key, value in {"PARCELS": str(PARCELS), "STACK": str(STACK),
                       "MODEL": str(sample_model), "DEVICE": "cpu"}.items():  # fmt: skip
        child.addParameterSources(key, [static(value)])
    output = QgsProcessingModelOutput("classified")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"classified": output})
    model.addChildAlgorithm(child)
    import processing

    out = tmp_path / "from_model.gpkg"
    result = processing.run(model, {"classify:classified": str(out)})
    assert layer_of(result["classify:classified"]).featureCount() == 18


def test_an_empty_layer_gives_an_empty_styled_output(provider, sample_model, tmp_path):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32631&field=name:string", "empty", "memory")
    result = run({"PARCELS": layer, "STACK": str(STACK), "MODEL": str(sample_model),
                  "DEVICE": "cpu", "OUTPUT": str(tmp_path / "empty.gpkg")})  # fmt: skip
    assert result["N_CLASSIFIED"] == 0
    output = layer_of(result["OUTPUT"])
    assert output.featureCount() == 0
    assert output.fields().names()[:3] == ["fid", "name", "crop_code"]
    assert Path(result["STYLE"]).is_file()
