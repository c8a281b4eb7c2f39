"""Bad model files, generated from a bundled model into a test's folder (issue 13, part B).

Each function copies the bundled ``gru`` pair (the smallest and fastest model) into ``folder``,
damages it one way, and returns the path of the card to load. The table of cases and what
each must give is in ``tests/data/bad/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import ROOT

MODEL = "gru"
BUNDLED = ROOT / "resources" / "models" / MODEL


def copy_model(folder: Path, name: str = MODEL) -> Path:
    """An intact copy of the bundled pair as ``folder/<name>.{safetensors,json}``; the card."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUNDLED / f"{MODEL}.safetensors", folder / f"{name}.safetensors")
    shutil.copyfile(BUNDLED / f"{MODEL}.json", folder / f"{name}.json")
    return folder / f"{name}.json"


def _edit_card(card: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = json.loads(card.read_text(encoding="utf-8"))
    edit(data)
    card.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return card


def _seal(card: Path) -> Path:
    """Make the card's sha256 that of the weights beside it (a tamperer who knows the format)."""
    weights = card.with_suffix(".safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return _edit_card(card, lambda d: d.update(weights_sha256=digest))


# -- weights ----------------------------------------------------------------------------------


def truncated_weights(folder: Path) -> Path:
    """The weights file cut in half, as by an interrupted download or copy."""
    card = copy_model(folder)
    weights = card.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return card


def truncated_weights_sealed(folder: Path) -> Path:
    """Truncated, and the card's sha256 updated to match: only safetensors itself can tell."""
    return _seal(truncated_weights(folder))


def weights_changed_after_card(folder: Path) -> Path:
    """One byte of a tensor changed after the card was written (same size, valid header)."""
    card = copy_model(folder)
    weights = card.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    return card


def tampered_sha256(folder: Path) -> Path:
    """The card's weights_sha256 edited (valid hex, another file's hash)."""
    card = copy_model(folder)
    return _edit_card(card, lambda d: d.update(weights_sha256="0" * 64))


# -- cards ------------------------------------------------------------------------------------


def invalid_json_card(folder: Path) -> Path:
    """The card cut short: not JSON any more."""
    card = copy_model(folder)
    text = card.read_text(encoding="utf-8")
    card.write_text(text[: len(text) // 3], encoding="utf-8")
    return card


def missing_field_card(folder: Path) -> Path:
    """The card without its ``bands``."""
    return _edit_card(copy_model(folder), lambda d: d.pop("bands"))


def edited_field_card(folder: Path) -> Path:
    """A hyper-parameter edited (hidden_size 156 -> 128): the weights no longer fit the card."""
    return _edit_card(copy_model(folder), lambda d: d["hparams"].update(hidden_size=128))


def wrong_type_field_card(folder: Path) -> Path:
    """A field of the wrong type (n_bands as a string)."""
    return _edit_card(copy_model(folder), lambda d: d.update(n_bands="10"))


def classes_mismatch_card(folder: Path) -> Path:
    """One class removed from the card: 2 classes, but the weights have 3 outputs."""
    return _edit_card(copy_model(folder), lambda d: d.update(classes=d["classes"][:2]))


def bands_stack_lacks_card(folder: Path) -> Path:
    """A card asking for band B01 (coastal aerosol), which no stack of the paper's bands has."""

    def edit(d: dict[str, Any]) -> None:
        d["bands"] = ["B01", *d["bands"][1:]]

    return _edit_card(copy_model(folder), edit)


def path_field_card(folder: Path, value: str = "../../outside/evil.safetensors") -> Path:
    """A card naming its weights by a path (``..``, absolute): cards hold no paths at all."""
    return _edit_card(copy_model(folder), lambda d: d.update(weights_file=value))


# -- pickles ----------------------------------------------------------------------------------


class Marker:
    """Unpickling this creates ``path`` (by ``open(path, "w")``): a harmless stand-in for the
    code a malicious pickle would run. If the file exists after a test, something unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def malicious_pickle(marker: Path) -> bytes:
    """Plain pickle bytes whose loading creates ``marker``."""
    return pickle.dumps({"weight": Marker(marker)})


def pickle_as_safetensors(folder: Path, marker: Path, *, torch_save: bool = True) -> Path:
    """A pickle (by ``torch.save``, else ``pickle.dumps``) renamed ``gru.safetensors``, the card
    sealed to its sha256 (the attacker wrote both): loading it must never unpickle."""
    card = copy_model(folder)
    weights = card.with_suffix(".safetensors")
    if torch_save:
        import torch

        torch.save({"weight": Marker(marker)}, weights)
    else:
        weights.write_bytes(malicious_pickle(marker))
    return _seal(card)


# -- paths out of the folder ------------------------------------------------------------------


def weights_symlink_outside(folder: Path) -> Path:
    """``gru.safetensors`` is a symbolic link to a file outside the model's folder."""
    outside = folder / "elsewhere"
    real = copy_model(outside)
    model_folder = folder / "model"
    model_folder.mkdir(parents=True)
    shutil.copyfile(real, model_folder / real.name)
    (model_folder / f"{MODEL}.safetensors").symlink_to(real.with_suffix(".safetensors"))
    return model_folder / real.name


def card_symlink_elsewhere(folder: Path) -> Path:
    """The card links to another folder's card but the weights beside the link are local: the
    pair would come from two folders."""
    real = copy_model(folder / "elsewhere")
    model_folder = folder / "model"
    model_folder.mkdir(parents=True)
    shutil.copyfile(real.with_suffix(".safetensors"), model_folder / f"{MODEL}.safetensors")
    (model_folder / real.name).symlink_to(real)
    return model_folder / real.name


def linked_pair(folder: Path) -> Path:
    """Both files linked from one other folder: allowed (the pair is still one folder's)."""
    real = copy_model(folder / "elsewhere")
    model_folder = folder / "model"
    model_folder.mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        (model_folder / f"{MODEL}{suffix}").symlink_to(real.with_suffix(suffix))
    return model_folder / real.name


# The cases the command line and the Processing algorithms must refuse: name -> (generator,
# a regular expression the one-line message must match).
REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated_weights": (truncated_weights, r"modified or does not belong.*reinstall"),
    "truncated_weights_sealed": (truncated_weights_sealed, r"not a valid safetensors file"),
    "weights_changed_after_card": (weights_changed_after_card, r"sha256.*changed or damaged"),
    "tampered_sha256": (tampered_sha256, r"does not belong to this card.*expects 0000"),
    "invalid_json_card": (invalid_json_card, r"not valid JSON \(line \d+.*reinstall"),
    "missing_field_card": (missing_field_card, r"missing field 'bands'.*reinstall"),
    "edited_field_card": (edited_field_card, r"shape mismatches.*card was edited"),
    "wrong_type_field_card": (wrong_type_field_card, r"n_bands must be a positive integer"),
    "classes_mismatch_card": (classes_mismatch_card, r"\(2 classes.*shape mismatches"),
    "bands_stack_lacks_card": (bands_stack_lacks_card, r"expects the bands B01.*B02"),
    "path_field_card": (path_field_card, r"unknown field\(s\) 'weights_file'"),
    "weights_symlink_outside": (weights_symlink_outside, r"leads outside the model's folder"),
    "card_symlink_elsewhere": (card_symlink_elsewhere, r"links to .* another folder than"),
}
