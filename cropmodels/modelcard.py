"""Self-describing model files: ``<stem>.safetensors`` (weights) + ``<stem>.json`` (card).

The card (DESIGN section 3) states everything needed to rebuild and feed the model:
architecture and hyper-parameters, classes with codes, names and colours, bands, date grid,
patch size, the training set's per-date normalisation statistics, provenance, metrics,
parameter count, versions and the sha256 of the weights file. Loading checks the card's
schema, the weights' hash, and that the tensors are those the card's architecture builds,
and says plainly what does not match. Weights are read with ``safetensors`` only: a model file
is never unpickled, so opening a model from someone else cannot run code.

Reading and validating a card needs no torch (the plugin lists models before torch exists);
``save_model`` and ``load_model`` import torch and safetensors when called.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .architectures import FEATURES, INPUT_KINDS, PATCHES, get_spec
from .files import publish_mode
from .stack import PAPER_BANDS

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"

MAX_SEASON_DAY = 3 * 366  # date grids span at most three calendar years
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LISTED = 8
# What to do about a damaged or edited model file, said at the end of each such message.
_REINSTALL = "restore the model's original files (reinstall it) or retrain it"
# Fields a card on disk may omit; every other field is required (``None`` where allowed).
_OPTIONAL_FIELDS = frozenset({"architecture_note"})
# Fields ``save_model`` fills in, so a card being prepared for saving may leave them empty.
_FILLED_ON_SAVE = ("parameter_count", "temporal_parameter_ratio", "created", "weights_sha256")


class ModelFileError(ValueError):
    """A model file pair is missing, malformed, tampered with, or inconsistent."""


@dataclass(frozen=True)
class CropClass:
    """One output class: its code in the nomenclature, display name and map colour."""

    code: int
    name: str
    colour: str


@dataclass
class ModelCard:
    """The JSON card of a model file (DESIGN section 3); ``to_dict``/``from_dict`` for JSON.

    ``normalisation`` holds per-date channel-wise statistics ``{"mean": rows, "std": rows}``,
    one row per date of ``date_grid`` (or a single row for date-agnostic statistics), each row
    ``n_bands`` values for patches or ``2 * n_bands`` for features. ``date_grid`` lists the
    dates as *season days*, counted from 1 January of the year of the first date (1..366 within
    that year, 367.. in the next, so a season across New Year or longer than a year is still
    increasing); ``None`` when the model takes any dates.
    """

    name: str
    architecture: str
    hparams: dict[str, Any]
    n_bands: int
    bands: list[str]
    classes: list[CropClass]
    input_kind: str
    normalisation: dict[str, list[list[float]]]
    date_grid: list[int] | None = None
    patch_size: int | None = 32
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = "1.0.0"
    format_version: int = FORMAT_VERSION
    cropmodels_version: str = __version__
    parameter_count: int | None = None
    temporal_parameter_ratio: float | None = None
    created: str | None = None
    weights_sha256: str | None = None
    architecture_note: str | None = None

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["architecture_note"] is None:
            del data["architecture_note"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card", complete: bool = True) -> ModelCard:
        """Validate a parsed JSON card and build it; every problem is reported at once."""
        if not isinstance(data, Mapping):
            raise ModelFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data and n not in _OPTIONAL_FIELDS]
        unknown = sorted(set(data) - set(names))
        problems = [f"missing field {n!r}" for n in missing]
        if unknown:
            problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
        if problems:
            raise ModelFileError(_report(source, problems))
        values = dict(data)
        raw_classes = values["classes"]
        if isinstance(raw_classes, list) and all(isinstance(c, Mapping) for c in raw_classes):
            class_problems = []
            classes = []
            for i, c in enumerate(raw_classes):
                if set(c) != {"code", "name", "colour"}:
                    class_problems.append(
                        f"classes[{i}] must have exactly the keys code, name, colour; "
                        f"has {sorted(c)}"
                    )
                else:
                    classes.append(CropClass(c["code"], c["name"], c["colour"]))
            if class_problems:
                raise ModelFileError(_report(source, class_problems))
            values["classes"] = classes
        card = cls(**values)
        card.validate(source, complete=complete)
        return card

    # -- validation -------------------------------------------------------------------
    def problems(self, complete: bool = True) -> list[str]:
        """Everything wrong with this card; ``complete=False`` allows the fields filled on save."""
        out: list[str] = []

        def need(ok: bool, message: str) -> bool:
            if not ok:
                out.append(message)
            return ok

        if need(_is_int(self.format_version), "format_version must be an integer"):
            need(
                1 <= self.format_version <= FORMAT_VERSION,
                f"format_version {self.format_version} is not supported by cropmodels "
                f"{__version__} (it reads up to {FORMAT_VERSION}); a newer cropmodels may be "
                "needed",
            )
        need(_is_text(self.name), "name must be a non-empty string")
        spec = None
        if need(_is_text(self.architecture), "architecture must be a non-empty string"):
            try:
                spec = get_spec(self.architecture)
            except ValueError as exc:
                out.append(str(exc))
        if need(isinstance(self.hparams, Mapping), "hparams must be a JSON object") and spec:
            unknown = sorted(set(self.hparams) - set(spec.defaults))
            need(
                not unknown,
                f"hparams {unknown} are not hyper-parameters of {spec.name!r} "
                f"(valid: {', '.join(spec.defaults)})",
            )
        bands_ok = need(
            _is_int(self.n_bands) and self.n_bands > 0, "n_bands must be a positive integer"
        )
        if need(
            isinstance(self.bands, list) and all(_is_text(b) for b in self.bands),
            "bands must be a list of band names such as 'B02'",
        ):
            need(len(set(self.bands)) == len(self.bands), "bands are not unique")
            if bands_ok:
                need(
                    len(self.bands) == self.n_bands,
                    f"bands lists {len(self.bands)} names but n_bands is {self.n_bands}",
                )
        out += _class_problems(self.classes)
        kind_ok = need(
            self.input_kind in INPUT_KINDS, f"input_kind must be one of {', '.join(INPUT_KINDS)}"
        )
        if kind_ok and spec:
            need(
                self.input_kind == spec.input_kind,
                f"input_kind {self.input_kind!r} but {spec.name!r} consumes {spec.input_kind!r}",
            )
        grid_ok = self.date_grid is None or (
            isinstance(self.date_grid, list)
            and all(_is_int(d) and 1 <= d <= MAX_SEASON_DAY for d in self.date_grid)
        )
        if need(
            grid_ok,
            f"date_grid must be null or a list of season days (1..{MAX_SEASON_DAY}, counted "
            "from 1 January of the first date's year)",
        ):
            grid = self.date_grid or []
            need(
                all(a < b for a, b in itertools.pairwise(grid)),
                "date_grid must be strictly increasing",
            )
        if self.patch_size is not None or self.input_kind == PATCHES:
            need(
                _is_int(self.patch_size) and self.patch_size > 0,
                "patch_size must be a positive integer for a model consuming patches",
            )
        if bands_ok and kind_ok and grid_ok:
            width = 2 * self.n_bands if self.input_kind == FEATURES else self.n_bands
            out += _normalisation_problems(self.normalisation, width, len(self.date_grid or []))
        need(isinstance(self.provenance, Mapping), "provenance must be a JSON object")
        need(isinstance(self.metrics, Mapping), "metrics must be a JSON object")
        need(_is_text(self.version), "version must be a non-empty string")
        need(_is_text(self.cropmodels_version), "cropmodels_version must be a non-empty string")
        need(
            self.architecture_note is None or isinstance(self.architecture_note, str),
            "architecture_note must be a string",
        )
        for name in _FILLED_ON_SAVE:
            if getattr(self, name) is None:
                need(not complete, f"{name} is missing (save_model fills it in)")
        if self.parameter_count is not None:
            need(
                _is_int(self.parameter_count) and self.parameter_count > 0,
                "parameter_count must be a positive integer",
            )
        if self.temporal_parameter_ratio is not None:
            ratio = self.temporal_parameter_ratio
            need(
                _is_number(ratio) and 0.0 <= ratio <= 1.0,
                "temporal_parameter_ratio must be a number in [0, 1]",
            )
        if self.created is not None:
            need(_is_iso_time(self.created), "created must be an ISO 8601 date-time")
        if self.weights_sha256 is not None:
            need(
                isinstance(self.weights_sha256, str) and bool(_SHA256.match(self.weights_sha256)),
                "weights_sha256 must be 64 lowercase hexadecimal digits",
            )
        return out

    def validate(self, source: str = "model card", complete: bool = True) -> None:
        """Raise ``ModelFileError`` listing every problem, if any."""
        problems = self.problems(complete=complete)
        if problems:
            raise ModelFileError(_report(source, problems))

    # -- conveniences -----------------------------------------------------------------
    @property
    def class_codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def normalisation_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays (n_dates or 1, n_bands or 2 * n_bands)."""
        import numpy as np

        return (
            np.asarray(self.normalisation["mean"], dtype=np.float32),
            np.asarray(self.normalisation["std"], dtype=np.float32),
        )


