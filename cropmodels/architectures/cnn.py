"""``cnn``: the paper's purely spatial model (section 2.1.1)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ._common import SequenceClassifier, conv_encoder, encode_dates, int_tuple, mlp, positive_int


class CNN(SequenceClassifier):
    """Per-date CNN, max over dates in the manner of PointNet, then an MLP.

    Each date (10 x 32 x 32) goes through the same 3 x [conv 3x3 no padding, BatchNorm, ReLU,
    MaxPool 2] (32 -> 30 -> 15 -> 13 -> 6 -> 4 -> 2) and is flattened to 96 x 2 x 2 = 384.
    The channel-wise maximum over the valid dates makes the embedding independent of the order
    (and number) of dates, which is why this model cannot see phenology. MLP 384-128-64-19:
    92,899 parameters, as Table 1.

    Input (B, T, n_bands, patch_size, patch_size), mask (B, T) -> raw logits (B, n_classes).
    """

    input_kind = "patches"

    def __init__(
        self,
        n_classes: int = 19,
        n_bands: int = 10,
        *,
        kernels: Sequence[int] = (16, 32, 96),
        mlp_hidden: Sequence[int] = (128, 64),
        patch_size: int = 32,
    ) -> None:
        super().__init__(n_classes, n_bands)
        kernels = int_tuple(kernels, "kernels")
        mlp_hidden = int_tuple(mlp_hidden, "mlp_hidden", allow_empty=True)
        patch_size = positive_int(patch_size, "patch_size")
        self.hparams = {
            "kernels": list(kernels),
            "mlp_hidden": list(mlp_hidden),
            "patch_size": patch_size,
        }
        self.spatial, side = conv_encoder(n_bands, kernels, patch_size)
        self.temporal = None
        self.embedding_size = kernels[-1] * side * side
        self.classifier = mlp(self.embedding_size, mlp_hidden, n_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) patches -> logits (B, n_classes); ``doy`` is ignored."""
        mask = self.check_input(x, mask)
        per_date = encode_dates(self.spatial, x, mask).flatten(2)  # (B, T, 384)
        pooled = per_date.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        return self.classifier(pooled)
