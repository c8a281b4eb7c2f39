"""The ``cropclassifier`` provider inside QGIS's Processing framework."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException

import parcel_crop_classifier
from parcel_crop_classifier.plugin.provider import PROVIDER_ID


@pytest.fixture
def provider_loaded(qgis_processing):
    plugin = parcel_crop_classifier.classFactory(None)
    plugin.initProcessing()
    yield QgsApplication.processingRegistry().providerById(PROVIDER_ID)
    plugin.unload()


def test_algorithms_follow_the_processing_contract(provider_loaded):
    algorithms = provider_loaded.algorithms()
    assert algorithms
    for alg in algorithms:
        assert alg.name() == alg.name().lower()
        assert alg.groupId() == alg.groupId().lower()
        assert alg.displayName()
        assert alg.shortHelpString()
        assert not alg.icon().isNull()
        fresh = alg.createInstance()
        assert type(fresh) is type(alg)
        assert fresh is not alg
        for param in alg.parameterDefinitions():
            assert param.name() == param.name().upper()


def test_diagnostics_runs_through_processing(provider_loaded, tmp_path: Path):
    import processing

    out = tmp_path / "sub" / "diagnostics.json"
    result = processing.run(f"{PROVIDER_ID}:diagnostics", {"OUTPUT": str(out)})
    assert result["DEVICE"] == "cpu"  # CI has no GPU
    assert result["MISSING"] == ""
    assert re.search(r"^QGIS +3\.", result["REPORT"], re.M)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["qgis"].startswith("3.")
    assert {p["name"] for p in report["packages"]} >= {"torch", "numpy", "rasterio"}
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    assert out.stat().st_mode & 0o044  # readable by others, as files users create usually are


def test_diagnostics_without_report_file(provider_loaded):
    import processing

    result = processing.run(f"{PROVIDER_ID}:diagnostics", {})
    assert "OUTPUT" not in result or not result["OUTPUT"]
    assert "torch" in result["REPORT"]


def test_unwritable_report_gives_an_actionable_error(provider_loaded, tmp_path: Path):
    import processing

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(QgsProcessingException, match="Choose a folder you can write to"):
        processing.run(f"{PROVIDER_ID}:diagnostics", {"OUTPUT": str(blocker / "r.json")})


def test_core_log_of_the_thread_reading_ahead_reaches_the_algorithm_log():
    """With a GPU or 4+ cores, classify extracts on a read-ahead thread: what the extractor logs
    there (strips, parcels read on their own...) still reaches the algorithm's log, and what
    another thread logs does not."""
    import logging
    import threading

    from qgis.core import QgsProcessingFeedback

    from parcel_crop_classifier.cropmodels.readahead import read_ahead
    from parcel_crop_classifier.plugin.algorithms.common import core_log_to
    from parcel_crop_classifier.plugin.paths import PACKAGE_NAME

    class Capture(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: list[str] = []

        def pushInfo(self, info: str) -> None:  # Qt's name
            self.infos.append(info)

    logger = logging.getLogger(f"{PACKAGE_NAME}.cropmodels.extract")

    def source():
        for i in range(2):
            logger.info("extracted %d", i)
            yield i

    feedback = Capture()
    with core_log_to(feedback):
        assert list(read_ahead(source(), 1, "extract")) == [0, 1]
        other = threading.Thread(target=lambda: logger.info("another run"))
        other.start()
        other.join()
    assert feedback.infos == ["extracted 0", "extracted 1"]
