"""Plugin tests: real headless QGIS through pytest-qgis.

The repository root *is* the plugin folder. QGIS imports it as the package
``parcel_crop_classifier``; we import it under the same name (without copying anything) so the
relative imports ``plugin -> ..cropmodels`` resolve exactly as inside QGIS.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PACKAGE = "parcel_crop_classifier"


def _import_repo_as_plugin_package() -> None:
    if PLUGIN_PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PLUGIN_PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PLUGIN_PACKAGE] = module
    spec.loader.exec_module(module)


_import_repo_as_plugin_package()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.qgis)


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory) -> Path:
    """A real CNN trained for one epoch on the bundled sample (card path): tiny, for tests of
    the plugin's plumbing, not of accuracy."""
    from sample_data import train_sample_model

    return train_sample_model(tmp_path_factory.mktemp("models"), "cnn")


@pytest.fixture
def provider(qgis_processing):
    """The plugin loaded as qgis_process loads it (no iface): its provider registered."""
    from qgis.core import QgsApplication

    import parcel_crop_classifier
    from parcel_crop_classifier.plugin.provider import PROVIDER_ID

    plugin = parcel_crop_classifier.classFactory(None)
    plugin.initProcessing()
    yield QgsApplication.processingRegistry().providerById(PROVIDER_ID)
    plugin.unload()


@pytest.fixture(autouse=True, scope="session")
def _collect_garbage_before_qgis_exits(qgis_app):
    """Python objects in reference cycles that own Qt or QGIS objects (the comparison panel's
    widgets, whose signals hold bound methods; a layer) are freed by the cycle collector, at
    whatever moment it runs. After pytest-qgis's exitQgis() that is a segfault (exit code 139
    after every test passed): collect them here, while QGIS is still up (this fixture needs
    qgis_app, so its teardown runs before qgis_app's)."""
    yield
    import gc

    gc.collect()
