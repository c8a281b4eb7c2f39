"""``cnn_gru7``, ``cnn_gru8``, ``cnn_gru9``: the paper's hybrid CNN+GRU (section 2.1.3.1)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import (
    SequenceClassifier,
    conv_encoder,
    encode_dates,
    int_tuple,
    last_valid_gru,
    mlp,
    positive_int,
)


class CNNGRU(SequenceClassifier):
    """Per-date CNN embedding, a GRU over the dates in order, the last valid state to an MLP.

    The three registry entries differ only in how the budget is split between kernels and
    hidden size (Table 1): ``cnn_gru7`` 16:32:64 / 64 (92,035 parameters), ``cnn_gru8``
    16:32:36 / 96 (93,807), ``cnn_gru9`` 16:16:16 / 128 (90,179). The per-date map is
    kernels[-1] x 2 x 2, flattened; the GRU is ``torch.nn.GRU`` (two bias vectors per gate, as
    the counts require); the classifier is hidden-64-n_classes.

    Input (B, T, n_bands, patch_size, patch_size), mask (B, T) -> raw logits (B, n_classes).
    Class defaults are those of CNN+GRU9, the paper's best.
    """

    input_kind = "patches"

    def __init__(
        self,
        n_classes: int = 19,
        n_bands: int = 10,
        *,
        kernels: Sequence[int] = (16, 16, 16),
        hidden_size: int = 128,
        mlp_hidden: Sequence[int] = (64,),
        patch_size: int = 32,
    ) -> None:
        super().__init__(n_classes, n_bands)
        kernels = int_tuple(kernels, "kernels")
        hidden_size = positive_int(hidden_size, "hidden_size")
        mlp_hidden = int_tuple(mlp_hidden, "mlp_hidden", allow_empty=True)
        patch_size = positive_int(patch_size, "patch_size")
        self.hparams = {
            "kernels": list(kernels),
            "hidden_size": hidden_size,
            "mlp_hidden": list(mlp_hidden),
            "patch_size": patch_size,
        }
        self.spatial, side = conv_encoder(n_bands, kernels, patch_size)
        self.temporal = nn.GRU(kernels[-1] * side * side, hidden_size, batch_first=True)
        self.classifier = mlp(hidden_size, mlp_hidden, n_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) patches -> logits (B, n_classes); ``doy`` is ignored (order only)."""
        mask = self.check_input(x, mask)
        per_date = encode_dates(self.spatial, x, mask).flatten(2)  # (B, T, k3 * 2 * 2)
        return self.classifier(last_valid_gru(self.temporal, per_date, mask))
