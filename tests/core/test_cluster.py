"""Extraction as spatial blocks on a dask.distributed cluster gives the results of one process."""

from __future__ import annotations

from pathlib import Path

import distributed
import geopandas as gpd
import numpy as np
import pytest

from cropmodels.__main__ import main
from cropmodels.cluster import blocks, extract_on_cluster
from cropmodels.extract import extract
from cropmodels.stack import open_stack
from cropmodels.store import Store
from sample_data import PARCELS, STACK

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes (one thread each), as separate machines would be."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(ROOT))  # the workers import cropmodels
    mp.setenv("PROJ_DATA", "/usr/share/proj")
    local = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40,
    )  # fmt: skip
    client = distributed.Client(local)
    yield client
    client.close()
    local.close()
    mp.undo()


def test_blocks_cover_every_parcel_once_in_grid_order():
    parcels = gpd.read_file(PARCELS)
    stack = open_stack(STACK)
    parts = blocks(parcels, stack, block_px=16)  # the 64 px sample in up to 4 x 4 blocks
    assert len(parts) > 4
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(parcels)))
    with pytest.raises(ValueError, match="block_px"):
        blocks(parcels, stack, block_px=0)


@pytest.mark.slow
def test_cluster_extraction_equals_one_process(cluster, tmp_path):
    parcels = gpd.read_file(PARCELS)
    alone = {r.index: r for r in extract(parcels, STACK)}
    seen = []
    with distributed.get_task_stream(client=cluster) as stream:
        on_cluster = {
            r.index: r
            for r in extract_on_cluster(
                parcels, STACK, cluster, block_px=16, progress=lambda f, m: seen.append(f)
            )
        }
    assert on_cluster.keys() == alone.keys()
    assert seen[-1] == 1.0
    assert len({task["worker"] for task in stream.data}) == 2  # both workers took blocks
    for i, r in alone.items():
        c = on_cluster[i]
        assert c.status == r.status
        assert c.n_pixels == r.n_pixels
        np.testing.assert_array_equal(c.patches, r.patches)
        np.testing.assert_array_equal(c.features, r.features)
        np.testing.assert_array_equal(c.cloud_fraction, r.cloud_fraction)

    # The command line writes the same store through the scheduler's address.
    address = cluster.scheduler.address
    for name, extra in (("one", []), ("cluster", ["--scheduler", address])):
        code = main(["extract", "--parcels", str(PARCELS), "--stack", str(STACK), "--out",
                     str(tmp_path / f"{name}.zarr"), "--label-field", "crop_code", "--quiet",
                     *extra])  # fmt: skip
        assert code == 0
    one, many = Store(tmp_path / "one.zarr"), Store(tmp_path / "cluster.zarr")
    rows = np.arange(len(one))
    np.testing.assert_array_equal(one.read(rows).patches, many.read(rows).patches)
    np.testing.assert_array_equal(one.labels, many.labels)


@pytest.mark.slow
def test_cluster_classification_equals_one_process(cluster, tmp_path):
    from cropmodels.predict import Classifier, PredictSummary
    from sample_data import train_sample_model

    model = train_sample_model(tmp_path / "model", "cnn")
    classifier = Classifier.load(model, "cpu")
    alone = {p.index: p for p in classifier.classify(PARCELS, STACK)}
    summary = PredictSummary()
    from cropmodels.cluster import classify_on_cluster

    many = {
        p.index: p
        for p in classify_on_cluster(
            PARCELS, STACK, classifier, cluster, block_px=16, summary=summary
        )
    }
    assert many.keys() == alone.keys()
    assert sum(summary.counts.values()) == len(alone)
    for i, p in alone.items():
        assert many[i].status == p.status
        np.testing.assert_allclose(many[i].probabilities, p.probabilities, atol=1e-6)

    # The command line: same output file through the scheduler's address.
    address = cluster.scheduler.address
    for name, extra in (("one", []), ("cluster", ["--scheduler", address])):
        code = main(["classify", "--parcels", str(PARCELS), "--stack", str(STACK), "--model",
                     str(model), "--out", str(tmp_path / f"{name}.gpkg"), "--device", "cpu",
                     "--quiet", *extra])  # fmt: skip
        assert code == 0
    one = gpd.read_file(tmp_path / "one.gpkg")
    two = gpd.read_file(tmp_path / "cluster.gpkg")
    assert one["crop_code"].tolist() == two["crop_code"].tolist()
    np.testing.assert_allclose(one["confidence"], two["confidence"], atol=1e-5)
