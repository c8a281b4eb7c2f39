"""The paper's architectures behind one name -> builder registry.

Every model is built the same way, ``get_model(name, n_classes=19, n_bands=10, **hparams)``, and
answers ``forward(x, mask=None, doy=None) -> logits (B, n_classes)``. The registry is an explicit
dict (no registration by import side effect) whose entries name their module and class as strings:
listing the models or reading their specs needs no torch, so the plugin can show Table 1 and
explain what is missing before torch is installed.

Garnot et al. (IGARSS 2019), Table 1, with 19 output classes:

============  ============  ======  =========
name          kernels       hidden  parameters
============  ============  ======  =========
cnn           16:32:96      -       92,899
cnn_gru7      16:32:64      64      92,035
cnn_gru8      16:32:36      96      93,807
cnn_gru9      16:16:16      128     90,179
gru           -             156     94,587
convlstm      30:64         (16)    94,457 (paper 95,353, -0.94%, see ``convlstm.py``)
============  ============  ======  =========

plus ``pse_ltae`` (Garnot and Landrieu 2020), the first architecture beyond the paper.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

PATCHES = "patches"
FEATURES = "features"
INPUT_KINDS = (PATCHES, FEATURES)

PAPER_N_CLASSES = 19
"""Output size behind Table 1's parameter counts (18 classes plus the undefined class)."""


@dataclass(frozen=True)
class PaperRow:
    """One architecture's row in Garnot et al. 2019 (Tables 1, 2 and 4), as printed."""

    kernels: str
    hidden_size: str
    temporal_ratio: str
    parameters: int
    oa: float
    fscore: float
    precision: float
    recall: float
    fscore_shuffled: float | None = None


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows about an architecture without building it.

    ``defaults`` are the architecture's hyper-parameters (the paper's values); ``builder`` is
    ``"module:Class"`` inside this package, imported on first use.
    """

    name: str
    title: str
    input_kind: str
    builder: str
    defaults: Mapping[str, Any]
    description: str
    reference: str
    paper: PaperRow | None = None
    uses_doy: bool = False
    note: str = ""
    """How the implementation reads the paper where it is ambiguous (copied into model cards)."""

    @property
    def paper_parameter_count(self) -> int | None:
        return None if self.paper is None else self.paper.parameters

    def default_hparams(self) -> dict[str, Any]:
        """A fresh, mutable copy of the defaults (lists rather than tuples, as in a card)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.defaults.items()}


_GARNOT_2019 = (
    "Garnot, Landrieu, Giordano, Chehata, Time-Space Tradeoff in Deep Learning Models for Crop "
    "Classification on Satellite Multi-Spectral Image Time Series, IGARSS 2019"
)
_GARNOT_2020 = (
    "Garnot, Landrieu, Lightweight Temporal Self-Attention for Classifying Satellite Images Time "
    "Series, AALTD 2020; Garnot et al., Satellite Image Time Series Classification with Pixel-Set "
    "Encoders and Temporal Self-Attention, CVPR 2020"
)


CONVLSTM_NOTE = (
    "94,457 parameters with 19 classes, 896 (0.94%) below Table 1's 95,353. A 3x3 ConvLSTM with "
    "64 hidden channels alone would need 295k parameters, so Table 1's '64' is read as the 64 "
    "gate kernels (4 gates x 16 channels) of a 3x3 cell, after the paper's unpadded conv block "
    "with 30 then 64 kernels (6x6 maps) and before its 128-64 MLP (last state max-pooled to "
    "16x3x3). No natural variant matches exactly; exact counts need arbitrary choices (a 1x1 "
    "cell without gate biases and an extra 64-unit layer, which loses spatial recurrence, or "
    "spatial peepholes plus an extra convolution)."
)


def _spec(**kwargs: Any) -> ArchitectureSpec:
    kwargs["defaults"] = MappingProxyType(dict(kwargs["defaults"]))
    return ArchitectureSpec(**kwargs)


def _cnn_gru(
    name: str, title: str, kernels: tuple[int, int, int], hidden: int, row: PaperRow
) -> ArchitectureSpec:
    return _spec(
        name=name,
        title=title,
        input_kind=PATCHES,
        builder="cnn_gru:CNNGRU",
        defaults={
            "kernels": kernels,
            "hidden_size": hidden,
            "mlp_hidden": (64,),
            "patch_size": 32,
        },
        description=(
            f"per-date CNN {kernels[0]}:{kernels[1]}:{kernels[2]}, GRU over dates (hidden "
            f"{hidden}), last valid state -> MLP {hidden}-64"
        ),
        reference=_GARNOT_2019,
        paper=row,
    )


