import math

import pytest
import torch

from weakseg.config import OptimConfig
from weakseg.engine.optim import apply_lr, build_optimizer, lr_factor
from weakseg.engine.sampling import StepBatchSampler


def test_poly_schedule_values():
    cfg = OptimConfig(schedule="poly", poly_power=0.9)
    assert lr_factor(0, 100, cfg) == 1.0
    assert math.isclose(lr_factor(50, 100, cfg), 0.5**0.9)
    assert lr_factor(100, 100, cfg) == 0.0


def test_warmup_cosine_schedule_values():
    cfg = OptimConfig(schedule="warmup_cosine", warmup_steps=10)
    assert math.isclose(lr_factor(0, 110, cfg), 0.1)
    assert math.isclose(lr_factor(9, 110, cfg), 1.0)
    assert math.isclose(lr_factor(10, 110, cfg), 1.0)
    assert math.isclose(lr_factor(60, 110, cfg), 0.5)
    assert math.isclose(lr_factor(110, 110, cfg), 0.0, abs_tol=1e-12)


def test_separate_learning_rates_and_min_lr():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.1, head_lr_mult=10, schedule="poly", min_lr=0.01)
    opt = build_optimizer({"backbone": list(a.parameters()), "head": list(b.parameters())}, cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    apply_lr(opt, 100, 100, cfg)  # end of schedule: the floor, scaled per group
    assert [round(g["lr"], 9) for g in opt.param_groups] == [0.01, 0.1]


def test_sampler_is_a_function_of_step_and_resumes_mid_epoch():
    full = list(StepBatchSampler(10, 3, 8, seed=5))
    resumed = list(StepBatchSampler(10, 3, 8, seed=5, start_step=4))
    assert full[4:] == resumed
    # each epoch (3 steps of 3 from 10 samples) uses distinct indices; epochs differ in order
    first = [i for batch in full[:3] for _, i in batch]
    assert len(set(first)) == 9
    assert [e for e, _ in full[3]] == [1, 1, 1]
    assert full[:3] != full[3:6]


def test_sampler_shards_one_global_batch_across_ranks():
    ranks = [list(StepBatchSampler(12, 2, 3, seed=1, rank=r, world_size=3)) for r in range(3)]
    for step in range(3):
        seen = [i for r in range(3) for _, i in ranks[r][step]]
        assert len(set(seen)) == 6
    assert StepBatchSampler(12, 2, 3, seed=1).batch_at(0) == list(StepBatchSampler(12, 2, 3, seed=1))[0]


def test_sampler_rejects_split_smaller_than_a_step():
    with pytest.raises(ValueError, match="fewer than one step"):
        StepBatchSampler(3, 4, 10)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimiser_on_cpu_matches_the_per_tensor_loop(name):
    """optim.fused null = fused for CPU parameters; its updates equal the per-tensor loop's to rounding."""

    def run(fused):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
        cfg = OptimConfig(name=name, lr=0.05, fused=fused)
        opt = build_optimizer(
            {"backbone": list(model[0].parameters()), "head": list(model[1].parameters())}, cfg
        )
        for step in range(3):
            opt.zero_grad()
            model(
                torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(step))
            ).square().mean().backward()
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    auto, auto_params = run(None)
    loop, loop_params = run(False)
    assert all(g["fused"] for g in auto.param_groups) and not any(g["fused"] for g in loop.param_groups)
    for a, b in zip(auto_params, loop_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, torch.zeros_like(a))
