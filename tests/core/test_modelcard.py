"""Model files: safetensors weights + JSON card, validated and hash-checked on load."""

from __future__ import annotations

import json
import pickle
import struct

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from cropmodels import __version__  # noqa: E402
from cropmodels.architectures import get_model, get_spec, list_models  # noqa: E402
from cropmodels.modelcard import (  # noqa: E402
    PAPER_BANDS,
    CropClass,
    ModelCard,
    ModelFileError,
    load_model,
    model_paths,
    read_card,
    save_model,
)

DATE_GRID = list(range(10, 300, 12))  # 25 days of the year


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def make_card(name: str, n_classes: int = 19, grid: list[int] | None = None) -> ModelCard:
    grid = DATE_GRID if grid is None else grid
    width = 20 if get_spec(name).input_kind == "features" else 10
    rows = max(len(grid), 1)
    return ModelCard(
        name=f"{name} test model",
        architecture=name,
        hparams={},
        n_bands=10,
        bands=list(PAPER_BANDS),
        classes=[CropClass(i + 1, f"class {i}", f"#{i:02x}80c0") for i in range(n_classes)],
        input_kind=get_spec(name).input_kind,
        normalisation={
            "mean": [[0.1 * (j + 1)] * width for j in range(rows)],
            "std": [[0.5] * width for _ in range(rows)],
        },
        date_grid=grid or None,
        patch_size=32,
        provenance={"dataset": "synthetic", "region": "nowhere"},
        metrics={"oa": {"mean": 0.5, "std": 0.01}},
        version="0.0.1",
    )


def make_input(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if get_spec(name).input_kind == "features":
        return torch.randn(2, 5, 20, generator=g)
    return torch.randn(2, 5, 10, 32, 32, generator=g)


def saved(tmp_path, name: str = "gru"):
    torch.manual_seed(0)
    model = get_model(name).eval()
    card = save_model(model, make_card(name), tmp_path / "model")
    return model, card


def edit_card(tmp_path, change) -> None:
    path = tmp_path / "model.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# -- round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model, card = saved(tmp_path, name)
    loaded, loaded_card = load_model(tmp_path / "model.safetensors")
    assert loaded_card == card
    assert not loaded.training
    x = make_input(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_fills_in_what_the_model_knows(tmp_path):
    model, card = saved(tmp_path, "cnn_gru9")
    assert card.architecture == "cnn_gru9"
    assert card.hparams == model.hparams
    assert card.parameter_count == 90_179
    assert 0.82 < card.temporal_parameter_ratio < 0.83
    assert card.cropmodels_version == __version__
    assert len(card.weights_sha256) == 64
    assert card.created
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk["classes"][0] == {"code": 1, "name": "class 0", "colour": "#0080c0"}
    assert on_disk["weights_sha256"] == card.weights_sha256
    assert read_card(tmp_path / "model") == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_convlstm_card_carries_the_architecture_note(tmp_path):
    _, card = saved(tmp_path, "convlstm")
    assert "95,353" in card.architecture_note
    assert "0.94%" in card.architecture_note
    assert "architecture_note" in json.loads((tmp_path / "model.json").read_text())


def test_any_path_of_the_pair_or_the_stem_loads(tmp_path):
    saved(tmp_path)
    for path in ("model", "model.json", "model.safetensors"):
        assert load_model(tmp_path / path)[1].architecture == "gru"
    assert model_paths(tmp_path / "a.b.json") == (
        tmp_path / "a.b.safetensors",
        tmp_path / "a.b.json",
    )


def test_weights_file_is_safetensors_not_pickle(tmp_path):
    saved(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    assert not data.startswith((b"\x80", b"PK"))  # pickle protocol 2+ / torch.save zip
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    assert header["__metadata__"]["architecture"] == "gru"
    assert header["temporal.weight_ih_l0"]["shape"] == [468, 20]


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    """safetensors writes its metadata in hash-map order, different from call to call; the
    header is sorted so that retraining reproduces the file (and its sha256) exactly."""
    from safetensors.torch import load

    torch.manual_seed(0)
    model = get_model("gru").eval()
    files = set()
    for i in range(8):  # 3 metadata keys: 6 orders, all but surely met in 8 saves unsorted
        (tmp_path / str(i)).mkdir()
        save_model(model, make_card("gru"), tmp_path / str(i) / "model")
        files.add((tmp_path / str(i) / "model.safetensors").read_bytes())
    assert len(files) == 1
    (data,) = files
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    text = data[8 : 8 + size].decode().rstrip()
    assert text.startswith('{"__metadata__":{"architecture":"gru","card":"model.json",')
    tensors = load(data)
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value)


def test_load_never_unpickles(tmp_path, monkeypatch):
    saved(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_model(tmp_path / "model")


# -- tampering and mismatches ---------------------------------------------------------
def test_tampered_weights_are_refused(tmp_path):
    saved(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"modified or does not belong to this card.*sha256"):
        load_model(path)


def test_card_whose_architecture_disagrees_with_the_weights_names_the_tensor(tmp_path):
    saved(tmp_path)  # the weights hash is unchanged, so loading reaches the shape check

    def change(card):
        card["hparams"]["hidden_size"] = 100

    edit_card(tmp_path, change)
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "model")
    message = str(err.value)
    assert "temporal.weight_ih_l0: card says (300, 20), file has (468, 20)" in message
    assert "'gru'" in message


def test_card_with_another_architecture_lists_missing_and_unexpected_tensors(tmp_path):
    saved(tmp_path)

    def change(card):
        card["architecture"] = "cnn_gru7"
        card["input_kind"] = "patches"
        card["hparams"] = {}
        card["normalisation"] = {"mean": [[0.0] * 10], "std": [[1.0] * 10]}

    edit_card(tmp_path, change)
    with pytest.raises(
        ModelFileError, match=r"tensors missing from the file: spatial\.0\.0\.weight"
    ):
        load_model(tmp_path / "model")


def test_wrong_parameter_count_is_refused(tmp_path):
    saved(tmp_path)
    edit_card(tmp_path, lambda card: card.update(parameter_count=95_000))
    with pytest.raises(ModelFileError, match=r"parameter_count is 95000.*94587"):
        load_model(tmp_path / "model")


def test_missing_field_is_named(tmp_path):
    saved(tmp_path)
    edit_card(tmp_path, lambda card: card.pop("bands"))
    with pytest.raises(ModelFileError, match="missing field 'bands'"):
        load_model(tmp_path / "model")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(colour_map=1), "unknown field.*'colour_map'"),
        (lambda c: c["classes"][0].update(colour="red"), r"classes\[0\]\.colour"),
        (lambda c: c["classes"][1].update(code=1), r"class codes are not unique: \[1\]"),
        (lambda c: c["classes"][0].pop("name"), r"classes\[0\] must have exactly the keys"),
        (lambda c: c.update(classes=[]), "classes must be a non-empty list"),
        (lambda c: c.update(n_bands=12), "bands lists 10 names but n_bands is 12"),
        (lambda c: c["normalisation"]["mean"].pop(), "normalisation.mean has 24 row"),
        (lambda c: c["normalisation"]["std"][0].__setitem__(0, 0.0), "std must be positive"),
        (lambda c: c.update(date_grid=[5, 3]), "strictly increasing"),
        (lambda c: c.update(architecture="lstm"), "unknown architecture 'lstm'.*valid names"),
        (lambda c: c.update(input_kind="patches"), "'gru' consumes 'features'"),
        (lambda c: c["hparams"].update(depth=2), r"hparams \['depth'\] are not"),
        (lambda c: c.update(format_version=99), "format_version 99 is not supported"),
        (lambda c: c.update(weights_sha256="abc"), "64 lowercase hexadecimal"),
        (lambda c: c.update(created="yesterday"), "ISO 8601"),
    ],
)
def test_invalid_cards_are_refused_plainly(tmp_path, change, message):
    saved(tmp_path)
    edit_card(tmp_path, change)
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "model")


