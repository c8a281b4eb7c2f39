"""Crop classes: the WorldCereal crop-type legend, its codes and names, and one colour per code.

Two files under ``resources/nomenclature/`` (``cropmodels.resources``):

* ``worldcereal_croptype_legend.csv``: the WorldCereal legend (columns ``name, croptype,
  ewoc_code, landcover``), copied unchanged from the WorldCereal repository (MIT licence,
  ``LICENSE-WorldCereal-MIT.txt`` beside it). It holds crop-type codes (1000-9998) and the
  land-cover codes WorldCereal uses beside them (10-99, and 0/991/9700 "Unknown").
* ``worldcereal_palette.csv``: ``code, name, colour`` with ``#rrggbb``, a fixed, distinct colour
  for every code of the legend (made by ``scripts/make_palette.py``; maize yellow, grassland
  green, potatoes brown...). Styling and the comparison panel read colours from here, so a class
  looks the same on every map, whichever model predicted it.

Names are the legend's, except where it misspells them (``NAME_FIXES``: "Cabages" ->
"Cabbages", as in the bundled sample's parcel layer). A model card carries its own classes
(code, name, colour); this module is how the bundled models' classes were made, and what the
plugin uses for codes that are in the legend.

Reading needs only the standard library; the files are read once and cached.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .modelcard import CropClass
from .resources import NOMENCLATURE_DIR

LEGEND_CSV = NOMENCLATURE_DIR / "worldcereal_croptype_legend.csv"
PALETTE_CSV = NOMENCLATURE_DIR / "worldcereal_palette.csv"
LICENCE_FILE = NOMENCLATURE_DIR / "LICENSE-WorldCereal-MIT.txt"
LEGEND_SOURCE = (
    "WorldCereal crop-type legend, github.com/WorldCereal/worldcereal-classification "
    "notebooks/resources/wc2eurocrops_map.csv (HEAD 6c574425), MIT licence, "
    "Copyright (c) 2023 ESA WorldCereal"
)
NAME_FIXES: dict[int, str] = {2130: "Cabbages"}
"""Codes whose legend name is misspelt, and the name used instead."""

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class NomenclatureError(ValueError):
    """A nomenclature file is missing or malformed."""


class UnknownCodeError(KeyError):
    """A code that is not in the WorldCereal legend."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class LegendEntry:
    """One row of the WorldCereal legend."""

    code: int
    name: str
    ewoc_code: str
    landcover: int


def _rows(path: Path, needed: set[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = set(reader.fieldnames or ())
    except OSError as exc:
        raise NomenclatureError(f"cannot read {path}: {exc}") from exc
    if not needed <= header:
        raise NomenclatureError(
            f"{path} must have the columns {', '.join(sorted(needed))}; it has "
            f"{', '.join(sorted(header)) or 'none'}"
        )
    return rows


@functools.cache
def entries() -> dict[int, LegendEntry]:
    """Every legend row by code, in the file's order."""
    out: dict[int, LegendEntry] = {}
    for i, row in enumerate(_rows(LEGEND_CSV, {"name", "croptype", "ewoc_code", "landcover"}), 2):
        try:
            code, landcover = int(row["croptype"]), int(row["landcover"])
        except (TypeError, ValueError):
            raise NomenclatureError(f"{LEGEND_CSV} line {i}: codes must be integers") from None
        if code in out:
            raise NomenclatureError(f"{LEGEND_CSV} line {i}: code {code} appears twice")
        name = NAME_FIXES.get(code, (row["name"] or "").strip())
        out[code] = LegendEntry(code, name, (row["ewoc_code"] or "").strip(), landcover)
    return out


def legend() -> dict[int, str]:
    """Code -> class name of the WorldCereal legend (a fresh dict: callers may change it)."""
    return {code: e.name for code, e in entries().items()}


@functools.cache
def _palette() -> dict[int, str]:
    codes = entries()
    out: dict[int, str] = {}
    for i, row in enumerate(_rows(PALETTE_CSV, {"code", "name", "colour"}), 2):
        try:
            code = int(row["code"])
        except (TypeError, ValueError):
            raise NomenclatureError(f"{PALETTE_CSV} line {i}: code must be an integer") from None
        colour = (row["colour"] or "").strip().lower()
        if not _COLOUR.match(colour):
            raise NomenclatureError(
                f"{PALETTE_CSV} line {i}: colour {row['colour']!r} is not like '#f2c80f'"
            )
        if code in out:
            raise NomenclatureError(f"{PALETTE_CSV} line {i}: code {code} appears twice")
        out[code] = colour
    missing = sorted(set(codes) - set(out))
    if missing:
        raise NomenclatureError(f"{PALETTE_CSV} has no colour for legend codes {missing}")
    return out


def palette() -> dict[int, str]:
    """Code -> ``#rrggbb`` for every legend code (a fresh dict)."""
    return dict(_palette())


def _known(code: int) -> int:
    try:
        number = int(code)
    except (TypeError, ValueError):
        raise UnknownCodeError(f"{code!r} is not an integer crop code") from None
    if number not in entries():
        raise UnknownCodeError(
            f"code {number} is not in the WorldCereal legend ({LEGEND_CSV.name}); a model "
            "card's own classes give the name and colour of codes from other nomenclatures"
        )
    return number


def name(code: int) -> str:
    """The legend's name of ``code``; :class:`UnknownCodeError` if it is not in the legend."""
    return entries()[_known(code)].name


def colour(code: int) -> str:
    """The palette's fixed ``#rrggbb`` colour of ``code``; :class:`UnknownCodeError` if the
    code is not in the legend."""
    return _palette()[_known(code)]


def crop_classes(codes: Iterable[int]) -> list[CropClass]:
    """:class:`~.modelcard.CropClass` (code, legend name, palette colour) of each code, in the
    given order; :class:`UnknownCodeError` names the first code outside the legend."""
    return [CropClass(c, name(c), colour(c)) for c in (_known(c) for c in codes)]


__all__ = [
    "LEGEND_CSV",
    "LEGEND_SOURCE",
    "LICENCE_FILE",
    "NAME_FIXES",
    "PALETTE_CSV",
    "LegendEntry",
    "NomenclatureError",
    "UnknownCodeError",
    "colour",
    "crop_classes",
    "entries",
    "legend",
    "name",
    "palette",
]
