"""The inference rewrite (folded BatchNorm, pool before ReLU, channels-last, chunked encoder,
InferenceGRU) computes the same logits as the trained model, for every architecture and date
mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cropmodels.architectures import FEATURES, get_model, get_spec, list_models
from cropmodels.inference import (
    ChunkedEncoder,
    ChunkedPixelSetEncoder,
    InferenceGRU,
    MaxPool2x2,
    for_inference,
)


def _trained_like(name: str) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(0)
    model = get_model(name, n_classes=7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _inputs(name: str, batch: int = 6, steps: int = 9):
    g = torch.Generator().manual_seed(1)
    if get_spec(name).input_kind == FEATURES:
        x = torch.randn(batch, steps, 20, generator=g)
        pixel_mask = None
    else:
        x = torch.randn(batch, steps, 10, 32, 32, generator=g)
        pixel_mask = torch.rand(batch, 32, 32, generator=g) > 0.3
    doy = torch.arange(steps).mul(20).add(10).expand(batch, -1)
    return x, pixel_mask, doy


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("chunk_images", [None, 7])
def test_same_logits_as_the_model(name, holes, chunk_images, monkeypatch):
    if chunk_images:  # the encoder's chunks end mid-parcel and the last one is partial
        monkeypatch.setattr(ChunkedEncoder, "CHUNK_BYTES", chunk_images * 10 * 32 * 32 * 4)
        monkeypatch.setattr(ChunkedPixelSetEncoder, "CHUNK_FRAMES", chunk_images)
    model = _trained_like(name)
    fast = for_inference(model)
    x, pixel_mask, doy = _inputs(name)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if holes:  # cloudy dates dropped: different lengths and gaps per parcel
        mask[0, -3:] = False
        mask[2, 1:4] = False
        mask[5, ::2] = False
        x = x * mask.view(*mask.shape, *([1] * (x.ndim - 2)))
    with torch.inference_mode():
        expected = _call(model, x, pixel_mask, doy, mask)
        got = _call(fast, x, pixel_mask, doy, mask)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


def _call(model, x, pixel_mask, doy, mask):
    if getattr(model, "architecture", "") == "pse_ltae":
        return model(x, mask, doy=doy, pixel_mask=pixel_mask)
    return model(x, mask, doy=doy)


def test_rewrite_folds_batchnorm_and_replaces_the_gru():
    fast = for_inference(_trained_like("cnn_gru9"))
    kinds = {type(m) for m in fast.modules()}
    assert nn.BatchNorm2d not in kinds
    assert nn.GRU not in kinds
    assert InferenceGRU in kinds
    assert isinstance(fast.spatial, ChunkedEncoder)
    assert nn.MaxPool2d not in {type(m) for m in fast.spatial.modules()}
    assert MaxPool2x2 in kinds
    assert all(not p.requires_grad for p in fast.parameters())


def test_pixel_set_model_is_chunked_and_its_batchnorms_folded():
    fast = for_inference(_trained_like("pse_ltae"))
    assert isinstance(fast.spatial, ChunkedPixelSetEncoder)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fast.modules())


@pytest.mark.parametrize("shape", [(3, 16, 30, 30), (2, 16, 13, 13), (1, 4, 2, 5), (2, 3, 3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_two_by_two_max_pool_equals_pytorchs(shape, channels_last):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, 0] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(MaxPool2x2()(x), nn.MaxPool2d(2)(x), equal_nan=True, rtol=0, atol=0)


def test_the_original_model_is_untouched():
    model = _trained_like("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