def test_every_problem_is_reported_at_once(tmp_path):
    saved(tmp_path)
    edit_card(tmp_path, lambda c: c.update(n_bands=0, version="", date_grid="all"))
    with pytest.raises(ModelFileError) as err:
        read_card(tmp_path / "model")
    text = str(err.value)
    for field in ("n_bands", "version", "date_grid"):
        assert field in text


def test_not_json_and_missing_files(tmp_path):
    saved(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"not valid JSON.*line 1"):
        load_model(tmp_path / "model")
    with pytest.raises(ModelFileError, match=r"not found.*\.safetensors \+ <name>\.json"):
        load_model(tmp_path / "other")
    saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"weights file .* not found"):
        load_model(tmp_path / "model")


# -- saving ---------------------------------------------------------------------------
def test_save_refuses_a_card_for_another_model(tmp_path):
    model = get_model("gru")
    with pytest.raises(ModelFileError, match="3 classes but the model has 19 outputs"):
        save_model(model, make_card("gru", n_classes=3), tmp_path / "m")
    with pytest.raises(ModelFileError, match="card says architecture 'cnn'"):
        save_model(model, make_card("cnn"), tmp_path / "m")
    with pytest.raises(ModelFileError, match="does not exist"):
        save_model(model, make_card("gru"), tmp_path / "nowhere" / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_validates_before_writing(tmp_path):
    card = make_card("gru")
    card.classes[1] = CropClass(1, "again", "#000000")
    with pytest.raises(ModelFileError, match="class codes are not unique"):
        save_model(get_model("gru"), card, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_date_agnostic_statistics_and_no_grid(tmp_path):
    torch.manual_seed(0)
    model = get_model("cnn")
    card = save_model(model, make_card("cnn", grid=[]), tmp_path / "m")
    assert card.date_grid is None
    mean, std = load_model(tmp_path / "m")[1].normalisation_arrays()
    assert mean.shape == std.shape == (1, 10)


def test_card_dict_round_trip():
    card = make_card("pse_ltae")
    draft = ModelCard.from_dict(card.to_dict(), complete=False)
    assert draft == card
    with pytest.raises(ModelFileError, match="weights_sha256 is missing"):
        ModelCard.from_dict(card.to_dict())


def test_model_files_get_the_usual_permissions(tmp_path):
    """Written through mkstemp (0600) but published like any file the user creates."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    model = get_model("gru", n_classes=19)
    save_model(model, make_card("gru"), tmp_path / "m")
    for path in model_paths(tmp_path / "m"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
