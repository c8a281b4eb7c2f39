"""The prepared GPU benchmark (benchmarks/bench_gpu.py) runs: a GPU is lent to a session only by
chance and for minutes, so the script must work the first time. Here every step runs on the
CPU at toy sizes (its figures mean nothing); without CUDA the default run measures nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_step_runs_and_is_recorded(bench_gpu, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    code = bench_gpu.main(["--device", "cpu", "--sizes", "2,4", "--epoch", "64",
                           "--seconds", "0.01", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert torch.get_num_threads() == threads
    record = json.loads(out.read_text())
    assert set(record["inference"]) == {"2", "4"}
    for figures in record["inference"].values():
        assert figures["same_class_share_vs_fp32"] == 1.0  # no float16 on the CPU
        assert figures["on_gpu_parcels_per_s"] > 0
        assert figures["from_host_uint16_parcels_per_s"] > 0
    assert set(record["models_parcels_per_s"]) >= {"cnn_gru9", "gru", "pse_ltae"}
    assert record["epoch"]["parcels"] == 64
    assert record["epoch"]["mean_loss"] > 0
    assert "cnn_gru9_epoch_seconds" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the default run measures")
def test_without_cuda_nothing_is_measured_or_written(bench_gpu, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--out", str(out)]) == 0
    assert not out.exists()
    assert "no CUDA device here" in capsys.readouterr().out
