"""Feature-consistency loss: grid labels, targets, sampling, and the balanced pairwise BCE vs brute force."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from weakseg.losses.feature_consistency import (
    UNLABELLED,
    consistency_labels,
    labels_to_grid,
    pairwise_consistency_loss,
    sample_labelled_pixels,
)


def test_labels_to_grid_is_the_majority_of_labelled_pixels():
    torch.manual_seed(0)
    labels = torch.full((2, 9, 10), 255)
    keep = torch.rand(2, 9, 10) < 0.3
    labels[keep] = torch.randint(0, 4, (int(keep.sum()),))
    got = labels_to_grid(labels, (3, 4), num_classes=4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                rows = [y for y in range(9) if y * 3 // 9 == i]
                cols = [x for x in range(10) if x * 4 // 10 == j]
                cell = labels[b][rows][:, cols]
                counts = torch.bincount(cell[cell != 255], minlength=4)
                expected = int(counts.argmax()) if counts.sum() > 0 else 255  # ties: smallest id
                assert int(got[b, i, j]) == expected


def test_labels_to_grid_keeps_thin_scribbles():
    labels = torch.full((1, 16, 16), 255)
    labels[0, 5, :] = 2  # a one-pixel line: nearest sampling at stride 4 would miss it
    got = labels_to_grid(labels, (4, 4), num_classes=3)
    assert (got[0, 1] == 2).all() and (got[0, [0, 2, 3]] == 255).all()


def test_consistency_labels_scribbles_override_confident_predictions():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.5, 0.5]]).T.reshape(1, 2, 1, 4)
    scribble = torch.tensor([[[255, 255, 0, 255]]])
    roi = torch.tensor([[[True, True, True, False]]])
    labels, from_scribble = consistency_labels(probs, scribble, roi, threshold=0.9)
    assert labels.tolist() == [[[0, UNLABELLED, 0, UNLABELLED]]]
    assert from_scribble.tolist() == [[[False, False, True, False]]]
    labels, _ = consistency_labels(probs, None, None, threshold=0.5)
    assert labels.tolist() == [[[0, 0, 1, UNLABELLED]]]  # 0.5 is not above the threshold


def test_sampling_takes_priority_pixels_first_and_pads():
    labels = torch.tensor([[0, UNLABELLED, 1, 2, 0, UNLABELLED]])
    priority = torch.tensor([[False, False, False, True, False, False]])
    torch.manual_seed(0)
    index, valid = sample_labelled_pixels(labels, 2, priority)
    assert index[0, 0] == 3 and valid.all() and labels[0, index[0, 1]] != UNLABELLED
    index, valid = sample_labelled_pixels(labels, 10, priority)
    assert index.shape == (1, 6) and valid.sum() == 4
    assert set(index[0][valid[0]].tolist()) == {0, 2, 3, 4}


def _brute_force(embeddings: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """Every ordered pair i != j of labelled pixels of the same image, positives/negatives averaged apart."""
    pos, neg = [], []
    for b in range(embeddings.shape[0]):
        f = embeddings[b].flatten(1)
        lab = labels[b].flatten()
        for i in range(lab.numel()):
            for j in range(lab.numel()):
                if i == j or lab[i] == UNLABELLED or lab[j] == UNLABELLED:
                    continue
                p = torch.sigmoid(t * (f[:, i] * f[:, j]).sum())
                (pos if lab[i] == lab[j] else neg).append(
                    -torch.log(p) if lab[i] == lab[j] else -torch.log(1 - p)
                )
    return 0.5 * (torch.stack(pos).mean() + torch.stack(neg).mean())


def test_loss_matches_brute_force_values_and_gradients():
    torch.manual_seed(0)
    raw = torch.randn(2, 5, 3, 3, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 3))
    labels[torch.rand(2, 3, 3) < 0.3] = UNLABELLED
    emb = F.normalize(raw, dim=1)
    loss = pairwise_consistency_loss(emb, labels, num_samples=100, temperature=4.0)  # M >= every pixel
    (grad,) = torch.autograd.grad(loss, raw)
    reference = _brute_force(F.normalize(raw, dim=1), labels, 4.0)
    (ref_grad,) = torch.autograd.grad(reference, raw)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_sampling_bounds_the_pairs_and_is_unbiased_on_average():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(1, 4, 6, 6), dim=1)
    labels = torch.randint(0, 2, (1, 6, 6))
    full = pairwise_consistency_loss(emb, labels, num_samples=36, temperature=3.0)
    # 300 copies of the image in one batch, each sampled independently, pooled like a training batch
    sampled = pairwise_consistency_loss(
        emb.expand(300, -1, -1, -1), labels.expand(300, -1, -1), num_samples=12, temperature=3.0
    )
    assert abs(float(sampled - full)) < 0.01 * float(full)


def test_perfect_embeddings_give_a_small_loss():
    labels = torch.tensor([[[0, 0, 1, 1]]])
    emb = torch.zeros(1, 2, 1, 4)
    emb[0, 0, 0, :2] = 1.0
    emb[0, 1, 0, 2:] = 1.0  # same class: cos 1; different: cos 0
    loss = pairwise_consistency_loss(emb, labels, temperature=10.0)
    expected = 0.5 * (F.softplus(torch.tensor(-10.0)) + math.log(2.0))
    torch.testing.assert_close(loss, expected)


def test_no_labelled_pixels_gives_zero_with_a_gradient_path():
    emb = F.normalize(torch.randn(2, 3, 4, 4), dim=1).requires_grad_()
    loss = pairwise_consistency_loss(emb, torch.full((2, 4, 4), UNLABELLED))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None and emb.grad.abs().sum() == 0
