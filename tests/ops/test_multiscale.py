"""The multi-scale + flip loop: scales, mirrors, output grids and the two ways of batching the mirror."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakseg.ops.multiscale import multiscale_flip_sum
from weakseg.ops.resize import resize_bilinear


def _pooled(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stand-in network: maps at half the input's grid, not mirror-symmetric."""
    return {"a": F.avg_pool2d(x, 2), "b": F.avg_pool2d(x, 2)[:, :1] * torch.linspace(0, 1, x.shape[-1] // 2)}


def test_identity_maps_sum_to_the_number_of_passes():
    images = torch.rand(2, 3, 8, 10)
    total = multiscale_flip_sum(images, lambda x: {"x": x}, scales=(1.0,), flip=True)["x"]
    torch.testing.assert_close(total, 2 * images)  # mirrored and mirrored back


def test_each_pass_is_resized_to_the_output_grid():
    images = torch.rand(1, 3, 8, 12)
    sizes = []

    def record(x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes.append(tuple(x.shape[-2:]))
        return _pooled(x)

    out = multiscale_flip_sum(
        images, record, scales=(1.0, 0.5), flip=False, base_size=(16, 16), out_size=(5, 7)
    )
    assert sizes == [(16, 16), (8, 8)]
    assert out["a"].shape == (1, 3, 5, 7) and out["b"].shape == (1, 1, 5, 7)
    want = resize_bilinear(_pooled(resize_bilinear(images, (16, 16)))["a"], (5, 7))
    want = want + resize_bilinear(_pooled(resize_bilinear(images, (8, 8)))["a"], (5, 7))
    torch.testing.assert_close(out["a"], want)


def test_mirror_in_the_batch_equals_separate_passes():
    images = torch.rand(2, 3, 12, 16)
    calls = []

    def count(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(x.shape[0])
        return _pooled(x)

    together = multiscale_flip_sum(images, count, scales=(1.0, 1.5), flip=True, flip_in_batch=True)
    assert calls == [4, 4]
    apart = multiscale_flip_sum(images, count, scales=(1.0, 1.5), flip=True)
    assert calls[2:] == [2, 2, 2, 2]
    assert list(together) == ["a", "b"]
    for name in together:
        torch.testing.assert_close(together[name], apart[name])
