"""Faster inference with the same predictions: an equivalent model rewritten for evaluation.

:func:`for_inference` returns a copy of a registry model that computes the same function in eval
mode (logits equal to float rounding, tested for every architecture) with less work:

- every ``conv -> BatchNorm -> ReLU -> MaxPool`` block becomes ``conv' -> MaxPool -> ReLU``: the
  BatchNorm (an affine map per channel in eval mode) is folded into the convolution's weights and
  bias, and ReLU, which commutes with max, runs on the pooled map (4x fewer values);
- convolution weights in channels-last memory order, which oneDNN runs faster on CPUs;
- on a CPU, 2 x 2 max-pooling as two elementwise maxima over the channels-last map
  (:class:`MaxPool2x2`);
- on a CPU, the per-date convolutional encoder run over cache-sized chunks of images
  (:class:`ChunkedEncoder`): the largest single gain, as the first convolution's output otherwise
  goes to memory and back before pooling;
- every ``Linear -> BatchNorm1d`` pair folded into one Linear; ``pse_ltae``'s pixel-set
  encoder run over cache-sized chunks of frames (:class:`ChunkedPixelSetEncoder`);
- ``torch.nn.GRU`` replaced by :class:`InferenceGRU`: the input projections of all dates in one
  matrix product, then only the small hidden-state product per date. PyTorch's CPU GRU launches
  several kernels per date and, measured on the benchmark machine, spent 16 times longer on the
  same batch.

Measured with ``benchmarks/bench_infer.py`` (parcels per second against the plain fp32 forward,
both in the same run). Training never uses this: BatchNorm must keep learning there.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class InferenceGRU(nn.Module):
    """A single-layer, unidirectional, batch-first GRU for inference, from an ``nn.GRU``.

    ``last_state(x, lengths)`` gives the hidden state after each sequence's last valid step
    (steps at or beyond ``lengths`` leave the state unchanged), as ``nn.GRU`` does on a packed
    sequence.
    """

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or gru.proj_size:
            raise ValueError("InferenceGRU replaces single-layer, one-way, batch-first GRUs")
        self.hidden_size = gru.hidden_size
        self.weight_ih = nn.Parameter(gru.weight_ih_l0.detach().clone(), requires_grad=False)
        self.weight_hh_t = nn.Parameter(
            gru.weight_hh_l0.detach().t().contiguous(), requires_grad=False
        )
        zeros = torch.zeros(3 * gru.hidden_size, dtype=gru.weight_ih_l0.dtype)
        b_ih = gru.bias_ih_l0.detach().clone() if gru.bias else zeros
        b_hh = gru.bias_hh_l0.detach().clone() if gru.bias else zeros.clone()
        self.bias_ih = nn.Parameter(b_ih, requires_grad=False)
        self.bias_hh = nn.Parameter(b_hh, requires_grad=False)

    def last_state(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, D) -> (B, hidden): the state after step ``lengths - 1`` (all steps if None)."""
        batch, steps, _ = x.shape
        size = self.hidden_size
        gates_in = torch.addmm(self.bias_ih, x.reshape(batch * steps, -1), self.weight_ih.t())
        gates_in = gates_in.view(batch, steps, 3 * size)
        h = x.new_zeros(batch, size)
        live = None
        for t in range(steps):
            gates_h = torch.addmm(self.bias_hh, h, self.weight_hh_t)
            i_r, i_z, i_n = gates_in[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = gates_h.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h_new = n + z * (h - n)
            if lengths is not None:
                live = (lengths > t).unsqueeze(1)
                h_new = torch.where(live, h_new, h)
            h = h_new
        return h

    def forward(self, x: Tensor) -> tuple[None, Tensor]:
        """Like ``nn.GRU(x)`` for the final state only: (None, h_n of shape (1, B, hidden))."""
        return None, self.last_state(x).unsqueeze(0)


def _has_running_stats(bn: nn.Module) -> bool:
    return bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None


def _batchnorm_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel: what an eval-mode BatchNorm computes, ``x * scale + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale, shift


def _fold_block(block: nn.Sequential) -> nn.Sequential | None:
    """conv -> BN -> ReLU -> MaxPool as conv' -> MaxPool -> ReLU, or None if not that block."""
    if len(block) != 4:
        return None
    conv, bn, relu, pool = block
    if not (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and isinstance(relu, nn.ReLU)
        and isinstance(pool, nn.MaxPool2d)
        and _has_running_stats(bn)
    ):
        return None
    with torch.no_grad():
        scale, shift = _batchnorm_affine(bn)
        fused = copy.deepcopy(conv)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        if fused.bias is None:
            fused.bias = nn.Parameter(torch.zeros_like(scale))
        fused.bias.copy_(bias * scale + shift)
    return nn.Sequential(fused, copy.deepcopy(pool), nn.ReLU(inplace=True))


def _fold_linear_batchnorms(block: nn.Sequential) -> nn.Sequential | None:
    """Every ``Linear -> BatchNorm1d`` pair of ``block`` as one Linear (the BatchNorm's affine
    map in eval mode folded into its weights and bias), or None if the block has no such pair.
    A BatchNorm1d right after a Linear in a Sequential normalises the Linear's output features
    (2-D input), so the fold is exact up to float rounding."""
    layers = list(block)
    folded: list[nn.Module] = []
    changed = False
    i = 0
    while i < len(layers):
        layer = layers[i]
        bn = layers[i + 1] if i + 1 < len(layers) else None
        if (
            isinstance(layer, nn.Linear)
            and isinstance(bn, nn.BatchNorm1d)
            and _has_running_stats(bn)
            and bn.num_features == layer.out_features
        ):
            with torch.no_grad():
                scale, shift = _batchnorm_affine(bn)
                fused = nn.Linear(layer.in_features, layer.out_features, bias=True)
                fused = fused.to(layer.weight.device, layer.weight.dtype)
                fused.weight.copy_(layer.weight * scale[:, None])
                bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
                fused.bias.copy_(bias * scale + shift)
            folded.append(fused)
            changed = True
            i += 2
        else:
            folded.append(copy.deepcopy(layer))
            i += 1
    return nn.Sequential(*folded) if changed else None


class ChunkedPixelSetEncoder(nn.Module):
    """Runs a pixel-set encoder (``pse_ltae``) over cache-sized chunks of frames.

    Same output, row for row: in eval mode each frame's embedding depends on its own pixels
    only. The per-pixel MLP otherwise makes (pixels x 64) float tensors of about 240 MB for 64
    parcels x 24 dates, and every elementwise step goes to memory and back.
    """

    CHUNK_FRAMES = 64

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_channels = encoder.out_channels

    def forward(self, frames: Tensor, pixel_mask: Tensor) -> Tensor:
        k = self.CHUNK_FRAMES
        if frames.shape[0] <= k:
            return self.encoder(frames, pixel_mask)
        return torch.cat(
            [self.encoder(frames[a : a + k], pixel_mask[a : a + k])
             for a in range(0, frames.shape[0], k)]
        )  # fmt: skip


class ChunkedEncoder(nn.Module):
    """Runs a per-image ``encoder`` over a large batch of images a cache-sized chunk at a time.

    Same output, entry for entry: every image is encoded independently (eval mode). On a CPU the
    first convolution's output for a whole batch (about 350 MB for 256 parcels x 24 dates in
    ``cnn_gru9``) leaves the cache between the convolution and the pooling that follows it;
    chunks of about :attr:`CHUNK_BYTES` of input keep it there. Measured on the benchmark
    machine: the ``cnn_gru9`` encoder 2.9 times faster on one thread, 5.5 on two.
    """

    CHUNK_BYTES = 2_621_440  # 64 images of 10 x 32 x 32 float32

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        per_image = x[0].numel() * x.element_size() if x.shape[0] else 1
        chunk = max(1, self.CHUNK_BYTES // per_image)
        if x.shape[0] <= chunk:
            return self.encoder(x)
        first = self.encoder(x[:chunk])
        out = first.new_empty((x.shape[0], *first.shape[1:]))
        out[:chunk] = first
        for start in range(chunk, x.shape[0], chunk):
            out[start : start + chunk] = self.encoder(x[start : start + chunk])
        return out


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` (stride 2, no padding, floor mode) as two elementwise maxima over a
    channels-last view: the same values (a max is exact), about twice as fast as PyTorch's CPU
    max-pool kernel on the channels-last maps of the per-date encoders."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2
        p = x[:, :, : 2 * h2, : 2 * w2].permute(0, 2, 3, 1).reshape(n, h2, 2, w2, 2, c)
        rows = torch.maximum(p[:, :, 0], p[:, :, 1])  # (n, h2, w2, 2, c)
        return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).permute(0, 3, 1, 2)


def _is_plain_2x2_pool(module: nn.Module) -> bool:
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    return (
        isinstance(module, nn.MaxPool2d)
        and pair(module.kernel_size) == (2, 2)
        and pair(module.stride or module.kernel_size) == (2, 2)
        and pair(module.padding) == (0, 0)
        and pair(module.dilation) == (1, 1)
        and not module.ceil_mode
        and not module.return_indices
    )


def _replace_pools(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if _is_plain_2x2_pool(child):
            setattr(module, name, MaxPool2x2())
        else:
            _replace_pools(child)


def _rewrite(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        replacement: nn.Module | None = None
        if isinstance(child, nn.Sequential):
            replacement = _fold_block(child) or _fold_linear_batchnorms(child)
        elif isinstance(child, nn.GRU):
            try:
                replacement = InferenceGRU(child)
            except ValueError:
                replacement = None
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _rewrite(child)


def for_inference(model: nn.Module, device: Any = None) -> nn.Module:
    """An eval-mode copy of ``model`` computing the same logits faster (module docstring)."""
    fast = copy.deepcopy(model).eval()
    _rewrite(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    if device is not None:
        fast = fast.to(device)
    dev = next(fast.parameters()).device
    if dev.type == "cpu":
        spatial = getattr(fast, "spatial", None)
        if isinstance(spatial, nn.Sequential):  # conv_encoder: images encoded independently
            _replace_pools(spatial)
            fast.spatial = ChunkedEncoder(spatial)
        elif type(spatial).__name__ == "PixelSetEncoder":  # pse_ltae: frames with their masks
            fast.spatial = ChunkedPixelSetEncoder(spatial)
        fast = fast.to(memory_format=torch.channels_last)
    return fast
