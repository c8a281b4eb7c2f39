"""Blocks and input checks shared by the architectures.

Conventions every model follows:

- patches ``x``: (B, T, C, H, W) float, zeros outside the parcel; features ``x``: (B, T, 2C);
- ``mask``: (B, T) bool, True where the date is observed; ``None`` means every date is valid.
  Padded (or dropped) dates never influence the output: they are not encoded, not pooled, and
  recurrent states skip them, so a padded sequence gives what it gives alone;
- ``doy``: (B, T) day of year, only read by models with a temporal position encoding;
- the output is raw logits (B, n_classes): apply softmax for probabilities, or feed
  ``nn.CrossEntropyLoss`` directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import FEATURES, INPUT_KINDS, PATCHES


def int_tuple(value: Any, name: str, allow_empty: bool = False) -> tuple[int, ...]:
    """Hyper-parameter given as int list/tuple (JSON gives lists) -> tuple of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}") from None
    if (not items and not allow_empty) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    return items


def positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def conv_block(c_in: int, c_out: int, padding: int = 0) -> nn.Sequential:
    """The paper's unit: conv 3x3 (no padding by default), BatchNorm, ReLU, MaxPool 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv_encoder(
    n_bands: int, kernels: Iterable[int], patch_size: int
) -> tuple[nn.Sequential, int]:
    """Stack of ``conv_block`` s; returns it and the side of its output map (32 -> 2 for 3)."""
    kernels = tuple(kernels)
    layers, c_in, side = [], n_bands, patch_size
    for c_out in kernels:
        side = (side - 2) // 2
        if side < 1:
            raise ValueError(f"patch_size {patch_size} is too small for {len(kernels)} conv blocks")
        layers.append(conv_block(c_in, c_out))
        c_in = c_out
    return nn.Sequential(*layers), side


def mlp(n_in: int, hidden: Iterable[int], n_out: int, batch_norm: bool = False) -> nn.Sequential:
    """Linear-ReLU layers through ``hidden`` then a last linear layer to ``n_out`` (logits)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(n_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def count(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SequenceClassifier(nn.Module):
    """Base of every architecture: input checks, the mask, and the parameter breakdown.

    Subclasses set ``input_kind``, fill ``hparams`` (enough to rebuild them with
    ``get_model(architecture, n_classes, n_bands, **hparams)``) and name their parts
    ``spatial`` (per-date encoder), ``temporal`` (recurrent/attention part) and ``classifier``.
    """

    input_kind: str = PATCHES
    spatial: nn.Module | None
    temporal: nn.Module | None
    classifier: nn.Module

    def __init__(self, n_classes: int, n_bands: int) -> None:
        super().__init__()
        self.n_classes = positive_int(n_classes, "n_classes")
        self.n_bands = positive_int(n_bands, "n_bands")
        self.architecture = ""
        self.hparams: dict[str, Any] = {}
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}")

    # -- parameters -------------------------------------------------------------------
    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable parameters of the per-date encoder, the temporal part and the classifier."""
        return {
            "spatial": count(getattr(self, "spatial", None)),
            "temporal": count(getattr(self, "temporal", None)),
            "classifier": count(self.classifier),
        }

    def temporal_parameter_count(self) -> int:
        """Parameters of the recurrent (or attention) module alone."""
        return self.parameter_breakdown()["temporal"]

    # -- inputs -----------------------------------------------------------------------
    def expected_shape(self) -> str:
        if self.input_kind == FEATURES:
            return f"(B, T, {2 * self.n_bands})"
        side = self.hparams.get("patch_size", "H")
        return f"(B, T, {self.n_bands}, {side}, {side})"

    def check_input(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Validate ``x`` and return the (B, T) boolean date mask (all True when ``None``)."""
        name = f"{self.architecture or type(self).__name__}"
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} expects a float tensor {self.expected_shape()}")
        if self.input_kind == FEATURES:
            ok = x.ndim == 3 and x.shape[2] == 2 * self.n_bands
        else:
            side = self.hparams.get("patch_size")
            ok = x.ndim == 5 and x.shape[2] == self.n_bands
            ok = ok and (side is None or tuple(x.shape[3:]) == (side, side))
        if not ok or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"{name} consumes {self.input_kind} {self.expected_shape()}, "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        return check_mask(mask, x.shape[0], x.shape[1], x.device)


def check_mask(mask: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    """(B, T) boolean date mask; every sequence needs at least one valid date."""
    if mask is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a boolean tensor (B, T), True where the date is valid")
    if tuple(mask.shape) != (batch, steps):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({batch}, {steps})")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"sequence(s) {empty} of the batch have no valid date")
    return mask.to(device)


def encode_dates(encoder: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Run ``encoder`` on the valid dates only: (B, T, C, H, W) -> (B, T, *out), 0 when padded.

    Skipping padded dates keeps them out of BatchNorm's batch statistics in training, which is
    what makes a padded sequence behave as it does alone.
    """
    batch, steps = mask.shape
    if bool(mask.all()):
        out = encoder(x.flatten(0, 1))
        return out.view(batch, steps, *out.shape[1:])
    encoded = encoder(x[mask])
    out = encoded.new_zeros(batch, steps, *encoded.shape[1:])
    out[mask] = encoded
    return out


def compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each sequence's valid steps to the front (order kept): (B, T, ...) -> same, lengths.

    Masks with holes (a cloudy date in the middle) then behave as if those dates were absent.
    """
    lengths = mask.sum(dim=1)
    if bool(mask.all()):
        return x, lengths
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    index = order.view(*order.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return torch.gather(x, 1, index), lengths


def last_valid_gru(gru: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Final hidden state of a batch-first single-direction ``gru`` at each sequence's last valid
    step: (B, T, D) -> (B, hidden)."""
    x, lengths = compact(x, mask)
    full = bool((lengths == x.shape[1]).all())
    if hasattr(gru, "last_state"):  # inference.InferenceGRU
        return gru.last_state(x, None if full else lengths)
    if full:
        _, h_n = gru(x)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h_n = gru(packed)
    return h_n[-1]