# -- field checks ---------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_iso_time(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def _class_problems(classes: Any) -> list[str]:
    if not isinstance(classes, list) or not classes:
        return ["classes must be a non-empty list of {code, name, colour}"]
    out = []
    for i, c in enumerate(classes):
        if not isinstance(c, CropClass):
            out.append(f"classes[{i}] must be an object with code, name and colour")
            continue
        if not _is_int(c.code):
            out.append(f"classes[{i}].code must be an integer, got {c.code!r}")
        if not _is_text(c.name):
            out.append(f"classes[{i}].name must be a non-empty string")
        if not (isinstance(c.colour, str) and _COLOUR.match(c.colour)):
            out.append(f"classes[{i}].colour must look like '#1f78b4', got {c.colour!r}")
    typed = [c for c in classes if isinstance(c, CropClass)]
    codes = [c.code for c in typed]
    duplicated = sorted({c for c in codes if codes.count(c) > 1}, key=str)
    if duplicated:
        out.append(f"class codes are not unique: {duplicated}")
    names = [c.name for c in typed]
    duplicated = sorted({n for n in names if names.count(n) > 1}, key=str)
    if duplicated:
        out.append(f"class names are not unique: {duplicated}")
    return out


def _normalisation_problems(norm: Any, width: int, n_dates: int) -> list[str]:
    if not isinstance(norm, Mapping) or set(norm) != {"mean", "std"}:
        return ["normalisation must be an object with exactly 'mean' and 'std'"]
    rows_allowed = sorted({1, n_dates} - {0})
    out = []
    for key in ("mean", "std"):
        rows = norm[key]
        if not (
            isinstance(rows, list)
            and rows
            and all(isinstance(r, list) and all(_is_number(v) for v in r) for r in rows)
        ):
            out.append(f"normalisation.{key} must be a list of rows of finite numbers")
            continue
        shape = (len(rows), {len(r) for r in rows})
        if shape[0] not in rows_allowed or shape[1] != {width}:
            out.append(
                f"normalisation.{key} has {shape[0]} row(s) of {sorted(shape[1])} values; "
                f"expected {' or '.join(map(str, rows_allowed))} row(s) (per date of date_grid, "
                f"or one for all dates) of {width} values"
            )
        elif key == "std" and any(v <= 0 for r in rows for v in r):
            out.append("normalisation.std must be positive")
    return out


