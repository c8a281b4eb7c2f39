"""``pse_ltae``: Pixel-Set Encoder + Lightweight Temporal Attention Encoder.

Garnot et al. (CVPR 2020) and Garnot and Landrieu (2020), the authors' follow-up to the paper:
the parcel is treated as an unordered set of pixels rather than an image (its shape carries
little class information, as the 2019 paper found), and the recurrent unit is replaced by
attention whose positions are days of the year, so irregular and cloud-dropped dates are
handled natively. It is here as the first architecture beyond the paper, to show in the
comparison panel how far the field moved; its parameter count matches nothing in Table 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import SequenceClassifier, int_tuple, mlp, positive_int


def _linear_bn_relu(n_in: int, widths: Sequence[int], last_relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width)]
        if last_relu or i < len(widths) - 1:
            layers.append(nn.ReLU(inplace=True))
        n_in = width
    return nn.Sequential(*layers)


class PixelSetEncoder(nn.Module):
    """Shared per-pixel MLP, mean and std over the parcel's pixels, then a second MLP.

    frames (N, C, H, W) and pixel mask (N, H, W) -> (N, mlp2[-1]). Every parcel pixel is used
    (no random sampling), so the embedding is deterministic; outside pixels never enter the
    per-pixel BatchNorm or the pooled statistics.
    """

    def __init__(self, n_bands: int, mlp1: Sequence[int], mlp2: Sequence[int]) -> None:
        super().__init__()
        self.mlp1 = _linear_bn_relu(n_bands, mlp1)
        self.mlp2 = _linear_bn_relu(2 * mlp1[-1], mlp2, last_relu=False)
        self.out_channels = mlp2[-1]

    def forward(self, frames: Tensor, pixel_mask: Tensor) -> Tensor:
        pixels = frames.flatten(2).transpose(1, 2)  # (N, HW, C)
        valid = pixel_mask.flatten(1)  # (N, HW)
        valid = valid | ~valid.any(dim=1, keepdim=True)  # a date with no parcel pixel: use all
        features = self.mlp1(pixels[valid])  # (P, D), row-major order of ``valid``
        segment = valid.nonzero()[:, 0]
        n = valid.sum(dim=1, keepdim=True).to(features.dtype)
        zeros = features.new_zeros(valid.shape[0], features.shape[1])
        mean = zeros.index_add(0, segment, features) / n
        deviation = features - mean[segment]
        var = zeros.index_add(0, segment, deviation * deviation) / (n - 1).clamp(min=1)
        return self.mlp2(torch.cat([mean, torch.sqrt(var + 1e-8)], dim=1))


def sinusoid_encoding(positions: Tensor, size: int, period: float) -> Tensor:
    """Transformer position encoding of (B, T) positions (days) -> (B, T, size)."""
    j = torch.arange(size, device=positions.device)
    rates = torch.pow(torch.tensor(float(period), device=positions.device), 2 * (j // 2) / size)
    angles = positions.to(torch.float32).unsqueeze(-1) / rates
    return torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles))


class LTAE(nn.Module):
    """Lightweight temporal attention: one learnt query per head, values are input slices.

    x (B, T, in_channels), mask (B, T), positions (B, T) -> (B, mlp[-1]). Masked dates get
    no attention weight. Unlike the reference code, the input projection is normalised per
    date (LayerNorm over d_model) rather than over (d_model, T), so any T works.
    """

    def __init__(
        self,
        in_channels: int,
        n_head: int,
        d_k: int,
        d_model: int,
        mlp_hidden: Sequence[int],
        dropout: float,
        max_period: float,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_head ({n_head})")
        self.n_head, self.d_k, self.d_model, self.max_period = n_head, d_k, d_model, max_period
        self.in_norm = nn.LayerNorm(in_channels)
        self.in_proj = nn.Linear(in_channels, d_model)
        self.proj_norm = nn.LayerNorm(d_model)
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.mlp = _linear_bn_relu(d_model, mlp_hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = mlp_hidden[-1] if mlp_hidden else d_model
        self.out_norm = nn.LayerNorm(self.out_channels)

    def forward(self, x: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        batch, steps, _ = x.shape
        x = self.proj_norm(self.in_proj(self.in_norm(x)))
        pe = sinusoid_encoding(positions, self.d_model // self.n_head, self.max_period)
        x = x + pe.repeat(1, 1, self.n_head)  # the same encoding for every head's slice
        keys = self.key(x).view(batch, steps, self.n_head, self.d_k)
        scores = torch.einsum("btnd,nd->bnt", keys, self.query) / math.sqrt(self.d_k)
        attention = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(dim=-1)
        values = x.view(batch, steps, self.n_head, self.d_model // self.n_head)
        heads = torch.einsum("bnt,btnd->bnd", attention, values).reshape(batch, self.d_model)
        return self.out_norm(self.dropout(self.mlp(heads)))


class PSELTAE(SequenceClassifier):
    """PSE (mean+std pooling) -> L-TAE (16 heads, d_k 8, d_model 256) -> MLP decoder.

    Input (B, T, n_bands, H, W) patches with zeros outside the parcel, mask (B, T), optional
    ``doy`` (B, T) day of each date (season days, see the store; the date index when absent)
    and optional ``pixel_mask`` (B, H, W) or (B, T, H, W), True on parcel pixels. Without
    ``pixel_mask`` parcel pixels are those not zero in every band, which holds for raw
    reflectances but not after a normalisation that shifts the outside: pass the mask then.
    Output: raw logits (B, n_classes). BatchNorm in the decoder needs training batches of 2 or
    more.
    """

    input_kind = "patches"

    def __init__(
        self,
        n_classes: int = 19,
        n_bands: int = 10,
        *,
        pse_mlp1: Sequence[int] = (32, 64),
        pse_mlp2: Sequence[int] = (128,),
        n_head: int = 16,
        d_k: int = 8,
        d_model: int = 256,
        ltae_mlp: Sequence[int] = (128,),
        decoder_mlp: Sequence[int] = (64, 32),
        dropout: float = 0.2,
        max_period: int = 1000,
    ) -> None:
        super().__init__(n_classes, n_bands)
        pse_mlp1 = int_tuple(pse_mlp1, "pse_mlp1")
        pse_mlp2 = int_tuple(pse_mlp2, "pse_mlp2")
        ltae_mlp = int_tuple(ltae_mlp, "ltae_mlp", allow_empty=True)
        decoder_mlp = int_tuple(decoder_mlp, "decoder_mlp", allow_empty=True)
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.hparams = {
            "pse_mlp1": list(pse_mlp1),
            "pse_mlp2": list(pse_mlp2),
            "n_head": positive_int(n_head, "n_head"),
            "d_k": positive_int(d_k, "d_k"),
            "d_model": positive_int(d_model, "d_model"),
            "ltae_mlp": list(ltae_mlp),
            "decoder_mlp": list(decoder_mlp),
            "dropout": float(dropout),
            "max_period": positive_int(max_period, "max_period"),
        }
        self.spatial = PixelSetEncoder(n_bands, pse_mlp1, pse_mlp2)
        self.temporal = LTAE(
            self.spatial.out_channels, n_head, d_k, d_model, ltae_mlp, dropout, max_period
        )
        self.classifier = mlp(self.temporal.out_channels, decoder_mlp, n_classes, batch_norm=True)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        doy: Tensor | None = None,
        pixel_mask: Tensor | None = None,
    ) -> Tensor:
        mask = self.check_input(x, mask)
        batch, steps = mask.shape
        if pixel_mask is None:
            pixel_mask = (x != 0).any(dim=2)
        else:
            shape = tuple(pixel_mask.shape)
            if pixel_mask.dtype != torch.bool or shape not in (
                (batch, *x.shape[3:]),
                (batch, steps, *x.shape[3:]),
            ):
                raise ValueError(
                    f"pixel_mask must be a boolean tensor (B, H, W) or (B, T, H, W), got {shape}"
                )
            if pixel_mask.ndim == 3:
                pixel_mask = pixel_mask.unsqueeze(1).expand(batch, steps, *x.shape[3:])
        if doy is None:
            doy = torch.arange(steps, device=x.device).expand(batch, steps)
        elif tuple(doy.shape) != (batch, steps):
            raise ValueError(f"doy must have shape ({batch}, {steps}), got {tuple(doy.shape)}")
        encoded = self.spatial(x[mask], pixel_mask[mask])  # (N valid dates, 128)
        per_date = encoded.new_zeros(batch, steps, encoded.shape[1])
        per_date[mask] = encoded
        return self.classifier(self.temporal(per_date, mask, doy))
