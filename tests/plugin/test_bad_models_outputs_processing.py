"""Issue 13, part B, through the Processing algorithms in headless QGIS: bad model files,
outputs, cancelling and running out of memory at each stage. Each failure is a
``QgsProcessingException`` whose message is one line saying what is wrong and what to do; the
inputs are unchanged and nothing is left half-written. Cases: ``tests/data/bad/README.md``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer

import bad_models
from parcel_crop_classifier.cropmodels import extract as extract_module
from parcel_crop_classifier.cropmodels import predict
from parcel_crop_classifier.cropmodels import store as store_module
from parcel_crop_classifier.plugin.algorithms import classify as classify_alg
from sample_data import PARCELS, copy_dates, sample_dates

CANCELLED = "Cancelled: nothing was written."


def run(alg: str, params: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    import processing

    return processing.run(f"cropclassifier:{alg}", params, feedback=feedback)


def digests(*paths: Path) -> dict[str, str]:
    out = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused(alg: str, params: dict, feedback=None) -> str:
    """Run ``alg`` expecting a ``QgsProcessingException``; its one-line message."""
    with pytest.raises(QgsProcessingException) as caught:
        run(alg, params, feedback)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return copy_dates(sample_dates()[::15], tmp_path_factory.mktemp("stack") / "stack")


@pytest.fixture
def inputs(stack) -> Iterator[None]:
    before = digests(PARCELS, stack, bad_models.BUNDLED)
    yield
    assert digests(PARCELS, stack, bad_models.BUNDLED) == before


def classify_params(stack: Path, model: str | Path, out: Path) -> dict:
    return {"PARCELS": str(PARCELS), "STACK": str(stack), "MODEL": str(model), "DEVICE": "cpu",
            "OUTPUT": str(out)}  # fmt: skip


# -- bad model files --------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(bad_models.REFUSED))
def test_classify_parcels_refuses_bad_model_files(case, provider, stack, inputs, tmp_path):
    make, pattern = bad_models.REFUSED[case]
    card = make(tmp_path / "model")
    model_files = digests(tmp_path / "model")
    out = tmp_path / "out" / "classified.gpkg"
    out.parent.mkdir()
    message = refused("classify_parcels", classify_params(stack, card, out))
    assert re.search(pattern, message), message
    assert digests(tmp_path / "model") == model_files
    assert list(out.parent.iterdir()) == []


def test_a_pickled_model_is_never_unpickled_in_qgis(provider, stack, tmp_path):
    marker = tmp_path / "marker"
    card = bad_models.pickle_as_safetensors(tmp_path / "model", marker)
    message = refused("classify_parcels", classify_params(stack, card, tmp_path / "o.gpkg"))
    assert "not a valid safetensors file" in message
    assert "never unpickled" in message
    assert not marker.exists()
    assert not (tmp_path / "o.gpkg").exists()


def test_evaluate_models_refuses_a_tampered_model(provider, stack, inputs, tmp_path):
    card = bad_models.tampered_sha256(tmp_path / "model")
    message = refused("evaluate_models", {
        "PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code", "STACK": str(stack),
        "MODELS": [str(card)], "DEVICE": "cpu", "OUTPUT": "TEMPORARY_OUTPUT",
        "REPORT": str(tmp_path / "report.html"),
    })  # fmt: skip
    assert "does not belong to this card" in message
    assert not (tmp_path / "report.html").exists()


# -- outputs ----------------------------------------------------------------------------------


def test_an_existing_output_the_user_chose_is_overwritten(provider, stack, inputs, tmp_path):
    """QGIS's convention: the file chosen in the dialog is replaced (the CLI needs
    --overwrite)."""
    out = tmp_path / "classified.gpkg"
    out.write_bytes(b"an older file")
    result = run("classify_parcels", classify_params(stack, "gru", out))
    assert result["N_CLASSIFIED"] == 18
    assert QgsVectorLayer(str(out), "o", "ogr").featureCount() == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classified.gpkg", "classified.qml"]


@pytest.mark.parametrize(
    ("out", "pattern"),
    [
        ("/sys/classified.gpkg", r"Cannot write in the folder /sys"),
        ("{tmp}/no/such/folder/classified.gpkg", r"folder .*/no/such/folder .*does not exist"),
    ],
    ids=["unwritable", "missing_folder"],
)
def test_an_output_that_cannot_be_written_is_refused_before_classifying(
    provider, stack, inputs, tmp_path, out, pattern
):
    feedback = QgsProcessingFeedback()
    out = Path(out.format(tmp=tmp_path))
    message = refused("classify_parcels", classify_params(stack, "gru", out), feedback)
    assert re.search(pattern, message), message
    assert list(tmp_path.iterdir()) == []


# -- cancelling and running out of memory at each stage ---------------------------------------

STAGES = ("stack", "extraction", "inference", "writing")


def _at_stage(monkeypatch, stage: str, action: Callable[[], None]) -> None:
    """Run ``action`` when the algorithm reaches ``stage``."""

    def wrap(owner, name: str) -> None:
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            result = real(*args, **kwargs)
            action()
            return result

        monkeypatch.setattr(owner, name, wrapped)

    if stage == "stack":
        wrap(classify_alg, "open_stack")
    elif stage == "extraction":
        wrap(extract_module._Extractor, "read")
    elif stage == "inference":
        wrap(predict.Classifier, "_run")
    else:  # just before the output is created
        wrap(classify_alg.ClassifyParcelsAlgorithm, "_fields")


@pytest.mark.parametrize("stage", STAGES)
def test_cancelling_classify_parcels_at_each_stage(
    stage, provider, stack, inputs, tmp_path, monkeypatch
):
    feedback = QgsProcessingFeedback()
    _at_stage(monkeypatch, stage, feedback.cancel)
    out = tmp_path / "c.gpkg"
    assert refused("classify_parcels", classify_params(stack, "gru", out), feedback) == CANCELLED
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stage", STAGES)
def test_out_of_memory_in_classify_parcels_says_what_to_lower(
    stage, provider, stack, inputs, tmp_path, monkeypatch
):
    def out_of_memory() -> None:
        raise MemoryError

    _at_stage(monkeypatch, stage, out_of_memory)
    out = tmp_path / "c.gpkg"
    message = refused("classify_parcels", classify_params(stack, "gru", out))
    assert message.startswith("out of memory: lower the memory budget")
    assert list(tmp_path.iterdir()) == []


def test_extract_patches_cancelled_or_out_of_memory_leaves_no_store(
    provider, stack, inputs, tmp_path, monkeypatch
):
    class CancelWhileExtracting(QgsProcessingFeedback):
        def setProgressText(self, text: str) -> None:
            super().setProgressText(text)
            self.cancel()

    params = {"PARCELS": str(PARCELS), "STACK": str(stack), "OUTPUT": str(tmp_path / "s.store")}
    message = refused("extract_patches", params, CancelWhileExtracting())
    assert message == "Cancelled: no store was written."
    assert list(tmp_path.iterdir()) == []

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(store_module._Writer, "add", out_of_memory)
    assert refused("extract_patches", params).startswith("out of memory: lower the memory")
    assert list(tmp_path.iterdir()) == []


def test_train_model_cancelled_while_training_writes_no_model(provider, stack, inputs, tmp_path):
    class CancelWhileTraining(QgsProcessingFeedback):
        def pushInfo(self, text: str) -> None:
            super().pushInfo(text)
            if text.startswith("Training"):
                self.cancel()

    out = tmp_path / "out"
    out.mkdir()
    message = refused("train_model", {
        "PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code", "STACK": str(stack),
        "ARCHITECTURE": "gru", "EPOCHS": 2, "FOLDS": 3, "CROSS_VALIDATE": False,
        "MERGE_RARE": True, "DEVICE": "cpu", "OUTPUT": str(out / "m.json"),
        "REPORT": str(out / "m.html"),
    }, CancelWhileTraining())  # fmt: skip
    assert message.startswith("Cancelled")
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".work")) == []


def test_train_model_into_an_unwritable_folder_fails_before_training(
    provider, stack, inputs, tmp_path, monkeypatch
):
    from parcel_crop_classifier.cropmodels import train as train_module

    def never(*args, **kwargs):
        raise AssertionError("trained although the model could not be written")

    monkeypatch.setattr(train_module, "train_one", never)
    message = refused("train_model", {
        "PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code", "STACK": str(stack),
        "ARCHITECTURE": "gru", "EPOCHS": 1, "FOLDS": 3, "CROSS_VALIDATE": False,
        "MERGE_RARE": True, "DEVICE": "cpu", "OUTPUT": "/sys/m.json",
        "REPORT": str(tmp_path / "m.html"),
    })  # fmt: skip
    assert message.startswith("Cannot write in the folder /sys (")
    assert list(tmp_path.iterdir()) == []


def test_build_stack_out_of_memory_while_writing_leaves_no_stack(provider, tmp_path, monkeypatch):
    from l2a_fixtures import product_from_sample
    from parcel_crop_classifier.cropmodels import buildstack

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    product_from_sample(downloads, "20180419")
    before = digests(downloads)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(buildstack, "_write_manifest", out_of_memory)  # after every date
    out = tmp_path / "stack"
    message = refused("build_stack", {"INPUT_FOLDER": str(downloads), "PARCELS": str(PARCELS),
                                      "OUTPUT": str(out)})  # fmt: skip
    assert message.startswith("out of memory: lower the memory budget")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]
    assert digests(downloads) == before