_SPECS: dict[str, ArchitectureSpec] = {
    s.name: s
    for s in (
        _spec(
            name="cnn",
            title="CNN",
            input_kind=PATCHES,
            builder="cnn:CNN",
            defaults={"kernels": (16, 32, 96), "mlp_hidden": (128, 64), "patch_size": 32},
            description="per-date CNN 16:32:96, max over dates (PointNet), MLP 384-128-64",
            reference=_GARNOT_2019,
            paper=PaperRow("16:32:96", "-", "0", 92_899, 89.5, 34.9, 53.0, 31.4),
        ),
        _cnn_gru(
            "cnn_gru7",
            "CNN+GRU7",
            (16, 32, 64),
            64,
            PaperRow("16:32:64", "64", "0.7", 92_035, 93.4, 53.2, 59.7, 49.9, 52.0),
        ),
        _cnn_gru(
            "cnn_gru8",
            "CNN+GRU8",
            (16, 32, 36),
            96,
            PaperRow("16:32:36", "96", "0.8", 93_807, 93.7, 55.1, 63.3, 51.6),
        ),
        _cnn_gru(
            "cnn_gru9",
            "CNN+GRU9",
            (16, 16, 16),
            128,
            PaperRow("16:16:16", "128", "0.9", 90_179, 93.7, 55.1, 65.1, 51.8, 48.8),
        ),
        _spec(
            name="gru",
            title="GRU",
            input_kind=FEATURES,
            builder="gru:GRUClassifier",
            defaults={"hidden_size": 156, "mlp_hidden": (64,)},
            description="GRU (hidden 156) over per-date band means and stds, MLP 156-64",
            reference=_GARNOT_2019,
            paper=PaperRow("-", "156", "1", 94_587, 93.5, 53.8, 63.0, 50.0, 45.3),
        ),
        _spec(
            name="convlstm",
            title="ConvLSTM",
            input_kind=PATCHES,
            builder="convlstm:ConvLSTMClassifier",
            defaults={
                "kernels": (30, 64),
                "hidden_channels": 16,
                "kernel_size": 3,
                "mlp_hidden": (128, 64),
                "patch_size": 32,
            },
            description=(
                "per-date CNN 30:64, 3x3 ConvLSTM with 16 hidden channels (64 gate kernels), "
                "last valid state max-pooled, MLP 144-128-64"
            ),
            reference=_GARNOT_2019,
            paper=PaperRow("30:64", "64", "-", 95_353, 93.1, 49.2, 64.0, 44.5, 47.9),
            note=CONVLSTM_NOTE,
        ),
        _spec(
            name="pse_ltae",
            title="PSE+L-TAE",
            input_kind=PATCHES,
            builder="pse_ltae:PSELTAE",
            defaults={
                "pse_mlp1": (32, 64),
                "pse_mlp2": (128,),
                "n_head": 16,
                "d_k": 8,
                "d_model": 256,
                "ltae_mlp": (128,),
                "decoder_mlp": (64, 32),
                "dropout": 0.2,
                "max_period": 1000,
            },
            description=(
                "pixel-set encoder (mean+std over parcel pixels) then lightweight temporal "
                "attention (16 heads, d_k 8) with day-of-year positions, MLP 128-64-32"
            ),
            reference=_GARNOT_2020,
            uses_doy=True,
        ),
    )
}

RENAMED: dict[str, str] = {}
"""Old architecture ids -> current ids, so model cards written before a rename still load."""


def list_models() -> list[str]:
    """Registered architecture names, the paper's six first, in Table 1 order."""
    return list(_SPECS)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown architecture {name!r}; valid names: {', '.join(_SPECS)}"
        " (a model file naming another one may need a newer cropmodels)"
    )


def get_spec(name: str) -> ArchitectureSpec:
    """The frozen spec of ``name`` (old names in ``RENAMED`` are accepted)."""
    spec = _SPECS.get(RENAMED.get(name, name))
    if spec is None:
        raise _unknown(name)
    return spec


def get_model(
    name: str, n_classes: int = PAPER_N_CLASSES, n_bands: int = 10, **hparams: Any
) -> nn.Module:
    """Build architecture ``name``; ``hparams`` override the paper's defaults.

    Raises ``ValueError`` for an unknown name or hyper-parameter, listing the valid ones.
    The returned module has ``architecture`` set to the registry name.
    """
    spec = get_spec(name)
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) for {spec.name!r}: {', '.join(unknown)}; "
            f"valid: {', '.join(spec.defaults)}"
        )
    module_name, class_name = spec.builder.split(":")
    cls = getattr(importlib.import_module(f".{module_name}", __package__), class_name)
    model = cls(n_classes=n_classes, n_bands=n_bands, **{**spec.defaults, **hparams})
    model.architecture = spec.name
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def temporal_parameter_ratio(model: nn.Module, of: str = "total") -> float:
    """Share of parameters in the temporal module (GRU, ConvLSTM cell, L-TAE).

    ``of="total"`` divides by all parameters (what a model card stores); ``of="encoder"``
    leaves the classifier MLP out, which is how Table 1's column was computed: it gives
    0.71 / 0.81 / 0.92 / 1.0 for CNN+GRU7/8/9 and GRU, printed there as 0.7 / 0.8 / 0.9 / 1.
    """
    parts = model.parameter_breakdown()
    if of == "total":
        denominator = sum(parts.values())
    elif of == "encoder":
        denominator = parts["spatial"] + parts["temporal"]
    else:
        raise ValueError(f"of must be 'total' or 'encoder', not {of!r}")
    return parts["temporal"] / denominator if denominator else 0.0


__all__ = [
    "FEATURES",
    "INPUT_KINDS",
    "PAPER_N_CLASSES",
    "PATCHES",
    "RENAMED",
    "ArchitectureSpec",
    "PaperRow",
    "get_model",
    "get_spec",
    "list_models",
    "parameter_count",
    "temporal_parameter_ratio",
]