def _report(source: str, problems: list[str]) -> str:
    """One line (the CLI prints it after ``error:``): every problem, then what to do."""
    return f"{source} is not a valid model card: {'; '.join(problems)}; {_REINSTALL}"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


# -- files ----------------------------------------------------------------------------
def model_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(weights, card) paths of a model given either file of the pair or their common stem."""
    path = Path(path)
    if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + CARD_SUFFIX)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate the card of a model file pair (no torch needed, weights not read)."""
    _, card_path = model_paths(path)
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(
            f"model card {card_path} not found; a model is a pair <name>{WEIGHTS_SUFFIX} + "
            f"<name>{CARD_SUFFIX} in the same folder"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read model card {card_path}: {exc}; {_REINSTALL}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            f"model card {card_path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); {_REINSTALL}"
        ) from None
    return ModelCard.from_dict(data, source=f"model card {card_path}")


def _atomic_write(target: Path, write: Any) -> Path:
    """Write through ``write(tmp_path)`` to a temporary file beside ``target``; returns it."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        publish_mode(tmp)  # after writing: a writer may have replaced the file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    ``safetensors`` writes the ``__metadata__`` entries in hash-map order, which changes from
    call to call, so two saves of identical tensors could differ in bytes and sha256. Sorting
    the keys (same characters, so the same header length and 8-byte padding) makes the bytes a
    function of the tensors and metadata alone: retraining reproduces the weights file exactly.
    """
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    size = max(n, -(-len(text) // 8) * 8)  # the same length in practice; else re-padded to 8
    return size.to_bytes(8, "little") + text.ljust(size, b" ") + data[8 + n :]


def save_model(model: nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> ModelCard:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the card as written.

    The model is the truth for architecture, hyper-parameters, band count, input kind and
    parameter count: they are copied from it into the card, together with the weights' sha256,
    the creation time and cropmodels' version. Each file is written to a temporary file and
    renamed over the target, weights first: an interrupted save leaves either the old pair or a
    pair whose hash check fails on load, never a silently mismatched model.
    """
    from safetensors.torch import save

    from .architectures import parameter_count, temporal_parameter_ratio

    weights_path, card_path = model_paths(path)
    if not card_path.parent.is_dir():
        raise ModelFileError(f"folder {card_path.parent} does not exist")
    architecture = getattr(model, "architecture", "") or card.architecture
    if card.architecture and card.architecture != architecture:
        raise ModelFileError(
            f"the card says architecture {card.architecture!r} but the model is {architecture!r}"
        )
    n_classes = getattr(model, "n_classes", None)
    if n_classes is not None and n_classes != len(card.classes):
        raise ModelFileError(
            f"the card lists {len(card.classes)} classes but the model has {n_classes} outputs"
        )
    spec = get_spec(architecture)
    card = replace(
        card,
        architecture=spec.name,
        hparams=json.loads(json.dumps(model.hparams)),
        n_bands=model.n_bands,
        input_kind=model.input_kind,
        format_version=FORMAT_VERSION,
        cropmodels_version=__version__,
        parameter_count=parameter_count(model),
        temporal_parameter_ratio=round(temporal_parameter_ratio(model), 6),
        created=card.created or datetime.now(UTC).isoformat(timespec="seconds"),
        weights_sha256=None,
        architecture_note=card.architecture_note or spec.note or None,
    )
    card.validate(f"model card for {card_path}", complete=False)

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "architecture": spec.name, "card": card_path.name}
    data = canonical_safetensors(save(tensors, metadata=metadata))
    weights_tmp = _atomic_write(weights_path, lambda tmp: tmp.write_bytes(data))
    card_tmp = None
    try:
        card = replace(card, weights_sha256=sha256_of(weights_tmp.read_bytes()))
        card.validate(f"model card for {card_path}")
        text = json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n"
        card_tmp = _atomic_write(card_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        os.replace(weights_tmp, weights_path)
        os.replace(card_tmp, card_path)
    finally:
        weights_tmp.unlink(missing_ok=True)
        if card_tmp is not None:
            card_tmp.unlink(missing_ok=True)
    return card


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Load a model file pair (either path, or the stem) -> (model in eval mode, card).

    Checks, in order: the card's schema; the weights file's sha256 against the card; that the
    card's architecture and hyper-parameters build a model whose tensor names and shapes are
    those in the file; the parameter count. Raises ``ModelFileError`` saying what differs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .architectures import get_model, parameter_count

    weights_path, card_path = model_paths(path)
    card = read_card(card_path)
    check_inside_folder(card_path, weights_path)
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"weights file {weights_path} not found (the card {card_path.name} is there)"
        ) from None
    digest = sha256_of(data)
    if digest != card.weights_sha256:
        raise ModelFileError(
            f"{weights_path} was modified or does not belong to this card (its sha256 is "
            f"{digest[:16]}..., the card {card_path.name} expects {card.weights_sha256[:16]}...): "
            f"the file was changed or damaged; {_REINSTALL}"
        )
    try:  # the bytes just hashed are the bytes loaded; safetensors never unpickles
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(
            f"{weights_path} is not a valid safetensors file ({exc}); model files are only "
            f"read as safetensors, never unpickled: {_REINSTALL}"
        ) from None

    described = f"architecture {card.architecture!r} with hparams {card.hparams}"
    try:
        model = get_model(
            card.architecture, n_classes=len(card.classes), n_bands=card.n_bands, **card.hparams
        )
    except ValueError as exc:
        raise ModelFileError(
            f"{card_path}: the card's {described} do not build: {exc}; {_REINSTALL}"
        ) from exc

    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"tensors missing from the file: {_listed(missing)}")
    if unexpected:
        problems.append(f"tensors the card's model does not have: {_listed(unexpected)}")
    mismatched = [
        f"{k}: card says {tuple(v.shape)}, file has {tuple(tensors[k].shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if problems:
        raise ModelFileError(
            f"{weights_path} does not hold the weights of the card's {described} "
            f"({len(card.classes)} classes, {card.n_bands} bands): {'; '.join(problems)}; the "
            f"card was edited or belongs to other weights: {_REINSTALL}"
        )
    model.load_state_dict(tensors, strict=True)
    count = parameter_count(model)
    if count != card.parameter_count:
        raise ModelFileError(
            f"{card_path}: parameter_count is {card.parameter_count} but the model built from "
            f"the card has {count} parameters; {_REINSTALL}"
        )
    return model.to(device).eval(), card


def check_inside_folder(card_path: Path, weights_path: Path) -> None:
    """Refuse a weights file that is (or links to) a file outside the card's folder.

    A model is the pair ``<name>.safetensors`` + ``<name>.json`` in one folder and the card
    names no other file, so no ``..`` or absolute path can come from it; a symbolic link could
    still lead the weights elsewhere (a copied folder read from somewhere unexpected), so the
    pair must resolve to the same folder. A card linked from another folder is fine when its
    weights are linked from there too.
    """
    card_real, weights_real = card_path.resolve(), weights_path.resolve()
    if weights_real.parent == card_real.parent:
        return
    if card_real.parent != card_path.parent.resolve():  # the card is a link to elsewhere
        raise ModelFileError(
            f"the card {card_path} links to {card_real}, in another folder than its weights "
            f"{weights_real}; keep a model's two files in one folder (copy both, or link both)"
        )
    raise ModelFileError(
        f"{weights_path} leads outside the model's folder (to {weights_real}); a model's weights "
        f"must lie beside its card {card_path.name}: copy the real file there instead of linking "
        "to it"
    )


def bundled_models(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """Cards of the models shipped with the plugin, ``<folder>/<name>/<name>.json`` (default
    ``resources/models``), in the registry's order, then by name. Only the paths: nothing is
    read or validated here (:func:`read_card`, :func:`load_model` do that)."""
    from .architectures import list_models
    from .resources import MODELS_DIR

    root = Path(folder) if folder is not None else MODELS_DIR
    if not root.is_dir():
        return []
    cards = [
        sub / f"{sub.name}{CARD_SUFFIX}"
        for sub in root.iterdir()
        if sub.is_dir() and (sub / f"{sub.name}{CARD_SUFFIX}").is_file()
    ]
    order = {name: i for i, name in enumerate(list_models())}
    return sorted(cards, key=lambda p: (order.get(p.stem, len(order)), p.stem))


__all__ = [
    "CARD_SUFFIX",
    "FORMAT_VERSION",
    "PAPER_BANDS",
    "WEIGHTS_SUFFIX",
    "CropClass",
    "ModelCard",
    "ModelFileError",
    "bundled_models",
    "canonical_safetensors",
    "check_inside_folder",
    "load_model",
    "model_paths",
    "read_card",
    "save_model",
]
