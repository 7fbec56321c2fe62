"""Adaptive affinity loss: offsets, pair groups and weights on hand-built masks, and the loss against a
brute-force computation over the full pair list (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.affinity import adaptive_affinity_loss, affinity_pairs, local_offsets

IGNORE = 255


def test_offsets_are_half_the_open_disc():
    assert local_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    for r in (1, 3, 5):
        disc = [(y, x) for y in range(-r, r + 1) for x in range(-r, r + 1) if 0 < y * y + x * x < r * r]
        half = local_offsets(r)
        assert len(half) * 2 == len(disc)
        assert sorted(half + [(-y, -x) for y, x in half]) == sorted(disc)
    assert len(local_offsets(5)) == 34
    with pytest.raises(ValueError, match="radius"):
        local_offsets(0)


def test_groups_and_weights_on_a_row():
    # pixels 0,1 background, 2 class 1, 3 ignored; radius 2 -> only horizontal neighbours in one row
    labels = torch.tensor([[[0, 0, 1, IGNORE]]])
    pairs = affinity_pairs(labels, radius=2, background=0)
    right = pairs.offsets.index((0, 1))
    assert pairs.group[right, 0, 0].tolist() == [0, 2, -1, -1]  # (0,1) bg+, (1,2) neg, (2,3) ignored, edge
    for p in range(len(pairs.offsets)):
        if p != right:
            assert (pairs.group[p] == -1).all()  # partners outside the single row
    # groups present: bg_pos and neg -> weights 1/4 and 1/2 renormalised to 1/3 and 2/3
    assert torch.allclose(pairs.group_weight, torch.tensor([1 / 3, 0.0, 2 / 3]))
    assert pairs.group_mass.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(pairs.weight[right, 0, 0], torch.tensor([1 / 3, 2 / 3, 0.0, 0.0]))
    assert math.isclose(float(pairs.weight.sum()), 1.0, rel_tol=1e-6)
    # without a background class the same-label pair is foreground-positive
    no_bg = affinity_pairs(labels, radius=2, background=None)
    assert no_bg.group[right, 0, 0].tolist() == [1, 2, -1, -1]
    assert torch.allclose(no_bg.group_weight, torch.tensor([0.0, 1 / 3, 2 / 3]))


def test_weights_balance_group_sizes_and_follow_confidence():
    # a 2x3 map: top row background, bottom row class 2; radius 2 (4-neighbourhood plus diagonals)
    labels = torch.tensor([[[0, 0, 0], [2, 2, 2]]])
    conf = torch.tensor([[[1.0, 0.5, 0.2], [1.0, 1.0, 1.0]]])
    pairs = affinity_pairs(labels, radius=2, background=0, confidence=conf)
    r, d, v, a = (pairs.offsets.index(o) for o in [(0, 1), (1, 1), (1, 0), (1, -1)])
    # bg+ pairs: (0,1) c=min(1,.5)=.5, (1,2) c=.2 ; fg+ pairs: two of c=1 ; neg: 7 vertical/diagonal pairs
    assert pairs.group[r, 0].tolist() == [[0, 0, -1], [1, 1, -1]]
    assert pairs.group[v, 0, 0].tolist() == [2, 2, 2] and pairs.group[d, 0, 0].tolist() == [2, 2, -1]
    assert pairs.group[a, 0, 0].tolist() == [-1, 2, 2]
    torch.testing.assert_close(
        pairs.group_mass, torch.tensor([0.7, 2.0, 1 + 0.5 + 0.2 + 1 + 0.5 + 0.5 + 0.2])
    )
    torch.testing.assert_close(pairs.group_weight, torch.tensor([0.25, 0.25, 0.5]))
    assert math.isclose(float(pairs.weight[r, 0, 0, 0]), 0.25 * 0.5 / 0.7, rel_tol=1e-6)
    assert math.isclose(float(pairs.weight[r, 0, 0, 1]), 0.25 * 0.2 / 0.7, rel_tol=1e-6)
    assert math.isclose(float(pairs.weight[r, 0, 1, 0]), 0.25 / 2.0, rel_tol=1e-6)
    # each group's weights sum to its group weight whatever its size
    for g, expected in enumerate([0.25, 0.25, 0.5]):
        assert math.isclose(float(pairs.weight[pairs.group == g].sum()), expected, rel_tol=1e-6)


def test_no_reliable_pair_gives_zero_with_a_gradient_path():
    emb = torch.randn(1, 4, 3, 3, requires_grad=True)
    labels = torch.full((1, 3, 3), IGNORE)
    labels[0, 1, 1] = 1  # a lone labelled pixel has no labelled partner
    loss = adaptive_affinity_loss(emb, labels, radius=2)
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and (emb.grad == 0).all()


def _brute_force(emb, labels, conf, *, radius, background, weights, tau, eps=1e-5):
    """Every unordered pair of pixels within the disc, listed explicitly (no offsets, no shifts)."""
    b, d, h, w = emb.shape
    unit = F.normalize(emb, dim=1)
    pairs = []  # (group, confidence, loss term)
    for n in range(b):
        for i in range(h * w):
            for j in range(i + 1, h * w):
                yi, xi, yj, xj = i // w, i % w, j // w, j % w
                if not 0 < (yi - yj) ** 2 + (xi - xj) ** 2 < radius * radius:
                    continue
                li, lj = int(labels[n, yi, xi]), int(labels[n, yj, xj])
                if IGNORE in (li, lj):
                    continue
                group = 2 if li != lj else (0 if li == background else 1)
                a = torch.exp(-((unit[n, :, yi, xi] - unit[n, :, yj, xj]) ** 2).sum() / (2 * tau))
                term = -torch.log(1 - a + eps) if group == 2 else -torch.log(a)
                c = min(float(conf[n, yi, xi]), float(conf[n, yj, xj]))
                pairs.append((group, c, term))
    mass = [sum(c for g, c, _ in pairs if g == k) for k in range(3)]
    active = [weights[k] if mass[k] > 0 else 0.0 for k in range(3)]
    norm = sum(active)
    total = emb.new_zeros(())
    for g, c, term in pairs:
        total = total + active[g] / norm * c / mass[g] * term
    return total


@pytest.mark.parametrize("background", [0, None])
def test_loss_matches_brute_force_pair_list_values_and_gradients(background):
    torch.manual_seed(3)
    emb = torch.randn(2, 5, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 5, 6))
    labels[torch.rand(2, 5, 6) < 0.2] = IGNORE
    conf = torch.rand(2, 5, 6)
    weights, tau = (0.3, 0.2, 0.5), 0.7
    ours_in = emb.clone().requires_grad_(True)
    ours = adaptive_affinity_loss(
        ours_in,
        labels,
        radius=3,
        background=background,
        confidence=conf,
        group_weights=weights,
        temperature=tau,
    )
    ref_in = emb.clone().requires_grad_(True)
    ref = _brute_force(ref_in, labels, conf, radius=3, background=background, weights=weights, tau=tau)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-4, atol=1e-6)
    assert ref_in.grad.abs().sum() > 0


def test_loss_prefers_aligned_positives_and_separated_negatives():
    labels = torch.tensor([[[1, 1, 2]]])
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    good = torch.stack([a, a, b], dim=-1).view(1, 2, 1, 3)
    bad = torch.stack([a, b, a], dim=-1).view(1, 2, 1, 3)
    l_good = adaptive_affinity_loss(good, labels, radius=2, temperature=0.5).item()
    l_bad = adaptive_affinity_loss(bad, labels, radius=2, temperature=0.5).item()
    # good: positive pair identical (loss 0), negative pair orthogonal: -log(1 - e^-2 + eps), weight 2/3
    assert math.isclose(l_good, 2 / 3 * -math.log(1 - math.exp(-2) + 1e-5), rel_tol=1e-5)
    assert l_bad > l_good


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="group_weights"):
        affinity_pairs(torch.zeros(1, 2, 2, dtype=torch.long), group_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="share batch and grid"):
        adaptive_affinity_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, dtype=torch.long))
