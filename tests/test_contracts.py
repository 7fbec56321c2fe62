"""Contracts every registered method keeps, run from the registry: a new method is covered on registration.

Its declaration (name, one-line description, sample keys it requires, defaults that build). One
training step of the real :class:`~weakseg.engine.trainer.Trainer` on tiny synthetic data (CPU,
random weights), late in the schedule so every warm-up is over: the loss is finite, every parameter the
method claims to train (the optimiser's groups: the network's and, for a method that
:class:`~weakseg.methods.TrainsOwnLayers`, its own) receives a finite gradient, no trainable parameter is
left out of the optimiser, and a checkpoint round-trip restores an identical state and the identical next
loss. (Every registered backbone x head pair has its forward/backward contract in
``tests/models/test_segmentor.py``, parametrised from the same registries.)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from train_helpers import tiny_train_config
from weakseg.data.sample import Sample
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.distributed import DistInfo
from weakseg.engine.trainer import Trainer
from weakseg.methods import METHODS, Method, create_method

STEPS = 8  # the contract steps are the last two of these: past every method's warm-up
CROP = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract_data")
    make_synthetic_dataset(root, num_train=4, num_val=2, size=(CROP, CROP), seed=3)
    return root


@contextlib.contextmanager
def trainer_for(method: str, data: Path, run: Path, resume: Path | None = None) -> Iterator[Trainer]:
    """A set-up trainer of ``method`` on ``data`` (masks stand in for pseudo-labels), its run-folder lock
    held until the block ends."""
    cfg = tiny_train_config(
        data,
        run,
        f"method.name={method}",
        f"data.pseudo_dir={data / 'masks'}",
        f"train.steps={STEPS}",
        "data.cache_mb=0",
        crop=CROP,
        overlays=0,
    )
    trainer = Trainer(cfg, DistInfo(device=torch.device("cpu")), resume=resume, progress=False)
    with contextlib.ExitStack() as cleanup:
        trainer.setup(cleanup)
        yield trainer


def state_of(trainer: Trainer) -> dict[str, dict]:
    """A copy of the trainer's network, method and optimiser state."""
    return copy.deepcopy(
        {
            "model": trainer.module.model.state_dict(),
            "method": trainer.module.method.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
        }
    )


def assert_same(a: object, b: object, where: str) -> None:
    """Nested dicts / lists / tensors equal to the bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declaration(name: str) -> None:
    """Registered under its own name, described in one line, needing only sample keys that datasets
    provide, and buildable from its paper defaults alone."""
    cls = METHODS[name]
    assert cls.name == name and METHODS.descriptions()[name]
    assert set(cls.requires) <= Sample.__optional_keys__ | Sample.__required_keys__, cls.requires
    method = create_method(name, num_classes=3)
    assert isinstance(method, Method) and type(method) is cls


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name: str, data: Path, tmp_path: Path) -> None:
    with trainer_for(name, data, tmp_path / "first") as first:
        batches = iter(first.loader)
        batch, next_batch = next(batches), next(batches)
        first.start_step = first.global_step = STEPS - 2  # late in the schedule: warm-ups are over
        result = first.step(batch)

        assert result.losses and torch.isfinite(result.loss), result.losses
        assert all(v.ndim == 0 and torch.isfinite(v) for v in result.losses.values()), result.losses
        claimed = [p for group in first.optimizer.param_groups for p in group["params"]]
        names = {id(p): n for n, p in first.module.named_parameters()}
        no_grad = [names[id(p)] for p in claimed if p.grad is None or not torch.isfinite(p.grad).all()]
        assert no_grad == [], f"{name}: no finite gradient reaches {no_grad[:5]} ({len(no_grad)} in all)"
        claimed_ids = {id(p) for p in claimed}
        unclaimed = [
            n for n, p in first.module.named_parameters() if p.requires_grad and id(p) not in claimed_ids
        ]
        assert unclaimed == [], f"{name}: trainable parameters outside the optimiser: {unclaimed[:5]}"

        first.checkpoint("last.ckpt")
        saved = state_of(first)
        next_loss = first.step(next_batch).loss

    ckpt_path = tmp_path / "first" / "last.ckpt"
    assert load_checkpoint(ckpt_path)["step"] == STEPS - 1
    with trainer_for(name, data, tmp_path / "resumed", resume=ckpt_path) as resumed:
        assert resumed.global_step == STEPS - 1
        assert_same(saved, state_of(resumed), name)
        assert torch.equal(resumed.step(next_batch).loss, next_loss), name
