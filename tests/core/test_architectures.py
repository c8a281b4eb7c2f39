"""The paper's architectures: registry, Table 1 parameter counts, shapes, masks, invariances."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cropmodels.architectures import (  # noqa: E402
    FEATURES,
    PATCHES,
    get_model,
    get_spec,
    list_models,
    parameter_count,
    temporal_parameter_ratio,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE_1 = {  # Garnot et al. 2019, Table 1, 19 output classes
    "cnn": 92_899,
    "cnn_gru7": 92_035,
    "cnn_gru8": 93_807,
    "cnn_gru9": 90_179,
    "gru": 94_587,
}
CONVLSTM_PAPER, CONVLSTM_OURS = 95_353, 94_457
RECURRENT = ["cnn_gru7", "cnn_gru8", "cnn_gru9", "gru", "convlstm"]


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def make_input(name: str, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Random input of the kind ``name`` consumes; patches are zero outside a parcel."""
    g = torch.Generator().manual_seed(seed)
    if get_spec(name).input_kind == FEATURES:
        return torch.randn(batch, steps, 20, generator=g)
    x = torch.randn(batch, steps, 10, 32, 32, generator=g)
    x[..., :4, :] = 0.0  # a parcel does not fill its bounding box
    return x


def build(name: str, seed: int = 0, **hparams) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_model(name, **hparams)


# -- registry -------------------------------------------------------------------------
def test_registry_lists_the_paper_models_then_pse_ltae():
    assert list_models() == [*TABLE_1, "convlstm", "pse_ltae"]


@pytest.mark.parametrize("name", list_models())
def test_spec_is_frozen_and_describes_the_model(name):
    spec = get_spec(name)
    model = get_model(name)
    assert spec.name == name == model.architecture
    assert spec.input_kind in (PATCHES, FEATURES)
    assert model.input_kind == spec.input_kind
    assert model.hparams == spec.default_hparams()
    json.dumps(model.hparams)  # a card can carry them
    with pytest.raises(TypeError):
        spec.defaults["x"] = 1  # type: ignore[index]
    copy = spec.default_hparams()
    copy.clear()
    assert spec.default_hparams()


def test_titles_and_paper_rows():
    assert get_spec("cnn_gru9").title == "CNN+GRU9"
    assert get_spec("cnn").paper.kernels == "16:32:96"
    assert get_spec("gru").paper.hidden_size == "156"
    assert get_spec("pse_ltae").paper is None


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'lstm'.*cnn_gru9.*convlstm"):
        get_model("lstm")


def test_unknown_hparam_is_named():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter.*'cnn'.*kernel_sizes.*kernels"):
        get_model("cnn", kernel_sizes=(3, 3, 3))


def test_bad_hparam_value_is_explained():
    with pytest.raises(ValueError, match="kernels must be a list of positive integers"):
        get_model("cnn", kernels=[16, 0, 96])
    with pytest.raises(ValueError, match="multiple of n_head"):
        get_model("pse_ltae", d_model=100)


def test_hparams_rebuild_the_same_shapes():
    for name in list_models():
        model = get_model(name, n_classes=5, n_bands=4)
        again = get_model(name, n_classes=5, n_bands=4, **model.hparams)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert shapes == {k: v.shape for k, v in again.state_dict().items()}


def test_listing_needs_no_torch():
    code = (
        "import sys; from cropmodels.architectures import list_models, get_spec;"
        "import cropmodels.modelcard;"
        "[get_spec(n) for n in list_models()]; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# -- Table 1 --------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "count"), TABLE_1.items())
def test_parameter_count_equals_table_1(name, count):
    assert parameter_count(get_model(name, n_classes=19)) == count
    assert get_spec(name).paper_parameter_count == count


def test_convlstm_count_is_documented_and_within_one_percent():
    model = get_model("convlstm")
    assert parameter_count(model) == CONVLSTM_OURS
    assert abs(CONVLSTM_OURS - CONVLSTM_PAPER) / CONVLSTM_PAPER < 0.01
    assert get_spec("convlstm").paper_parameter_count == CONVLSTM_PAPER
    assert "94,457" in type(model).__doc__
    assert "95,353" in type(model).__doc__
    assert "0.94%" in get_spec("convlstm").note


def test_pse_ltae_count():
    assert parameter_count(get_model("pse_ltae")) == 130_803


def test_parameter_breakdown_matches_hand_counts():
    assert get_model("cnn").parameter_breakdown() == {
        "spatial": 34_128,
        "temporal": 0,
        "classifier": 58_771,
    }
    assert get_model("cnn_gru7").parameter_breakdown() == {
        "spatial": 24_816,
        "temporal": 61_824,
        "classifier": 5_395,
    }
    assert get_model("gru").parameter_breakdown() == {
        "spatial": 0,
        "temporal": 83_304,
        "classifier": 11_283,
    }
    assert get_model("convlstm").temporal_parameter_count() == 46_144


@pytest.mark.parametrize("name", [*TABLE_1])
def test_table_1_ratio_is_the_encoder_share(name):
    model = get_model(name)
    printed = float(get_spec(name).paper.temporal_ratio)
    assert round(temporal_parameter_ratio(model, of="encoder"), 1) == printed
    assert temporal_parameter_ratio(model) <= temporal_parameter_ratio(model, of="encoder")


def test_paper_conv_block_maps_32_to_2():
    model = get_model("cnn").eval()
    with torch.no_grad():
        out = model.spatial(torch.zeros(3, 10, 32, 32))
    assert out.shape == (3, 96, 2, 2)
    assert model.embedding_size == 384


# -- forward and backward -------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 24, 73])
@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_backward(name, steps):
    model = build(name).train()
    x = make_input(name, batch=2, steps=steps)
    logits = model(x)
    assert logits.shape == (2, 19)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 18])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", list_models())
