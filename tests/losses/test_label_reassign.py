"""Label reassign loss: class centres against a loop, reassignment on embeddings whose answer is known,
the margin, resolutions, stop-gradient and the split cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.label_reassign import (
    centre_similarity,
    class_centres,
    label_reassign_loss,
    reassign_labels,
    reassigned_cross_entropy,
)
from weakseg.losses.partial_ce import partial_cross_entropy

IGNORE = 255


def test_class_centres_match_a_loop():
    torch.manual_seed(0)
    emb = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 3, (2, 3, 5))
    labels[0, 0, 0] = IGNORE
    labels[1][labels[1] == 2] = 0  # class 2 absent from image 1
    centres, has = class_centres(emb, labels, num_classes=4)
    unit = F.normalize(emb, dim=1)
    for n in range(2):
        for k in range(4):
            members = unit[n].permute(1, 2, 0)[labels[n] == k]
            assert bool(has[n, k]) == (len(members) > 0)
            if len(members):
                torch.testing.assert_close(centres[n, k], F.normalize(members.mean(0), dim=0))
            else:
                assert (centres[n, k] == 0).all()
    sim = centre_similarity(emb, centres, has)
    torch.testing.assert_close(sim[0, 1], torch.einsum("dhw,d->hw", unit[0], centres[0, 1]))
    assert (sim[1, 2] == -2).all() and (sim[:, 3] == -2).all()


def _two_cluster_case():
    """A 1x6 map: pixels 0-2 embed near e1, pixels 3-5 near e2. Pseudo labels: 1 1 2 | 2 2 255 with
    pixel 2 mislabelled (its embedding is e1's) -> the known answer is to reassign pixel 2 to class 1."""
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    cols = [e1, e1 + 0.1 * e2, e1, e2, e2 + 0.1 * e1, e2]
    emb = torch.stack(cols, dim=-1).view(1, 3, 1, 6)
    labels = torch.tensor([[[1, 1, 2, 2, 2, IGNORE]]])
    return emb, labels


def test_a_mislabelled_pixel_moves_to_its_nearest_centre():
    emb, labels = _two_cluster_case()
    out = reassign_labels(emb, labels, num_classes=3)
    assert out.nearest.tolist() == [[[1, 1, 1, 2, 2, 2]]]
    assert out.reassigned.tolist() == [[[False, False, True, False, False, False]]]  # ignore stays ignored
    assert out.target.tolist() == [[[1, 1, 1, 2, 2, IGNORE]]]
    # a margin larger than the similarity gap keeps the label. Pixel 2 (= e1): cos to c1 ~ 0.999,
    # cos to c2 = normalise(e1 + e2 + normalise(e2 + 0.1 e1)) . e1 ~ 0.48 -> gap ~ 0.52
    kept = reassign_labels(emb, labels, num_classes=3, margin=0.6)
    assert not kept.reassigned.any() and torch.equal(kept.target, labels)
    assert reassign_labels(emb, labels, num_classes=3, margin=0.4).reassigned.sum() == 1


def test_reassignment_at_label_resolution_and_missing_centres():
    emb, _ = _two_cluster_case()
    # labels at twice the grid's resolution; the grid samples columns 0, 2, 4, ... (nearest)
    fine = torch.tensor([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]] * 2).unsqueeze(0)
    fine[0, 1, 3] = 2  # a wrong label inside class 1's region, not on a sampled position
    fine[0, 0, 11] = 0  # class 0 appears only off-grid: no centre, so it is reassigned
    out = reassign_labels(emb, fine, num_classes=3)
    assert out.target.shape == fine.shape
    expected = torch.tensor([[1] * 6 + [2] * 6] * 2).unsqueeze(0)
    assert torch.equal(out.target, expected)
    assert out.reassigned.sum() == 2 and out.reassigned[0, 1, 3] and out.reassigned[0, 0, 11]


def test_no_centre_in_an_image_reassigns_nothing():
    emb = torch.randn(2, 3, 2, 2)
    labels = torch.full((2, 2, 2), IGNORE)
    labels[1] = 1
    out = reassign_labels(emb, labels, num_classes=2)
    assert (out.nearest[0] == IGNORE).all() and (out.nearest[1] == 1).all()
    assert not out.reassigned.any()


def test_targets_are_stop_gradient_and_the_loss_splits_the_corrected_cross_entropy():
    emb, labels = _two_cluster_case()
    emb = emb.clone().requires_grad_(True)
    out = reassign_labels(emb, labels, num_classes=3)
    assert out.target.grad_fn is None and out.reassigned.grad_fn is None
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 1, 6, requires_grad=True)
    kept, moved = reassigned_cross_entropy(logits, out)
    # kept + reassigned = CE on the corrected mask (both normalised by the 5 labelled pixels)
    torch.testing.assert_close(kept + moved, partial_cross_entropy(logits, out.target))
    ce = F.cross_entropy(logits, labels.clamp_max(2), reduction="none")[0, 0]
    torch.testing.assert_close(kept, (ce[0] + ce[1] + ce[3] + ce[4]) / 5)
    torch.testing.assert_close(moved, F.cross_entropy(logits[..., 2], torch.tensor([[1]])) / 5)
    torch.testing.assert_close(label_reassign_loss(logits, out), moved)
    moved.backward()
    grad = logits.grad[0, :, 0]
    assert grad[1, 2] < 0 < grad[2, 2]  # pulled toward the new class 1, away from the old class 2
    assert (grad[:, [0, 1, 3, 4, 5]] == 0).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="margin"):
        reassign_labels(
            torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), num_classes=2, margin=-1
        )
    with pytest.raises(ValueError, match="share batch and grid"):
        class_centres(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long), num_classes=2)
