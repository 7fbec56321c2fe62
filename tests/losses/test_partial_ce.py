import math

import pytest
import torch

from weakseg.losses import partial_ce, partial_cross_entropy


def test_matches_hand_computation_on_labelled_pixels_only():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # [B=1, K=2, H=1, W=2]
    target = torch.tensor([[[0, 255]]])
    # pixel 0: -log softmax([2, 0])[0] = log(1 + e^-2); pixel 1 is unlabelled
    expected = math.log(1 + math.exp(-2))
    assert torch.allclose(partial_cross_entropy(logits, target), torch.tensor(expected))


def test_mean_over_labelled_pixels_of_the_whole_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    target[0, 0, 0], target[1, 2, 3], target[1, 3, 3] = 1, 2, 0
    loss = partial_cross_entropy(logits, target)
    lp = torch.log_softmax(logits, 1)
    ref = -(lp[0, 1, 0, 0] + lp[1, 2, 2, 3] + lp[1, 0, 3, 3]) / 3
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad[0, :, 1, 1].abs().sum() == 0  # unlabelled pixels get no gradient


def test_no_labelled_pixel_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()


def test_upsamples_low_resolution_logits():
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 5.0
    target = torch.ones(1, 8, 8, dtype=torch.long)
    assert partial_cross_entropy(logits, target) < 0.01


def test_label_smoothing_formula():
    logits = torch.tensor([[[[1.0]], [[0.0]], [[-1.0]]]])
    target = torch.tensor([[[0]]])
    eps = 0.1
    lp = torch.log_softmax(logits[0, :, 0, 0], 0)
    expected = (1 - eps) * -lp[0] + eps * -lp.mean()
    assert torch.allclose(partial_cross_entropy(logits, target, label_smoothing=eps), expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1}, {"class_weights": torch.tensor([0.5, 2.0, 1.0])}],
)
@pytest.mark.parametrize("share", [0.05, 0.6])
def test_sparse_and_dense_paths_agree_in_value_and_gradient(monkeypatch, options, share):
    """The sparse path (logits read at the labelled pixels) and the dense path (the whole map upsampled)
    give the same loss and gradient, for scribble-like and for dense labels."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    target = torch.randint(0, 3, (2, 23, 29))
    target[torch.rand(2, 23, 29) > share] = 255
    monkeypatch.setattr(partial_ce, "SPARSE_MAX_SHARE", 2.0)  # sparse path always
    sparse = partial_cross_entropy(logits, target, **options)
    (sparse_grad,) = torch.autograd.grad(sparse, logits)
    monkeypatch.setattr(partial_ce, "SPARSE_MAX_SHARE", -1.0)  # dense path always
    dense = partial_cross_entropy(logits, target, **options)
    (dense_grad,) = torch.autograd.grad(dense, logits)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-7)