def test_other_class_and_band_counts(name):
    model = get_model(name, n_classes=7, n_bands=4).eval()
    x = torch.randn(3, 5, 8) if model.input_kind == FEATURES else torch.randn(3, 5, 4, 32, 32)
    assert model(x).shape == (3, 7)


@pytest.mark.parametrize("name", list_models())
def test_wrong_input_is_refused_with_the_expected_shape(name):
    model = get_model(name)
    wrong = torch.randn(2, 3, 10, 32, 32) if model.input_kind == FEATURES else torch.randn(2, 3, 20)
    with pytest.raises(ValueError, match=f"consumes {model.input_kind}"):
        model(wrong)


@pytest.mark.parametrize("name", list_models())
def test_deterministic_with_a_seed(name):
    x = make_input(name, batch=2, steps=4)
    first = build(name, seed=3).eval()(x)
    second = build(name, seed=3).eval()(x)
    other = build(name, seed=4).eval()(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)


# -- masks ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_padded_sequence_gives_what_it_gives_alone(name):
    model = build(name).eval()
    x = make_input(name, batch=2, steps=6, seed=1)
    x[1, 3:] = torch.randn_like(x[1, 3:]) * 100  # padding content must not matter
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    doy = torch.tensor([[10, 40, 70, 100, 130, 160]] * 2)
    with torch.no_grad():
        batched = model(x, mask=mask, doy=doy)
        alone_long = model(x[:1], doy=doy[:1])
        alone_short = model(x[1:, :3], doy=doy[1:, :3])
    torch.testing.assert_close(batched[0:1], alone_long, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1:2], alone_short, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_a_masked_date_in_the_middle_is_skipped(name):
    model = build(name).eval()
    x = make_input(name, batch=1, steps=5, seed=2)
    doy = torch.tensor([[10, 40, 70, 100, 130]])
    mask = torch.tensor([[True, True, False, True, True]])
    keep = [0, 1, 3, 4]
    with torch.no_grad():
        masked = model(x, mask=mask, doy=doy)
        dropped = model(x[:, keep], doy=doy[:, keep])
    torch.testing.assert_close(masked, dropped, rtol=1e-4, atol=1e-5)


def test_padded_dates_stay_out_of_batchnorm_statistics():
    x = make_input("cnn", batch=2, steps=4)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    a, b = build("cnn").train(), build("cnn").train()
    a(x, mask=mask)
    b(torch.cat([x[0], x[1, :2]]).unsqueeze(0))  # the same six valid dates, no padding
    torch.testing.assert_close(a.spatial[0][1].running_mean, b.spatial[0][1].running_mean)


def test_bad_masks_are_refused():
    model = get_model("gru")
    x = torch.randn(2, 3, 20)
    with pytest.raises(ValueError, match="boolean"):
        model(x, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        model(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"sequence\(s\) \[1\].*no valid date"):
        model(x, mask=torch.tensor([[True, False, False], [False, False, False]]))


# -- what each model can and cannot see -----------------------------------------------
def test_cnn_is_invariant_to_the_order_of_dates():
    model = build("cnn").eval()
    x = make_input("cnn", batch=2, steps=8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, perm]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_models_depend_on_the_order_of_dates(name):
    model = build(name).eval()
    x = make_input(name, batch=2, steps=8)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x.flip(1)), atol=1e-5)


def test_pse_ltae_reads_the_day_of_year_and_ignores_outside_pixels():
    model = build("pse_ltae").eval()
    x = make_input("pse_ltae", batch=2, steps=4)
    doy = torch.tensor([[20, 80, 140, 200]] * 2)
    with torch.no_grad():
        base = model(x, doy=doy)
        assert not torch.allclose(base, model(x, doy=doy + 30), atol=1e-5)
        pixel_mask = (x != 0).any(dim=2)
        shifted = x.clone()
        shifted[..., :4, :] = 7.0  # e.g. a normalisation that moved the outside off zero
        torch.testing.assert_close(base, model(shifted, doy=doy, pixel_mask=pixel_mask))
        with pytest.raises(ValueError, match="pixel_mask"):
            model(x, pixel_mask=torch.ones(2, 32, 32))


# -- command line ---------------------------------------------------------------------
def test_models_command_prints_table_1(capsys):
    from cropmodels.__main__ import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, count in [*TABLE_1.items(), ("convlstm", CONVLSTM_PAPER)]:
        assert name in out
        assert f"{count:,}" in out
    assert "94,457" in out
    assert "-0.94%" in out
    assert "CNN+GRU9" in out
    assert "pse_ltae" in out


def test_models_command_json(capsys):
    from cropmodels.__main__ import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(list_models())
    assert rows["gru"]["parameters"] == rows["gru"]["paper_parameters"] == 94_587
    assert rows["gru"]["temporal_ratio_encoder"] == 1.0
