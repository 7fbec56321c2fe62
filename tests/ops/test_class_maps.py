"""CAM operators: channel layout, max normalisation, PCM, seeds, prototypes and the prototype CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.ops.class_maps import (
    background_from_foreground,
    class_prototypes,
    foreground_indices,
    insert_background,
    max_normalize,
    pcm_propagate,
    prototype_cam,
    seed_masks,
)


def test_channel_layout() -> None:
    assert foreground_indices(4, 0) == [1, 2, 3]
    assert foreground_indices(3, 1) == [0, 2]
    assert foreground_indices(2, None) == [0, 1]
    with pytest.raises(ValueError, match="outside"):
        foreground_indices(3, 3)
    fg = torch.arange(4.0).view(1, 2, 1, 2)
    bg = torch.full((1, 1, 1, 2), 9.0)
    assert insert_background(fg, bg, 1)[0, :, 0, 0].tolist() == [0.0, 9.0, 2.0]


def test_max_normalize_divides_each_channel_by_its_max() -> None:
    cams = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]], [[0.5, 0.25], [0.0, 0.0]]]])
    out = max_normalize(cams, eps=0.0)
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.5], [0.25, 1.0]], [[1.0, 0.5], [0.0, 0.0]]]]))
    assert torch.equal(max_normalize(cams[0, 0]), max_normalize(cams)[0, 0])  # a single [H, W] map


def test_max_normalize_and_background() -> None:
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    norm = max_normalize(maps)
    assert torch.allclose(norm[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-5)
    assert torch.equal(norm[0, 1], torch.zeros(2, 2))  # an all-zero channel stays 0
    assert torch.allclose(background_from_foreground(norm)[0, 0], 1 - norm[0, 0])


def _naive_pcm(cam: torch.Tensor, emb: torch.Tensor, iterations: int, eps: float = 1e-5) -> torch.Tensor:
    """Pixel-by-pixel loops over one image: A_ij = relu(f_i.f_j), columns sum to 1, M <- M A."""
    k, h, w = cam.shape
    n = h * w
    f = [emb[:, p // w, p % w] for p in range(n)]
    f = [v / (v.norm() + eps) for v in f]
    a = torch.zeros(n, n, dtype=cam.dtype)
    for i in range(n):
        for j in range(n):
            a[i, j] = max(float(f[i] @ f[j]), 0.0)
    for j in range(n):
        a[:, j] = a[:, j] / (a[:, j].sum() + eps)
    m = cam.reshape(k, n)
    for _ in range(iterations):
        m = torch.stack(
            [torch.stack([sum(m[c, i] * a[i, j] for i in range(n)) for j in range(n)]) for c in range(k)]
        )
    return m.reshape(k, h, w)


def test_pcm_matches_naive_loops_and_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 3, 2, generator=gen, dtype=torch.float64)
    emb = torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64)
    out = pcm_propagate(cam, emb, iterations=2)
    for b in range(2):
        assert torch.allclose(out[b], _naive_pcm(cam[b], emb[b], 2), atol=1e-12)
    # columns of A sum to 1: every output pixel is a weighted average of the input pixels
    const = torch.full_like(cam, 0.7)
    assert torch.allclose(pcm_propagate(const, emb, iterations=2), const, rtol=1e-4)
    once = pcm_propagate(cam, emb, iterations=1)
    assert (once <= cam.amax(dim=(2, 3), keepdim=True) + 1e-9).all()
    assert (once >= cam.amin(dim=(2, 3), keepdim=True) * (1 - 1e-4)).all()
    cam.requires_grad_()
    emb.requires_grad_()
    assert torch.autograd.gradcheck(lambda c, e: pcm_propagate(c, e, 2), (cam, emb))


def test_seed_masks_scale_background_and_respect_region() -> None:
    # channels: background, class 1, class 2; three pixels
    cam = torch.tensor([[[[1.0, 1.0, 0.2]], [[0.5, 0.2, 0.1]], [[0.0, 0.1, 0.9]]]])
    region = torch.ones(1, 3, 1, 3)
    region[0, 2] = 0.0  # class 2 not tagged
    seeds = seed_masks(cam, region, background=0, bg_scale=0.3)
    # pixel 0: bg 0.3 < 0.5 -> class 1; pixel 1: bg 0.3 wins; pixel 2: class 2 wins but is masked
    expected = torch.tensor([[[[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    assert torch.equal(seeds, expected)
    assert seeds.requires_grad is False
    no_bg = seed_masks(cam, torch.ones(1, 3, 1, 3), background=None)
    assert torch.equal(no_bg.argmax(1), cam.argmax(1))


def test_class_prototypes_average_over_the_grid() -> None:
    seeds = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # class 1 has no seed
    features = torch.arange(8.0).view(1, 2, 2, 2)
    protos = class_prototypes(seeds, features)
    assert protos.shape == (1, 2, 2)
    # channel 0 values at the seeds (0, 2), channel 1 (4, 6); divided by h*w = 4
    assert torch.allclose(protos[0, 0], torch.tensor([0.5, 2.5]))
    assert torch.equal(protos[0, 1], torch.zeros(2))


def test_prototype_cam_is_relu_cosine_as_the_reference_broadcast() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 3, 4, generator=gen)
    protos = torch.randn(2, 3, 5, generator=gen)
    protos[1, 2] = 0.0  # absent class
    ours = prototype_cam(features, protos)
    ref = F.relu(F.cosine_similarity(features.unsqueeze(1), protos[:, :, :, None, None], dim=2))
    assert ours.shape == (2, 3, 3, 4)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(ours[1, 2], torch.zeros(3, 4))
    assert (ours >= 0).all() and (ours <= 1 + 1e-6).all()
