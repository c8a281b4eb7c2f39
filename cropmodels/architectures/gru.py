"""``gru``: the paper's purely temporal model on handcrafted features (section 2.1.2)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import SequenceClassifier, int_tuple, last_valid_gru, mlp, positive_int


class GRUClassifier(SequenceClassifier):
    """GRU over per-date parcel features, the last valid hidden state to an MLP.

    Features per date are the mean and the standard deviation of each band over the parcel's
    pixels (2 x 10 = 20 values, computed by the extractor, not here). GRU(20 -> 156) has 83,304
    parameters and MLP 156-64-19 has 11,283: 94,587 as Table 1. The paper gives this model a
    temporal parameter ratio of 1 because it counts the encoder only; with the classifier the
    recurrent share is 0.88.

    Input (B, T, 2 * n_bands), mask (B, T) -> raw logits (B, n_classes).
    """

    input_kind = "features"

    def __init__(
        self,
        n_classes: int = 19,
        n_bands: int = 10,
        *,
        hidden_size: int = 156,
        mlp_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__(n_classes, n_bands)
        hidden_size = positive_int(hidden_size, "hidden_size")
        mlp_hidden = int_tuple(mlp_hidden, "mlp_hidden", allow_empty=True)
        self.hparams = {"hidden_size": hidden_size, "mlp_hidden": list(mlp_hidden)}
        self.spatial = None
        self.temporal = nn.GRU(2 * n_bands, hidden_size, batch_first=True)
        self.classifier = mlp(hidden_size, mlp_hidden, n_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, 2C) features -> logits (B, n_classes); ``doy`` is ignored (order only)."""
        mask = self.check_input(x, mask)
        return self.classifier(last_valid_gru(self.temporal, x, mask))
