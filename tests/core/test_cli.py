"""``python -m cropmodels extract`` end to end on the real sample, and its error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropmodels.__main__ import main
from cropmodels.store import Store
from sample_data import PARCELS, STACK


def test_extract_writes_a_labelled_store(tmp_path: Path, capsys):
    out = tmp_path / "flanders.store"
    code = main(["extract", "--parcels", str(PARCELS), "--stack", str(STACK), "--out", str(out),
                 "--label-field", "crop_code", "--id-field", "parcel_id", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "18 parcels x 118 dates (18 ok)" in printed
    assert "kB per parcel" in printed
    store = Store(out)
    assert len(store) == 18
    order = np.argsort(store.source_index)
    assert sorted(set(store.labels[order].tolist())) == [1200, 2130, 5100, 7900, 9120]
    assert store.dates[0] == "2017-08-04"


def test_extract_explains_bad_label_fields(tmp_path: Path, capsys):
    args = ["extract", "--parcels", str(PARCELS), "--stack", str(STACK), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--label-field", "crop_name"]) == 2
    assert "not an integer class code" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--label-field", "nope"]) == 2
    assert "no field 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_extract_refuses_a_missing_stack(tmp_path: Path, capsys):
    code = main(["extract", "--parcels", str(PARCELS), "--stack", str(tmp_path / "none"),
                 "--out", str(tmp_path / "s"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
