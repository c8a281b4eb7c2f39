"""``convlstm``: the paper's ConvLSTM (section 2.1.3.2), within 1% of Table 1's budget."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import SequenceClassifier, conv_encoder, encode_dates, int_tuple, mlp, positive_int


class ConvLSTMCell(nn.Module):
    """Shi et al. (2015) ConvLSTM cell without peepholes: the four gates from one convolution.

    x (B, C_in, H, W) and state (h, c), each (B, C_hidden, H, W) -> new (h, c). Same padding
    keeps the state image-shaped.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the map size, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTMClassifier(SequenceClassifier):
    """Per-date CNN 30:64, a ConvLSTM over the dates, the last valid state to the paper's MLP.

    Each date goes through the paper's unit twice, [conv 3x3 no padding, BatchNorm, ReLU,
    MaxPool 2] with 30 then 64 kernels (32 -> 15 -> 6), as the kernel column reads for every
    other row of Table 1. A 3x3 ConvLSTM with 16 hidden channels (one convolution producing
    4 x 16 = 64 gate maps) runs over the 64 x 6 x 6 maps; its state is not updated on padded
    dates. The last state is max-pooled to 16 x 3 x 3 and fed to the paper's MLP 144-128-64.

    Parameters with 19 classes: 20,262 (CNN) + 46,144 (ConvLSTM) + 28,051 (MLP) = 94,457,
    896 (0.94%) below Table 1's 95,353. Why not exact: a 3x3 ConvLSTM whose state has 64
    channels alone has 4*64*(64+64)*9 = 295k parameters, so the table's "hidden 64" cannot be
    a channel count of a 3x3 recurrent kernel; we read it as the 64 gate kernels (4 gates x 16
    channels) of the cell. A search over natural variants (padding, pooling, one or two
    blocks, 1x1/3x3/5x5 kernels, bias and peephole conventions, heads) finds exact matches only
    through arbitrary choices: a 1x1 ConvLSTM with 64 channels, no gate bias and an MLP
    576-64-64 (exact, but a 1x1 recurrent kernel has no spatial recurrence, the point of a
    ConvLSTM), or a 3x3 cell with Shi-style spatial peepholes plus an extra conv 16->64 with
    BatchNorm before global pooling (exact, but the paper has no such conv). The alternative in
    the design notes, one same-padded block of 30 and a 16x16 state, is +0.87% but drops the
    paper's unpadded block and its 128-64 classifier; we keep both.

    Input (B, T, n_bands, patch_size, patch_size), mask (B, T) -> raw logits (B, n_classes).
    """

    input_kind = "patches"

    def __init__(
        self,
        n_classes: int = 19,
        n_bands: int = 10,
        *,
        kernels: Sequence[int] = (30, 64),
        hidden_channels: int = 16,
        kernel_size: int = 3,
        mlp_hidden: Sequence[int] = (128, 64),
        patch_size: int = 32,
    ) -> None:
        super().__init__(n_classes, n_bands)
        kernels = int_tuple(kernels, "kernels")
        hidden_channels = positive_int(hidden_channels, "hidden_channels")
        kernel_size = positive_int(kernel_size, "kernel_size")
        mlp_hidden = int_tuple(mlp_hidden, "mlp_hidden", allow_empty=True)
        patch_size = positive_int(patch_size, "patch_size")
        self.hparams = {
            "kernels": list(kernels),
            "hidden_channels": hidden_channels,
            "kernel_size": kernel_size,
            "mlp_hidden": list(mlp_hidden),
            "patch_size": patch_size,
        }
        self.spatial, side = conv_encoder(n_bands, kernels, patch_size)
        self.state_side = side
        self.temporal = ConvLSTMCell(kernels[-1], hidden_channels, kernel_size)
        self.pool = nn.MaxPool2d(2) if side >= 2 else nn.Identity()
        pooled = side // 2 if side >= 2 else side
        self.classifier = mlp(hidden_channels * pooled * pooled, mlp_hidden, n_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) patches -> logits (B, n_classes); ``doy`` is ignored (order only)."""
        mask = self.check_input(x, mask)
        maps = encode_dates(self.spatial, x, mask)  # (B, T, 64, 6, 6)
        batch, steps = mask.shape
        side, hidden = self.state_side, self.temporal.hidden_channels
        h = maps.new_zeros(batch, hidden, side, side)
        c = torch.zeros_like(h)
        all_valid = bool(mask.all())
        for t in range(steps):
            h_new, c_new = self.temporal(maps[:, t], (h, c))
            if all_valid:
                h, c = h_new, c_new
            else:  # padded dates leave the state as it was
                valid = mask[:, t].view(batch, 1, 1, 1)
                h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
        return self.classifier(self.pool(h).flatten(1))
