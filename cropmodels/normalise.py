"""Per-date, channel-wise normalisation (Garnot et al. 2019, section 3.1), fitted on training data.

"The images are normalized channel-wise for each date individually": one mean and one standard
deviation per (date, band) for patches, per (date, feature) for the handcrafted features. The
statistics are computed on the training part only (never on validation or test parcels, which
would leak their distribution into the model) and stored in the model card, so inference
normalises new parcels with the *training* statistics. Training and prediction share this class.

Why these choices:

* patch statistics are taken over the training parcels' *parcel pixels* (``mask``) only: the
  zeros outside the parcel are padding, not observations, and counting them would drag every
  mean towards 0 and inflate every std by how much of the patch a parcel fills;
* after normalising, pixels outside the parcel are set back to 0, so "outside" is still a
  constant the networks can ignore (and ``pse_ltae`` still gets its pixel mask);
* a (date, channel) whose training std is below ``MIN_STD`` (a constant channel: the std
  features of single-pixel series, a band a dataset lacks) gets std 1, so it is only centred
  instead of being blown up by a division by ~0; the card requires a positive std anyway;
* sums are accumulated in float64 over streamed batches: the variance is ``E[x^2] - E[x]^2``
  of values up to ~2e4 (reflectance x 10000), exact to ~1e-8 relative in float64, and the store
  never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .architectures import FEATURES, INPUT_KINDS, PATCHES

if TYPE_CHECKING:
    from torch import Tensor

MIN_STD = 1e-3
"""Standard deviations below this (canonical units: reflectance x 10000) are replaced by 1."""


@dataclass
class Normaliser:
    """``(x - mean[t, c]) / std[t, c]``; ``mean``/``std`` are (T or 1, C) float32 arrays.

    C is 10 (bands) for patches and 20 (band means then stds) for features. One row means the
    same statistics for every date (date-agnostic; used when the store's dates cannot be a
    card's date grid, see :func:`cropmodels.train.card_date_grid`).
    """

    mean: np.ndarray
    std: np.ndarray
    input_kind: str

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.asarray(self.std, dtype=np.float32)
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {self.input_kind!r}")
        if self.mean.ndim != 2 or self.mean.shape != self.std.shape:
            raise ValueError(
                f"mean and std must both be (n_dates, n_channels); got {self.mean.shape} and "
                f"{self.std.shape}"
            )
        if not (np.all(np.isfinite(self.mean)) and np.all(self.std > 0)):
            raise ValueError("normalisation statistics must be finite with a positive std")

    @property
    def n_rows(self) -> int:
        return int(self.mean.shape[0])

    # -- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
        input_kind: str,
        per_date: bool = True,
    ) -> Normaliser:
        """Statistics of ``batches`` of training rows.

        Each item is ``(x, pixel_mask)``: patches (n, T, C, P, P) with mask (n, P, P), or
        features (n, T, C) with ``None``. ``per_date=False`` pools all dates into one row.
        """
        moments = _Moments()
        for x, pixel_mask in batches:
            moments.add(x, pixel_mask, input_kind)
        return moments.normaliser(input_kind, per_date)

    # -- card --------------------------------------------------------------------------------
    def to_card(self) -> dict[str, list[list[float]]]:
        """``{"mean": rows, "std": rows}`` as :class:`~cropmodels.modelcard.ModelCard` stores it."""
        return {
            "mean": [[float(v) for v in row] for row in self.mean],
            "std": [[float(v) for v in row] for row in self.std],
        }

    @classmethod
    def from_card(cls, card: Any) -> Normaliser:
        """The normaliser a model card (or its ``normalisation`` mapping) describes."""
        norm = card if isinstance(card, Mapping) else card.normalisation
        kind = getattr(card, "input_kind", None)
        if kind is None:
            width = len(norm["mean"][0])
            kind = FEATURES if width == 20 else PATCHES
        return cls(np.asarray(norm["mean"]), np.asarray(norm["std"]), kind)

    def check_dates(self, n_dates: int) -> None:
        if self.n_rows not in (1, n_dates):
            raise ValueError(
                f"the normalisation has statistics for {self.n_rows} dates but the data has "
                f"{n_dates}; resample the data to the model's date grid first"
            )

    # -- applying ----------------------------------------------------------------------------
    def apply_numpy(self, x: np.ndarray, pixel_mask: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy: patches (n, T, C, P, P) [+ mask (n, P, P)] or (n, T, C)."""
        self.check_dates(x.shape[1])
        x = np.asarray(x, dtype=np.float32)
        if self.input_kind == FEATURES:
            return (x - self.mean) / self.std
        out = (x - self.mean[:, :, None, None]) / self.std[:, :, None, None]
        if pixel_mask is not None:
            out *= pixel_mask[:, None, None, :, :]
        return out

    def apply_torch(self, x: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        """As :meth:`apply_numpy` on a tensor (on any device); statistics are moved to it."""
        import torch

        mean, std = self._torch_stats(x)
        # One pass writing a new tensor, then the rest in place (the input is left alone).
        return self._divide_and_mask_(torch.sub(x, mean), std, pixel_mask)

    def apply_torch_(self, x: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        """:meth:`apply_torch` in place on ``x`` (a float tensor the caller owns): the same values,
        without allocating a batch-sized tensor (on a CPU, a fresh 60 MB tensor per batch costs
        more in page faults than the arithmetic)."""
        mean, std = self._torch_stats(x)
        return self._divide_and_mask_(x.sub_(mean), std, pixel_mask)

    def _torch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """mean and std on ``x``'s device and type, shaped to broadcast over it."""
        import torch

        self.check_dates(x.shape[1])
        mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype)
        std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype)
        if self.input_kind == FEATURES:
            return mean, std
        return mean[:, :, None, None], std[:, :, None, None]

    def _divide_and_mask_(self, centred: Tensor, std: Tensor, pixel_mask: Tensor | None) -> Tensor:
        centred.div_(std)
        if self.input_kind != FEATURES and pixel_mask is not None:
            centred.mul_(pixel_mask[:, None, None, :, :].to(centred.dtype))
        return centred


class _Moments:
    """Float64 running sums per (date, channel) and the number of values behind them."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None
        self.count: np.ndarray | None = None

    def add(self, x: np.ndarray, pixel_mask: np.ndarray | None, input_kind: str) -> None:
        x = np.asarray(x, dtype=np.float64)
        if input_kind == PATCHES:
            if pixel_mask is None:
                raise ValueError("patch statistics need the parcel pixel mask")
            weight = np.asarray(pixel_mask, dtype=np.float64)  # (n, P, P)
            total = np.einsum("ntcij,nij->tc", x, weight)
            squares = np.einsum("ntcij,nij->tc", x * x, weight)
            count = np.full(total.shape, weight.sum())
        elif input_kind == FEATURES:
            total = x.sum(axis=0)
            squares = (x * x).sum(axis=0)
            count = np.full(total.shape, float(x.shape[0]))
        else:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")
        if self.total is None:
            self.total, self.squares, self.count = total, squares, count
        else:
            if total.shape != self.total.shape:
                raise ValueError(f"batches disagree in shape: {total.shape} vs {self.total.shape}")
            self.total += total
            self.squares += squares
            self.count += count

    def normaliser(self, input_kind: str, per_date: bool) -> Normaliser:
        if self.total is None or not np.all(self.count > 0):
            raise ValueError("no training values to compute normalisation statistics from")
        total, squares, count = self.total, self.squares, self.count
        if not per_date:
            total, squares, count = (a.sum(axis=0, keepdims=True) for a in (total, squares, count))
        mean = total / count
        var = np.maximum(squares / count - mean * mean, 0.0)
        std = np.sqrt(var)
        std = np.where(std < MIN_STD, 1.0, std)
        return Normaliser(mean.astype(np.float32), std.astype(np.float32), input_kind)


__all__ = ["MIN_STD", "Normaliser"]
