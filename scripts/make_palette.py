"""Write ``resources/nomenclature/worldcereal_palette.csv``: one fixed colour per legend code.

The palette file is the source of truth (styling and the comparison panel read it through
``cropmodels.nomenclature``); this script documents how it was made and rebuilds it
deterministically:

* crops that are common in European LPIS data, and the sample's five classes, have hand-picked
  colours in the conventions of crop maps: maize yellow, wheat and barley golden, potatoes
  brown, grassland green, leguminous crops purple, sugar beet magenta, rapeseed lemon, water
  blue, forest dark green, built-up red;
* every other code gets a shade of its family's hue (cereals golden, vegetables blue-green,
  fruit red, oilseeds yellow-olive, roots and tubers brown, beverage and spice crops maroon,
  leguminous purple, sugar crops magenta, grasses green, fibre blue, medicinal cyan, flowers
  pink, other crops grey-blue), spread over the family's hue range and lightness by a
  low-discrepancy sequence in code order;
* colours are distinct: a generated colour closer than ``MIN_DISTANCE`` (CIE76 Delta E in Lab)
  to one already given is nudged until it is not.

The sample's five classes differ in lightness as well as hue (maize light, grass and cabbages
mid, leguminous and potatoes dark), so they stay apart for red-green colour-blind readers; the
tests check this with a deuteranopia simulation.

    .venv/bin/python scripts/make_palette.py [--out resources/nomenclature/worldcereal_palette.csv]
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOMENCLATURE = ROOT / "resources" / "nomenclature"
LEGEND = NOMENCLATURE / "worldcereal_croptype_legend.csv"
OUT = NOMENCLATURE / "worldcereal_palette.csv"
MIN_DISTANCE = 6.0  # CIE76 Delta E between any two colours of the palette

# Names corrected where the legend misspells them (the legend file itself stays unchanged).
NAME_FIXES = {2130: "Cabbages"}

FIXED = {
    # unknown / no data
    0: "#9e9e9e",
    991: "#b8b8b8",
    # cereals: golden; maize the classic bright yellow
    1000: "#d9a834",
    1100: "#c98f2c",
    1110: "#b57d22",
    1120: "#e2b45e",
    1200: "#f2c80f",
    1300: "#5fbfae",  # rice: flooded paddies, teal
    1400: "#b0582a",  # sorghum: rust
    1500: "#e9d16d",
    1510: "#d6ba47",
    1520: "#f2e39f",
    1600: "#b38a4c",
    1700: "#ecdcb0",
    # vegetables: blue-green; cabbages glaucous blue
    2000: "#2f9e8f",
    2130: "#4aa3d8",
    2230: "#d7301f",  # tomatoes
    2310: "#ef8a2b",  # carrots
    2340: "#c2a5cf",  # onions
    # fruit
    3000: "#c2185b",
    3300: "#6a1b9a",  # grapes
    3450: "#e8466a",  # strawberries
    3510: "#d64a4a",  # apples
    # oilseeds: rapeseed lemon, sunflower orange, soya olive
    4000: "#c8c83c",
    4100: "#8f9a3a",
    4350: "#e8ee2a",
    4351: "#d8de20",
    4352: "#f0f47a",
    4380: "#ffa41b",
    4420: "#7a8450",  # olives
    # roots and tubers: browns; potatoes mid-dark brown
    5000: "#a0642d",
    5100: "#7a4006",
    # beverage and spice crops
    6000: "#7f2b2b",
    # leguminous crops: purples
    7000: "#7b4fa3",
    7700: "#b39ddb",  # peas
    7900: "#5b2c86",
    7910: "#9d7cc9",
    7920: "#3f1d60",
    # sugar crops: magenta
    8000: "#b8327a",
    8100: "#c51b7d",
    8200: "#de77ae",
    # other crops, grasses and fodder, fibre, flowers
    9000: "#8c8c9c",
    9100: "#3d8b37",
    9110: "#a6d96a",
    9120: "#5fb04e",
    9200: "#3a6fb0",
    9213: "#6b8fd6",  # flax: blue flowers
    9500: "#f06eaa",
    9600: "#8a7a3a",  # tobacco
    9998: "#c0a0a0",  # mixed cropping
    # land cover (WorldCereal's non-crop-type codes)
    10: "#e0c878",
    11: "#d8c39a",
    12: "#c07a3a",
    13: "#c6e6a4",
    20: "#b8d88a",
    30: "#a8883a",
    40: "#2e7d32",
    41: "#1b5e20",
    42: "#3f6f3a",
    50: "#d8cdb8",
    60: "#e0201c",
    70: "#1f6fd1",
    80: "#eef4f8",
    98: "#7d7d6a",
    99: "#5d5d5d",
}

# (hue in degrees, hue spread, saturation, lightness range) of each family's generated shades
FAMILIES = {
    "cereals": (40, 20, 0.62, (0.40, 0.72)),
    "vegetables": (165, 30, 0.50, (0.30, 0.62)),
    "fruit": (0, 50, 0.65, (0.40, 0.76)),
    "oilseeds": (62, 16, 0.55, (0.36, 0.66)),
    "roots": (28, 14, 0.50, (0.26, 0.50)),
    "beverage": (345, 40, 0.50, (0.16, 0.38)),
    "leguminous": (272, 20, 0.40, (0.34, 0.66)),
    "sugar": (322, 14, 0.55, (0.40, 0.66)),
    "grasses": (105, 20, 0.45, (0.40, 0.66)),
    "fibre": (215, 20, 0.50, (0.38, 0.66)),
    "medicinal": (188, 14, 0.50, (0.34, 0.56)),
    "rubber": (25, 10, 0.20, (0.30, 0.50)),
    "flowers": (330, 20, 0.70, (0.62, 0.80)),
    "tobacco": (48, 10, 0.40, (0.30, 0.46)),
    "other": (230, 20, 0.15, (0.45, 0.70)),
}
# low-discrepancy steps (Kronecker sequence) spreading a family's shades over hue and lightness
_STEPS = (0.6180339887, 0.7548776662, 0.5698402910)


def family(code: int) -> str:
    if code < 1000:
        return "other"
    head, hundreds = code // 1000, code // 100
    if head == 9:
        return {
            91: "grasses", 92: "fibre", 93: "medicinal", 94: "rubber", 95: "flowers",
            96: "tobacco",
        }.get(hundreds, "other")  # fmt: skip
    return {
        1: "cereals", 2: "vegetables", 3: "fruit", 4: "oilseeds", 5: "roots", 6: "beverage",
        7: "leguminous", 8: "sugar",
    }[head]  # fmt: skip


def hex_colour(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in rgb)


def to_lab(colour: str) -> tuple[float, float, float]:
    """sRGB hex -> CIE Lab (D65)."""
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    x = (0.4124 * lin[0] + 0.3576 * lin[1] + 0.1805 * lin[2]) / 0.95047
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    z = (0.0193 * lin[0] + 0.1192 * lin[1] + 0.9505 * lin[2]) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def distance(a: str, b: str) -> float:
    return math.dist(to_lab(a), to_lab(b))


def read_legend(path: Path = LEGEND) -> list[tuple[int, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [
            (int(r["croptype"]), NAME_FIXES.get(int(r["croptype"]), r["name"].strip()))
            for r in csv.DictReader(f)
        ]


def palette(legend: list[tuple[int, str]]) -> dict[int, str]:
    colours: dict[int, str] = {}
    for code, _ in legend:
        if code in FIXED:
            close = [c for c, v in colours.items() if distance(v, FIXED[code]) < MIN_DISTANCE]
            if close:
                raise ValueError(f"the fixed colours of {code} and {close} are too close")
            colours[code] = FIXED[code]
    members: dict[str, list[int]] = {}
    for code, _ in sorted(legend):
        if code not in FIXED:
            members.setdefault(family(code), []).append(code)
    for name, codes in sorted(members.items()):
        hue, spread, sat, (low, high) = FAMILIES[name]
        k = 0
        for code in codes:
            # the next shade of the family's sequence that is distinct from every colour so far
            while True:
                k += 1
                u, v, w = ((k * a) % 1.0 for a in _STEPS)
                h = ((hue + spread * (u - 0.5)) % 360) / 360
                colour = hex_colour(colorsys.hls_to_rgb(h, low + (high - low) * v,
                                                        sat * (0.75 + 0.25 * w)))  # fmt: skip
                if all(distance(colour, c) >= MIN_DISTANCE for c in colours.values()):
                    break
                if k > 100_000:
                    raise RuntimeError(f"no distinct colour left for family {name}")
            colours[code] = colour
    return colours


def write(out: Path = OUT) -> Path:
    legend = read_legend()
    colours = palette(legend)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["code", "name", "colour"])
        for code, name in legend:
            writer.writerow([code, name, colours[code]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    path = write(args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
